"""Search from the recommender's scorer: examples, the search graph, evaluation.

Two sources of graded search examples, one format (:class:`~fusion.data.SearchBatch`):

* **judged queries** (Home Depot): each query's judged products with their grades
  (:func:`judged_examples`); the query-disjoint split keeps test queries unseen. The
  message-passing graph gains the *train* queries as nodes with ``judged`` edges to their
  relevant products (:func:`search_graph`), so a product's graph vector carries the text of
  the queries it is known to answer — never a valid/test judgement;
* **personalised product search** (the demo data, the protocol of HEM / ZAM): every purchase
  becomes a query made of the purchased product's category path, issued by that user with
  the history before it, the purchased product the one relevant answer
  (:func:`category_path_examples`).

:func:`evaluate_search` ranks for each query either every product (``protocol="full"``,
unjudged products gain 0) or only the query's judged products (``protocol="rerank"``), and
scores the ranking with graded NDCG (gains ``2^grade - 1``), MRR and MAP
(:mod:`fusion.search_metrics`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from fusion.data import RecBatch, SearchBatch, evaluation_examples, training_examples
from fusion.models import QUERY_EDGE, REV_QUERY_EDGE
from fusion.search_data import SearchJudgements, judgements_from_frame
from fusion.search_metrics import mean_search_metrics, rerank_topk, search_metrics_from_topk
from kg.export import GraphSnapshot

#: ``scores(batch) -> [B, P]``: what :func:`evaluate_search` ranks with.
ScoreFn = Callable[[SearchBatch], torch.Tensor]


@dataclass
class SearchTask:
    """Graded search examples trained jointly with recommendation (:func:`fusion.train.fit`).

    Attributes:
        train: the training examples.
        valid: the validation examples (early stopping on their NDCG@10).
        weight: weight of the search loss next to the recommendation loss (default 1.0).
        batch_size: search examples per step (default 256).
        protocol: ``"full"`` or ``"rerank"`` for validation (default ``"full"``).
        exclude_history: drop each user's history from the ranking (personalised search).
        graph: the message-passing graph to train with instead of the snapshot's (e.g.
            :func:`search_graph`); None = the snapshot's train graph.
    """

    train: SearchBatch
    valid: SearchBatch
    weight: float = 1.0
    batch_size: int = 256
    protocol: str = "full"
    exclude_history: bool = False
    graph: HeteroData | None = None

    def validate(self, model) -> float:
        """Validation NDCG@10 of ``model`` (its current graph)."""
        metrics = evaluate_search(model_scores(model), self.valid, ks=(10,), protocol=self.protocol,
                                  exclude_history=self.exclude_history)
        return metrics["ndcg@10"]


def model_scores(model, chunk: int = 512) -> ScoreFn:
    """A :data:`ScoreFn` from a model's ``search_logits`` (eval mode, no grad, in chunks)."""

    def scores(batch: SearchBatch) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for begin in range(0, len(batch), chunk):
                out.append(model.search_logits(batch[begin : begin + chunk].to(model.device)).float().cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, model.num_products)

    return scores


def judgements_of(batch: SearchBatch) -> SearchJudgements:
    """The :class:`~fusion.search_data.SearchJudgements` view of a batch (for the metrics)."""
    texts = batch.texts if batch.texts is not None else [str(i) for i in range(len(batch))]
    return SearchJudgements(
        query_ids=[str(i) for i in range(len(batch))], queries=list(texts),
        products=batch.products.cpu(), grades=batch.grades.cpu(), users=batch.users.cpu(),
    )


def evaluate_search(
    scores: ScoreFn | torch.Tensor,
    batch: SearchBatch,
    ks: Sequence[int] = (10,),
    protocol: str = "full",
    exclude_history: bool = False,
    relevant_threshold: float = 1.0,
    chunk: int = 1024,
) -> dict[str, float]:
    """Mean graded search metrics (``ndcg@k``, ``mrr@k``, ``map@k``, ``recall@k``).

    Args:
        scores: a :data:`ScoreFn` or precomputed ``[B, P]`` scores (``protocol="rerank"``
            also accepts ``[B, J]`` scores of the judged products).
        protocol: ``"full"`` ranks every product; ``"rerank"`` only each query's judged ones.
        exclude_history: in ``"full"``, drop the products of each example's history.
    """
    return mean_search_metrics(search_metrics_per_query(scores, batch, ks, protocol, exclude_history,
                                                        relevant_threshold, chunk))


def search_metrics_per_query(
    scores: ScoreFn | torch.Tensor,
    batch: SearchBatch,
    ks: Sequence[int] = (10,),
    protocol: str = "full",
    exclude_history: bool = False,
    relevant_threshold: float = 1.0,
    chunk: int = 1024,
) -> dict[str, torch.Tensor]:
    """``{metric: [B]}`` per-query values behind :func:`evaluate_search` (same arguments),
    for paired significance tests (:func:`fusion.significance.paired_test`)."""
    if protocol not in ("full", "rerank"):
        raise ValueError(f"protocol must be 'full' or 'rerank', got {protocol!r}")
    k_max = max(ks)
    per_query: dict[str, list[torch.Tensor]] = {}
    for begin in range(0, len(batch), chunk):
        part = batch[begin : begin + chunk]
        if isinstance(scores, torch.Tensor):
            s = scores[begin : begin + chunk].float()
        else:
            s = scores(part).float()
        if protocol == "rerank":
            cand = s if s.shape[1] == part.products.shape[1] else s.gather(1, part.products.clamp(min=0))
            topk = rerank_topk(cand, judgements_of(part))
        else:
            if exclude_history:
                hist = part.history
                rows = torch.arange(len(part)).unsqueeze(1).expand_as(hist)
                s = s.clone()
                s[rows[hist >= 0], hist[hist >= 0]] = float("-inf")
            topk = torch.topk(s, min(k_max, s.shape[1]), dim=1).indices
        metrics = search_metrics_from_topk(topk, judgements_of(part), ks=tuple(ks), relevant_threshold=relevant_threshold)
        for name, value in metrics.items():
            per_query.setdefault(name, []).append(value)
    return {name: torch.cat(v) for name, v in per_query.items()}


# --------------------------------------------------------------------------- judged queries


def judged_examples(
    judgements: pd.DataFrame,
    query_vectors: torch.Tensor,
    query_index: dict[str, int],
    query_nodes: dict[str, int] | None = None,
    max_history: int = 1,
) -> SearchBatch:
    """One example per query from a judgement table.

    Args:
        judgements: ``query_id``, ``query``, ``product`` (index), ``grade`` columns.
        query_vectors: ``[Q_all, d_text]`` text vectors; ``query_index`` maps a query_id to its row.
        query_nodes: query_id -> node index in the search graph (train queries), or None.
    """
    judged = judgements_from_frame(judgements.assign(label=judgements["grade"]))
    n = len(judged)
    rows = torch.as_tensor([query_index[q] for q in judged.query_ids], dtype=torch.long)
    nodes = torch.as_tensor([(query_nodes or {}).get(q, -1) for q in judged.query_ids], dtype=torch.long)
    return SearchBatch(
        queries=query_vectors[rows], products=judged.products, grades=judged.grades,
        users=torch.full((n,), -1, dtype=torch.long),
        history=torch.full((n, max_history), -1, dtype=torch.long),
        query_nodes=nodes, texts=list(judged.queries),
    )


def search_graph(graph: HeteroData, judgements: pd.DataFrame, query_nodes: dict[str, int], min_grade: float = 1.0) -> HeteroData:
    """``graph`` plus query nodes and ``(query)-[judged]->(product)`` edges (and reverse) for the
    judgements of ``query_nodes`` (train queries only!) with ``grade >= min_grade``."""
    out = graph.clone()
    keep = judgements[judgements["query_id"].isin(query_nodes) & (judgements["grade"] >= min_grade)]
    src = torch.tensor(keep["query_id"].map(query_nodes).to_numpy(), dtype=torch.long)
    dst = torch.tensor(keep["product"].to_numpy(), dtype=torch.long)
    out["query"].num_nodes = len(query_nodes)
    out[QUERY_EDGE].edge_index = torch.stack([src, dst])
    out[REV_QUERY_EDGE].edge_index = torch.stack([src, dst]).flip(0)
    return out


# --------------------------------------------------------------------------- personalised search


def category_query(path: Sequence[str], skip_root: bool = True) -> str:
    """The query of a category path (HEM / ZAM): its level names, root dropped, joined."""
    levels = [str(p).strip() for p in path if str(p).strip()]
    if skip_root and len(levels) > 1:
        levels = levels[1:]
    return " ".join(levels)


def category_path_examples(
    snapshot: GraphSnapshot,
    split: str,
    product_queries: Sequence[str],
    query_vectors: torch.Tensor,
    max_history: int = 50,
) -> SearchBatch:
    """Personalised search examples: one per interaction of ``split`` (``"train"``: every train
    interaction after the user's first), query = the target's category-path query, the user's
    history before it, the target the only relevant product (grade 1).

    Args:
        product_queries: ``[P]`` query text of each product (:func:`category_query`).
        query_vectors: ``[P, d_text]`` text vectors of ``product_queries``.
    """
    batch: RecBatch = training_examples(snapshot, max_history) if split == "train" else evaluation_examples(snapshot, split, max_history)[0]
    targets = batch.targets
    return SearchBatch(
        queries=query_vectors[targets], products=targets.unsqueeze(1).clone(),
        grades=torch.ones(len(targets), 1), users=batch.users.clone(), history=batch.history.clone(),
        query_nodes=torch.full((len(targets),), -1, dtype=torch.long),
        texts=[product_queries[int(t)] for t in targets],
    )


def anonymous(batch: SearchBatch) -> SearchBatch:
    """The same examples without users or history (non-personalised search)."""
    return SearchBatch(batch.queries, batch.products, batch.grades, torch.full_like(batch.users, -1),
                       torch.full_like(batch.history, -1), batch.query_nodes, batch.texts)


def unique_texts(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts in first-seen order, index of each input in them)."""
    codes, uniques = pd.factorize(pd.Series(list(texts), dtype=object))
    return list(uniques), codes
