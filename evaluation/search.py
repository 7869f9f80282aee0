"""Search evaluation: rank every product (or each query's judged products) and score the ranking.

:func:`evaluate_search` ranks for each query either every product (``protocol="full"``,
unjudged products gain 0) or only the query's judged products (``protocol="rerank"``), and
scores the ranking with graded NDCG (gains ``2^grade - 1``), MRR and MAP
(:mod:`kgrec.evaluation.search_metrics`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kgrec.evaluation.search_metrics import mean_search_metrics, rerank_topk, search_metrics_from_topk
from kgrec.fusion.data import SearchBatch
from kgrec.fusion.train import Validator
from kgrec.kg.judgements import SearchJudgements

#: ``scores(batch) -> [B, P]``: what :func:`evaluate_search` ranks with.
ScoreFn = Callable[[SearchBatch], torch.Tensor]


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
    """The :class:`~kgrec.kg.judgements.SearchJudgements` view of a batch (for the metrics)."""
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
    for paired significance tests (:func:`kgrec.evaluation.significance.paired_test`)."""
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


def search_validator(batch: SearchBatch, protocol: str = "full", exclude_history: bool = False, k: int = 10) -> Validator:
    """A :data:`~kgrec.fusion.train.Validator`: search NDCG@``k`` of a model's ``search_logits`` on
    ``batch`` (the validation queries) under ``protocol``."""

    def validate(model) -> float:
        metrics = evaluate_search(model_scores(model), batch, ks=(k,), protocol=protocol, exclude_history=exclude_history)
        return metrics[f"ndcg@{k}"]

    return validate
