"""The store contract that every knowledge-graph backend implements.

A store holds nodes per label and edges per relationship type as tables:

* a node frame has the label's key column (``product_id`` for ``Product``) and
  any number of property columns;
* an edge frame has ``source`` and ``target`` (the endpoint keys) and property
  columns; the relationship type fixes the endpoint labels (see
  :mod:`kgrec.kg.schema`).

Upserts are idempotent: writing the same rows twice leaves the store as after
the first write. The embedded store (:class:`kgrec.kg.embedded.EmbeddedStore`) and the
Neo4j store implement this contract and pass the same contract tests.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pandas as pd

from kgrec.kg.schema import check_identifier, node_type, rel_type


class GraphStore(ABC):
    """Abstract knowledge-graph store (see module docstring for the frame layout)."""

    @abstractmethod
    def upsert_nodes(self, label: str, frame: pd.DataFrame) -> int:
        """Insert or update nodes of ``label``; return the number of rows written."""

    @abstractmethod
    def upsert_edges(self, rel: str, frame: pd.DataFrame) -> int:
        """Insert or update edges of type ``rel``; return the number of rows written."""

    @abstractmethod
    def nodes(self, label: str) -> pd.DataFrame:
        """All nodes of ``label`` as a frame (key column first)."""

    @abstractmethod
    def edges(self, rel: str) -> pd.DataFrame:
        """All edges of type ``rel`` as a frame with ``source``, ``target`` and properties."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of nodes per label and edges per relationship type (zero when empty)."""

    def writing(self) -> AbstractContextManager[Any]:
        """Hold the store for a block of writes (an ingest run), excluding other writers.

        The default holds nothing: a database server keeps concurrent writers apart
        itself. The embedded store takes its folder's writer lock (:mod:`kgrec.kg.embedded`).
        """
        return nullcontext(self)

    def close(self) -> None:  # noqa: B027 - optional hook: nothing to release by default
        """Release connections or file handles."""

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validate_node_frame(label: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Check a node frame against the schema and return it with the key as string.

    Raises:
        SchemaError: unknown label or a property key that is not an identifier.
        ValueError: the key column is missing, empty or duplicated.
    """
    nt = node_type(label)
    if nt.key not in frame.columns:
        raise ValueError(f"{label} frame lacks its key column {nt.key!r}")
    for column in frame.columns:
        check_identifier(str(column), f"{label} property key")
    keys = frame[nt.key]
    if keys.isna().any() or (keys.astype(str) == "").any():
        raise ValueError(f"{label} frame has empty {nt.key!r} values")
    if keys.duplicated().any():
        dup = keys[keys.duplicated()].iloc[0]
        raise ValueError(f"{label} frame repeats {nt.key}={dup!r}")
    out = frame.copy()
    out[nt.key] = keys.astype(str)
    return out


def validate_edge_frame(rel: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Check an edge frame against the schema; endpoints become strings.

    A single-valued type (:attr:`~kgrec.kg.schema.RelType.single`) keeps the last row
    per source, and an empty target there (None) means "remove the source's edge".

    Raises:
        ValueError: a missing column, an empty source, or an empty target of a type
            that is not single-valued.
    """
    rt = rel_type(rel)
    missing = {"source", "target", *rt.key} - set(frame.columns)
    if missing:
        raise ValueError(f"{rel} frame lacks columns {sorted(missing)}")
    for column in frame.columns:
        check_identifier(str(column), f"{rel} property key")
    if frame["source"].isna().any():
        raise ValueError(f"{rel} frame has empty source values")
    no_target = frame["target"].isna().to_numpy(dtype=bool)
    if no_target.any() and not rt.single:
        raise ValueError(f"{rel} frame has empty target values")
    out = frame.copy()
    out["source"] = out["source"].astype(str)
    target = out["target"].astype(str)
    out["target"] = target.where(~no_target, None) if no_target.any() else target
    if rt.single:
        out = out.drop_duplicates("source", keep="last").reset_index(drop=True)
    return out


def edge_identity(rel: str) -> list[str]:
    """Columns that identify one edge of ``rel`` (endpoints plus the type's key)."""
    return ["source", "target", *rel_type(rel).key]

