"""Hybrid search: the fused scorer's dense scores mixed with BM25's lexical scores.

Dense and lexical rankers fail on different queries: BERT vectors miss exact tokens
(model numbers, sizes, brands), BM25 misses paraphrase and the knowledge the graph
adds. Each query's two score rows are standardised over the catalogue (mean 0, std 1)
and mixed::

    s(q, p) = (1 - w) * z(dense(q, ·))[p] + w * z(bm25(q, ·))[p]

with one weight ``w`` for all queries, chosen on validation queries
(:func:`choose_lexical_weight`), never on test. Standardising per query makes ``w``
mean the same for short and long queries, whose raw BM25 scales differ.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from kgrec.fusion.data import SearchBatch

ScoreFn = Callable[[SearchBatch], torch.Tensor]

#: Weights tried by :func:`choose_lexical_weight` (0 = dense only, 1 = BM25 only).
DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(21))


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` scores shifted and scaled per row to mean 0, std 1 (a constant row -> 0).
    ``-inf`` entries (excluded products) stay ``-inf`` and do not enter the statistics."""
    scores = scores.float()
    finite = torch.isfinite(scores)
    values = torch.where(finite, scores, 0.0)
    count = finite.sum(1, keepdim=True).clamp(min=1)
    mean = values.sum(1, keepdim=True) / count
    var = (torch.where(finite, values - mean, 0.0) ** 2).sum(1, keepdim=True) / count
    std = var.sqrt()
    z = torch.where(std > 0, (values - mean) / std.clamp(min=1e-12), 0.0)
    return torch.where(finite, z, float("-inf"))


def mix(dense: torch.Tensor, lexical: torch.Tensor, weight: float) -> torch.Tensor:
    """``(1 - weight) * standardize(dense) + weight * standardize(lexical)``, both ``[B, P]``."""
    if dense.shape != lexical.shape:
        raise ValueError(f"dense and lexical scores differ in shape: {tuple(dense.shape)} vs {tuple(lexical.shape)}")
    return _mix_standardized(standardize(dense), standardize(lexical), weight)


def _mix_standardized(dense: torch.Tensor, lexical: torch.Tensor, weight: float) -> torch.Tensor:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"lexical weight must be in [0, 1], got {weight}")
    if weight == 0.0:  # exact ends: no 0 * -inf
        return dense
    if weight == 1.0:
        return lexical
    return (1.0 - weight) * dense + weight * lexical


@dataclass
class WeightChoice:
    """The outcome of :func:`choose_lexical_weight`: the weight and the validation curve."""

    weight: float
    metric: str
    curve: dict[float, float] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return self.curve[self.weight]


def choose_lexical_weight(
    dense: torch.Tensor,
    lexical: torch.Tensor,
    batch: SearchBatch,
    grid: Sequence[float] = DEFAULT_GRID,
    metric: str = "ndcg@10",
) -> WeightChoice:
    """The grid weight with the best mean ``metric`` (full-catalogue protocol) on ``batch``
    (validation queries) for the mix of ``dense`` and ``lexical`` ``[B, P]`` scores.
    Ties go to the smaller weight."""
    from kgrec.evaluation.search import evaluate_search

    if not grid:
        raise ValueError("choose_lexical_weight needs a non-empty grid")
    k = int(metric.split("@")[1]) if "@" in metric else 10
    if dense.shape != lexical.shape:
        raise ValueError(f"dense and lexical scores differ in shape: {tuple(dense.shape)} vs {tuple(lexical.shape)}")
    dense, lexical = standardize(dense), standardize(lexical)  # once, not per grid point
    curve: dict[float, float] = {}
    for w in sorted(float(w) for w in grid):
        curve[w] = float(evaluate_search(_mix_standardized(dense, lexical, w), batch, ks=(k,), protocol="full")[metric])
    best = max(curve, key=lambda w: (curve[w], -w))
    return WeightChoice(best, metric, curve)


class HybridSearch:
    """A :data:`~kgrec.evaluation.search.ScoreFn` mixing a dense score function with BM25.

    Args:
        dense: ``batch -> [B, P]`` dense scores (e.g. :func:`kgrec.evaluation.search.model_scores`).
        lexical: a :class:`~kgrec.search.bm25.BM25Ranker` over the same ``P`` products, in order.
        weight: the lexical weight ``w`` in [0, 1] (default 0.2).
    """

    def __init__(self, dense: ScoreFn, lexical, weight: float = 0.2) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"lexical weight must be in [0, 1], got {weight}")
        self.dense, self.lexical, self.weight = dense, lexical, float(weight)

    def __call__(self, batch: SearchBatch) -> torch.Tensor:
        if batch.texts is None:
            raise ValueError("hybrid search needs the query texts (SearchBatch.texts) for BM25")
        dense = self.dense(batch).float().cpu()
        lexical = self.lexical.score_all(list(batch.texts)).float().cpu()
        return mix(dense, lexical, self.weight)
