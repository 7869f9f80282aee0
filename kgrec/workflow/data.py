"""Store -> snapshot + supervision splits: what a store holds decides the tasks.

* interactions (``User -[PURCHASED|VIEWED|...]-> Product``) -> recommendation, split per user by
  ``leave-one-out`` (the default) or ``temporal`` (needs timestamps on the interactions);
* judgements (``Query -[JUDGED {label}]-> Product``) -> search, split by query (every judgement of a
  query in one split, :func:`kgrec.kg.judgements.query_disjoint_split`); the train queries become
  ``query`` nodes of the graph (:func:`kgrec.kg.judgements.with_query_nodes`);
* both -> both tasks, trained by one multi-task scorer.

A judgement's ``label`` is its relevance grade (0 = not relevant; gain ``2^grade - 1``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from kgrec.evaluation.protocols import SPLIT_PROTOCOLS, apply_protocol, attach_timestamps
from kgrec.kg.export import GraphSnapshot, export_judgements, export_snapshot
from kgrec.kg.judgements import query_disjoint_split, with_query_nodes
from kgrec.kg.schema import interaction_types
from kgrec.kg.store import GraphStore
from kgrec.workflow.store import WorkflowError

#: The two tasks a store can support.
TASKS = ("rec", "search")


@dataclass
class SplitConfig:
    """How supervision is split.

    Attributes:
        protocol: recommendation split, ``"leave-one-out"`` (default: per user, the last
            interaction is test, the one before valid) or ``"temporal"`` (a global time cut).
        temporal_quantile: ``temporal``: cut at this quantile of the timestamps (default 0.8).
        search_fractions: train / valid / test shares of the queries (default 0.8 / 0.1 / 0.1).
        search_seed: selects another query split (default 0).
        min_grade: a judgement with at least this grade is relevant: it links its train query to
            the product in the graph and counts for recall / MAP (default 1.0).
    """

    protocol: str = "leave-one-out"
    temporal_quantile: float = 0.8
    search_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    search_seed: int = 0
    min_grade: float = 1.0

    def __post_init__(self) -> None:
        if self.protocol not in SPLIT_PROTOCOLS:
            raise WorkflowError(f"unknown protocol {self.protocol!r}; choose from {list(SPLIT_PROTOCOLS)}")
        if not 0.0 < self.temporal_quantile < 1.0:
            raise WorkflowError(f"the temporal quantile must be in (0, 1), got {self.temporal_quantile}")


@dataclass
class Dataset:
    """A store's graph and supervision, split.

    Attributes:
        snapshot: the exported graph (train queries as ``query`` nodes when there are judgements)
            with the interactions and their ``split``.
        judgements: one row per judgement: ``query_id``, ``query``, ``product`` (index), ``label``,
            ``grade``, ``split`` (empty when the store has none).
        queries: one row per query: ``query_id``, ``query``, ``split``.
        titles: ``[P]`` product titles (what BM25 indexes).
        split: the :class:`SplitConfig` used.
    """

    snapshot: GraphSnapshot
    judgements: pd.DataFrame
    queries: pd.DataFrame
    titles: list[str]
    split: SplitConfig = field(default_factory=SplitConfig)

    @cached_property
    def counts(self) -> dict[str, dict[str, int]]:
        """Supervision per split: interactions and distinct users of targets; judged queries."""
        inter = self.snapshot.interactions
        out: dict[str, dict[str, int]] = {"interactions": {}, "queries": {}}
        for s in ("train", "valid", "test"):
            out["interactions"][s] = int((inter["split"] == s).sum())
            out["queries"][s] = int((self.queries["split"] == s).sum()) if len(self.queries) else 0
        return out

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this data can be trained *and* evaluated on (see :meth:`why_not`)."""
        return tuple(t for t in TASKS if self.why_not(t) is None)

    def why_not(self, task: str) -> str | None:
        """None when ``task`` can be trained and evaluated; else a sentence saying what is missing."""
        c = self.counts
        if task == "rec":
            if not len(self.snapshot.interactions):
                return "the store holds no interactions"
            if c["interactions"]["test"] == 0 or c["interactions"]["valid"] == 0:
                return (f"no user has enough interactions for a {self.split.protocol} split (valid "
                        f"{c['interactions']['valid']}, test {c['interactions']['test']} targets; leave-one-out needs users "
                        "with at least 3 interactions)")
            if c["interactions"]["train"] == 0:
                return "no interactions are left to train on"
            return None
        if task == "search":
            if not len(self.judgements):
                return "the store holds no search judgements"
            missing = [s for s in ("train", "valid", "test") if c["queries"][s] == 0]
            if missing:
                return (f"{len(self.queries)} judged queries are too few for a query split: no {'/'.join(missing)} queries "
                        f"(shares {self.split.search_fractions})")
            if not (self.judgements["grade"] >= self.split.min_grade).any():
                return f"no judgement has a grade >= {self.split.min_grade} (nothing is relevant)"
            return None
        raise WorkflowError(f"unknown task {task!r}; choose from {list(TASKS)}")

    def require(self, tasks: tuple[str, ...]) -> None:
        """Raise :class:`WorkflowError` saying why, when one of ``tasks`` cannot run on this data."""
        for task in tasks:
            reason = self.why_not(task)
            if reason is not None:
                name = {"rec": "recommendation", "search": "search"}[task]
                raise WorkflowError(f"cannot train or evaluate {name}: {reason}")


def store_timestamps(store: GraphStore) -> pd.DataFrame | None:
    """``user_id, product_id, order, timestamp`` of every interaction, or None when the interactions
    carry no ``timestamp``."""
    frames = []
    for rel in interaction_types():
        edges = store.edges(rel)
        if len(edges) == 0:
            continue
        if "timestamp" not in edges.columns:
            return None
        frames.append(pd.DataFrame({"user_id": edges["source"].astype(str), "product_id": edges["target"].astype(str),
                                    "order": edges["order"].astype("int64"), "timestamp": edges["timestamp"]}))
    return pd.concat(frames, ignore_index=True) if frames else None


def load_dataset(store: GraphStore, split: SplitConfig | None = None) -> Dataset:
    """Export ``store`` and split its supervision (see the module docstring).

    Raises:
        WorkflowError: the store holds no products, or the temporal protocol without timestamps.
    """
    split = split or SplitConfig()
    try:
        snapshot = export_snapshot(store, require_interactions=False)
    except ValueError as exc:
        raise WorkflowError(f"the store's graph cannot be exported: {exc}") from None
    if snapshot.num_products == 0:
        raise WorkflowError("the store holds no products: ingest a catalogue first (`kgrec ingest FILES --store DIR`)")
    if split.protocol == "temporal" and len(snapshot.interactions):
        stamps = store_timestamps(store)
        if stamps is None:
            raise WorkflowError("the temporal protocol needs timestamps on the interactions; this store has none "
                                "(use --protocol leave-one-out)")
        try:
            snapshot = apply_protocol(attach_timestamps(snapshot, stamps), "temporal", quantile=split.temporal_quantile)
        except ValueError as exc:
            raise WorkflowError(f"temporal split: {exc}") from None

    products = store.nodes("Product")
    titles = products.set_index("product_id")["title"] if "title" in products.columns else pd.Series(dtype=object)
    titles = titles.reindex(snapshot.id_maps["product"]).fillna("").astype(str).tolist()

    judgements = export_judgements(store, snapshot)
    if len(judgements):
        judgements["grade"] = judgements["label"].astype(float)
        bad = ~np.isfinite(judgements["grade"].to_numpy()) | (judgements["grade"].to_numpy() < 0)
        if bad.any():
            row = judgements[bad].iloc[0]
            raise WorkflowError(f"judgement of query {row['query_id']!r}: label {row['label']!r} is not a grade >= 0")
        judgements["split"] = query_disjoint_split(judgements["query_id"], split.search_fractions, split.search_seed)
        snapshot = with_query_nodes(snapshot, judgements, split.min_grade)
    else:
        judgements = judgements.assign(grade=pd.Series(dtype=float), split=pd.Series(dtype=str))
    queries = judgements.drop_duplicates("query_id")[["query_id", "query", "split"]].reset_index(drop=True)
    return Dataset(snapshot, judgements.reset_index(drop=True), queries, titles, split)
