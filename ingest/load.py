"""Load catalogue tables into a knowledge-graph store.

Products become ``Product`` nodes; every prefix of a category path becomes a
``Category`` node (id = the levels joined by ``" > "``) linked to its parent by
``SUBCATEGORY_OF``; a product is ``IN_CATEGORY`` of its deepest level and
``MADE_BY`` its brand; interactions become ``User -[EVENT]-> Product`` edges with
their ``order``.

:func:`load_tables` runs in-memory :class:`~kgrec.ingest.tables.CatalogTables`
through the same pipeline as files (:mod:`kgrec.ingest.pipeline`): validation, the
duplicate and dangling-reference rules, idempotent upserts, a report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kgrec.ingest.pipeline import IngestConfig, Ingestor, IngestReport
from kgrec.ingest.sources import tables_sources
from kgrec.ingest.tables import CatalogTables
from kgrec.kg.store import GraphStore


@dataclass
class IngestSummary:
    """Rows read and written per node label / relationship type (``report``: the full run report)."""

    written: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    seconds: float = 0.0
    rows_loaded: int = 0
    rows_rejected: int = 0
    report: IngestReport | None = None


def load_tables(tables: CatalogTables, store: GraphStore, progress: bool = True,
                config: IngestConfig | None = None) -> IngestSummary:
    """Upsert all nodes, then all edges, of ``tables`` into ``store``.

    Rows that fail validation are not loaded; they are counted in
    ``rows_rejected`` and listed in ``report.rejects``.
    """
    callback = _tqdm_progress() if progress else None
    report = Ingestor(store, config or IngestConfig(), callback).run(tables_sources(tables))
    if callback is not None:
        callback.close()
    return IngestSummary(written=report.written, rows_read=report.read, seconds=report.seconds,
                         rows_loaded=report.loaded, rows_rejected=report.rejected, report=report)


def _tqdm_progress() -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(desc="ingest", unit="row")
    base = [0]

    def callback(event: str, fr: Any, position: int, total: int | None) -> None:
        if event == "start":
            base[0] = bar.n
            bar.set_postfix_str(fr.kind)
        elif event == "chunk":
            bar.update(base[0] + fr.read - bar.n)

    callback.close = bar.close  # type: ignore[attr-defined]
    return callback


class CollectingStore:
    """A write-only stand-in store that keeps every upserted frame (for :func:`graph_frames`)."""

    def __init__(self) -> None:
        self.nodes_written: dict[str, list[pd.DataFrame]] = {}
        self.edges_written: dict[str, list[pd.DataFrame]] = {}

    def upsert_nodes(self, label: str, frame: pd.DataFrame) -> int:
        self.nodes_written.setdefault(label, []).append(frame)
        return len(frame)

    def upsert_edges(self, rel: str, frame: pd.DataFrame) -> int:
        self.edges_written.setdefault(rel, []).append(frame)
        return len(frame)

    def nodes(self, label: str) -> pd.DataFrame:
        return pd.DataFrame()

    def edges(self, rel: str) -> pd.DataFrame:  # pragma: no cover - not read by the pipeline
        return pd.DataFrame()

    def counts(self) -> dict[str, int]:
        return {}
