"""The embedded store: Parquet tables on disk, networkx for path queries.

Layout of a store directory::

    STORE/
      nodes/Product.parquet  nodes/Category.parquet ...
      edges/IN_CATEGORY.parquet edges/PURCHASED.parquet ...

Each upsert merges the new rows into the table and rewrites it atomically
(:func:`kgrec.kg.files.atomic_write`: a temporary file of its own, fsynced, then
renamed over the table), so a killed process leaves either the old or the new
table, never half of one, and a reader always opens a whole table.

Concurrency: one writer at a time per store folder. Every upsert holds the
store's :class:`~kgrec.kg.files.WriterLock` (``STORE/.writer.lock``) across its
read-merge-write, so two processes writing one store never lose each other's
rows; a long job (an ingest run) holds it throughout with :meth:`EmbeddedStore.writing`.
A second writer waits up to ``lock_timeout`` seconds, then gets
:class:`~kgrec.kg.files.StoreLockedError` naming the store and the holder's pid.
Readers take no lock: each table they read is one complete version of it (a
reader reading several tables while a writer runs may see some tables before and
some after that writer's upserts).

On equal keys the new row wins for the columns the new frame has; columns the
new frame lacks keep their old values, as Neo4j's ``SET n += row.props`` does (a
null in a column the frame has clears that property in both stores). A
single-valued relationship type (``MADE_BY``, ``IN_CATEGORY``:
:attr:`kgrec.kg.schema.RelType.single`) keeps one edge per source: a new edge
replaces the source's edge to another target.

Data-defined relationship types (:func:`kgrec.kg.schema.register_relation`) are
stored like the static ones (``edges/<TYPE>.parquet``); the store registers the
types listed in its ``KgRelation`` nodes when it opens, and counts and
:meth:`EmbeddedStore.graph` include them.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import networkx as nx
import pandas as pd

from kgrec.kg.files import WriterLock, atomic_write, remove_stale_temporaries
from kgrec.kg.schema import NODE_TYPES, REL_TYPES, node_type, register_relations, rel_type
from kgrec.kg.store import GraphStore, edge_identity, validate_edge_frame, validate_node_frame


class EmbeddedStore(GraphStore):
    """A knowledge graph persisted as Parquet tables under ``root``.

    Args:
        root: directory of the store; created when missing.
        lock_timeout: seconds a write waits for another process's writer lock before
            :class:`~kgrec.kg.files.StoreLockedError` (default 60; None = forever).
    """

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float | None = 60.0) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: an embedded store is a folder, this is a file")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        (self.root / "edges").mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.root, timeout=lock_timeout, on_acquire=self._clean_temporaries)
        self._graph: nx.MultiDiGraph | None = None
        self._undirected: nx.Graph | None = None  # built from _graph on the first path query
        self.kg_relations()

    # -- paths -----------------------------------------------------------------
    def _node_path(self, label: str) -> Path:
        return self.root / "nodes" / f"{node_type(label).label}.parquet"

    def _edge_path(self, rel: str) -> Path:
        return self.root / "edges" / f"{rel_type(rel).name}.parquet"

    @staticmethod
    def _write(frame: pd.DataFrame, path: Path) -> None:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))

    def _clean_temporaries(self) -> None:
        for folder in ("nodes", "edges"):
            remove_stale_temporaries(self.root / folder)

    # -- writer lock ------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[EmbeddedStore]:
        """Hold the store's writer lock for a block of writes (re-entrant; see the module docstring).

        Raises:
            StoreLockedError: another process held it for longer than ``lock_timeout``.
        """
        with self._lock:
            yield self

    @staticmethod
    def _read(path: Path, columns: list[str]) -> pd.DataFrame:
        table = _read_table(path)
        if table is None:
            return pd.DataFrame({c: pd.Series(dtype="string") for c in columns})
        return table

    # -- contract ----------------------------------------------------------------
    def upsert_nodes(self, label: str, frame: pd.DataFrame) -> int:
        frame = validate_node_frame(label, frame)
        key = node_type(label).key
        path = self._node_path(label)
        with self._lock:
            merged = _merge(self._read(path, [key]), frame, [key])
            self._write(merged, path)
        self._graph = self._undirected = None
        return len(frame)

    def upsert_edges(self, rel: str, frame: pd.DataFrame) -> int:
        frame = validate_edge_frame(rel, frame)
        written = len(frame)
        ident = edge_identity(rel)
        path = self._edge_path(rel)
        with self._lock:
            old = self._read(path, ident)
            if rel_type(rel).single:
                old, frame = _replace_single(old, frame)
            merged = _merge(old, frame, ident)
            self._write(merged, path)
        self._graph = self._undirected = None
        return written

    def nodes(self, label: str) -> pd.DataFrame:
        return self._read(self._node_path(label), [node_type(label).key])

    def edges(self, rel: str) -> pd.DataFrame:
        return self._read(self._edge_path(rel), edge_identity(rel))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label in NODE_TYPES:
            path = self._node_path(label)
            out[label] = _parquet_rows(path)
        for rel in REL_TYPES:
            out[rel] = _parquet_rows(self._edge_path(rel))
        for rel in self.kg_relations():
            out[rel] = _parquet_rows(self._edge_path(rel))
        return out

    # -- beyond the contract -------------------------------------------------------
    def kg_relations(self) -> list[str]:
        """Data-defined relationship types of this store (its ``KgRelation`` nodes), registered.

        Raises SchemaError if the table names a type that is not a safe UPPER_SNAKE name.
        """
        key = node_type("KgRelation").key
        table = _read_table(self._node_path("KgRelation"), [key])
        if table is None:
            return []
        return sorted(register_relations(table[key].astype(str)))

    def node_keys(self, label: str) -> pd.Series:
        """The key column of ``label`` only (cheaper than :meth:`nodes` for large tables)."""
        key = node_type(label).key
        table = _read_table(self._node_path(label), [key])
        if table is None:
            return pd.Series([], dtype=object, name=key)
        return table[key].astype(str)

    # -- path queries --------------------------------------------------------------
    def graph(self) -> nx.MultiDiGraph:
        """The whole knowledge graph as a networkx multigraph (built once, then cached).

        Nodes are ``(label, key)`` tuples; each edge carries ``type`` and its properties.
        """
        if self._graph is None:
            g = nx.MultiDiGraph()
            for label in NODE_TYPES:
                nodes = self.nodes(label)
                key = node_type(label).key
                g.add_nodes_from((label, k) for k in nodes[key].astype(str))
            rels = {**REL_TYPES, **{name: rel_type(name) for name in self.kg_relations()}}
            for name, rt in rels.items():
                edges = self.edges(name)
                g.add_edges_from(
                    ((rt.source, s), (rt.target, t), {"type": name})
                    for s, t in zip(edges["source"].astype(str), edges["target"].astype(str))
                )
            self._graph = g
        return self._graph

    def paths(
        self,
        source: tuple[str, str],
        target: tuple[str, str],
        max_hops: int = 4,
        limit: int = 10,
    ) -> list[list[tuple[tuple[str, str], str, tuple[str, str]]]]:
        """Shortest undirected paths between two nodes, as lists of (node, type, node) hops.

        Args:
            source, target: ``(label, key)`` of the endpoints.
            max_hops: longest path returned.
            limit: at most this many paths (shortest first).
        """
        g = self.graph()
        for node in (source, target):
            if node not in g:
                raise KeyError(f"node {node} is not in the graph")
        if self._undirected is None:
            self._undirected = nx.Graph(g.to_undirected(as_view=True))
        out: list[list[tuple[tuple[str, str], str, tuple[str, str]]]] = []
        try:
            for path in nx.shortest_simple_paths(self._undirected, source, target):
                if len(path) - 1 > max_hops or len(out) >= limit:
                    break
                hops = []
                for a, b in zip(path, path[1:]):
                    data = g.get_edge_data(a, b) or g.get_edge_data(b, a)
                    hops.append((a, next(iter(data.values()))["type"], b))
                out.append(hops)
        except nx.NetworkXNoPath:
            pass
        return out


def _replace_single(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A single-valued type: drop the old edges of ``new``'s sources that go elsewhere.

    Returns the old rows to keep and the new rows to merge (those with a target; a row
    without one only removes its source's edge).
    """
    has_target = new["target"].notna().to_numpy(dtype=bool)
    if len(old):
        pairs = pd.MultiIndex.from_frame(new.loc[has_target, ["source", "target"]].astype(str))
        same = pd.MultiIndex.from_frame(old[["source", "target"]].astype(str)).isin(pairs)
        old = old[~(old["source"].astype(str).isin(new["source"]).to_numpy() & ~same)].reset_index(drop=True)
    return old, new[has_target].reset_index(drop=True)


def _merge(old: pd.DataFrame, new: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Union of two tables, rows of ``new`` replacing rows of ``old`` with the same key.

    A replaced row keeps its old values in the columns ``new`` does not have.
    """
    if old.empty:
        return new.drop_duplicates(key, keep="last").reset_index(drop=True)
    kept = [c for c in old.columns if c not in new.columns]
    if kept and len(new):
        new = new.drop_duplicates(key, keep="last")
        carry = old[key + kept].drop_duplicates(key, keep="last")
        new = new.merge(carry, on=key, how="left", sort=False)
    combined = pd.concat([old, new], ignore_index=True)
    return combined.drop_duplicates(key, keep="last").reset_index(drop=True)


def _read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame | None:
    """A whole table, or None when there is none.

    The file is opened once and read through that descriptor: a writer may replace the
    path meanwhile (:func:`~kgrec.kg.files.atomic_write`), and a reader that looked the
    path up twice (size, then content) could mix the old file with the new one.
    """
    try:
        with open(path, "rb") as fh:
            return pd.read_parquet(fh, columns=columns)
    except FileNotFoundError:
        return None


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    except FileNotFoundError:
        return 0
