"""Graded search metrics per query, from ranked lists and :class:`~kgrec.kg.judgements.SearchJudgements`.

Definitions (per query; ``g(p)`` the judged grade of product ``p``, 0 when unjudged):

* ``ndcg@k``   = DCG@k / IDCG@k with exponential gains ``2^g - 1`` and ``1 / log2(rank + 1)``
  discounts (Burges et al. 2005; ranx ``ndcg_burges``). IDCG@k ranks *all* judged grades of
  the query, so a list that misses a judged relevant product is penalised even when that
  product was not among its candidates. 0 when the query has no grade > 0.
* ``mrr@k``    = 1 / rank of the first relevant product within the top k (0 if none);
* ``map@k``    = sum of precision@r over the ranks r <= k holding a relevant product, divided
  by the number R of relevant judged products (trec_eval ``map_cut_k`` and ranx ``map@k``;
  note: :func:`kgrec.evaluation.metrics.per_user_metrics` divides by ``min(R, k)``);
* ``recall@k`` = relevant products in the top k / R,

where *relevant* is the binary relevance ``g >= relevant_threshold`` (default 1.0: Home Depot
labels >= 2 after ``grade_offset=1``). MRR, MAP and recall are 0 for a query with R = 0.
Lists shorter than k count their missing ranks as non-relevant.

Two protocols, both scored by :func:`search_metrics_from_topk`:

* *full catalogue*: ``topk`` is the model's top-K over every product (unjudged ones have grade 0);
* *rerank judged candidates*: ``topk = rerank_topk(scores of each query's judged products)``.
"""
from __future__ import annotations

import torch

from kgrec.evaluation.metrics import graded_ndcg
from kgrec.kg.judgements import SearchJudgements


def _judged_grades(topk: torch.Tensor, judgements: SearchJudgements) -> torch.Tensor:
    """``[Q, K]`` float64: the judged grade of each ranked product, 0 if unjudged or padding."""
    products = judgements.products.to(topk.device)
    grades = judgements.grades.to(topk.device).double()
    if products.shape[1] == 0:
        return torch.zeros(topk.shape, dtype=torch.float64, device=topk.device)
    sorted_products, order = products.sort(dim=1)  # padding (-1) first
    sorted_grades = grades.gather(1, order)
    pos = torch.searchsorted(sorted_products.contiguous(), topk.contiguous()).clamp(max=products.shape[1] - 1)
    found = (sorted_products.gather(1, pos) == topk) & (topk >= 0)
    return torch.where(found, sorted_grades.gather(1, pos), torch.zeros_like(sorted_grades.gather(1, pos)))


def _check_topk(topk: torch.Tensor, judgements: SearchJudgements) -> None:
    if topk.dim() != 2 or topk.shape[0] != len(judgements):
        raise ValueError(f"topk must be [Q={len(judgements)}, K], got {tuple(topk.shape)}")
    if topk.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"topk must hold integer product indices, got {topk.dtype}")
    if topk.numel() and int(topk.min()) < -1:
        raise ValueError("topk: product indices must be >= 0 (or -1 for padding)")
    s = topk.sort(dim=1).values
    repeated = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    if bool(repeated.any()):
        q = int(repeated.any(1).nonzero()[0])
        raise ValueError(f"topk row {q} (query {judgements.query_ids[q]!r}) lists a product more than once")


@torch.no_grad()
def search_metrics_from_topk(
    topk: torch.Tensor,
    judgements: SearchJudgements,
    ks: tuple[int, ...] = (10,),
    relevant_threshold: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-query search metrics of ranked lists (see the module docstring).

    Args:
        topk: ``LongTensor [Q, K]`` product indices in ranked order, best first; -1 = padding
            (no product at that rank). A product may appear at most once per row. ``K``
            may be smaller than ``max(ks)``.
        judgements: the ``Q`` queries' judged products and grades (same query order).
        ks: cut-offs (default ``(10,)``).
        relevant_threshold: binary relevance for MRR/MAP/recall is ``grade >= threshold``
            (default 1.0).

    Returns:
        ``{"ndcg@10": FloatTensor [Q], "mrr@10": ..., "map@10": ..., "recall@10": ...}``
        for every k in ``ks``, on ``topk``'s device.
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive cut-offs, got {ks!r}")
    if not relevant_threshold > 0:
        raise ValueError(f"relevant_threshold must be > 0 (grade 0 means not relevant), got {relevant_threshold!r}")
    _check_topk(topk, judgements)
    k_max = max(int(k) for k in ks)
    topk = topk.long()
    if topk.shape[1] < k_max:  # short lists: the missing ranks hold no product
        topk = torch.nn.functional.pad(topk, (0, k_max - topk.shape[1]), value=-1)
    ranked = _judged_grades(topk, judgements)  # [Q, K]
    judged = judgements.products.to(topk.device) >= 0
    judged_grades = judgements.grades.to(topk.device).double().masked_fill(~judged, 0.0)
    n_rel = (judged & (judged_grades >= relevant_threshold)).sum(1).double()
    rel = (ranked >= relevant_threshold) & (topk >= 0)
    ranks = torch.arange(1, ranked.shape[1] + 1, dtype=torch.float64, device=topk.device)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        k = int(k)
        h = rel[:, :k].double()
        found = h.sum(1)
        first = torch.where(h.any(1), h.argmax(1).double() + 1.0, torch.full_like(found, float("inf")))
        precision_at = torch.cumsum(h, 1) / ranks[:k]
        safe = n_rel.clamp(min=1.0)
        has = n_rel > 0
        out[f"ndcg@{k}"] = graded_ndcg(ranked[:, :k], judged_grades, k, gain="exponential")
        out[f"mrr@{k}"] = torch.where(has, 1.0 / first, torch.zeros_like(found)).float()
        out[f"map@{k}"] = torch.where(has, (precision_at * h).sum(1) / safe, torch.zeros_like(found)).float()
        out[f"recall@{k}"] = torch.where(has, found / safe, torch.zeros_like(found)).float()
    return out


@torch.no_grad()
def rerank_topk(candidate_scores: torch.Tensor, judgements: SearchJudgements) -> torch.Tensor:
    """The "rerank judged candidates" protocol: each query's own judged products, best first.

    Args:
        candidate_scores: ``[Q, J]`` a score for every entry of ``judgements.products``
            (values at padding are ignored). NaN at a judged entry is an error.
        judgements: the queries' judged products.

    Returns:
        ``LongTensor [Q, J]``: ``judgements.products`` of each row sorted by score, highest
        first, ties in column order, padding (-1) last. Pass it to
        :func:`search_metrics_from_topk` for the rerank-protocol metrics.
    """
    products = judgements.products.to(candidate_scores.device)
    if candidate_scores.shape != products.shape:
        raise ValueError(f"candidate_scores must be [Q, J] = {tuple(products.shape)}, got {tuple(candidate_scores.shape)}")
    real = products >= 0
    if bool((torch.isnan(candidate_scores) & real).any()):
        q = int((torch.isnan(candidate_scores) & real).any(1).nonzero()[0])
        raise ValueError(f"candidate_scores row {q} (query {judgements.query_ids[q]!r}) has NaN for a judged product")
    scores = candidate_scores.double().masked_fill(~real, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # ties keep column order
    # padding last even when a judged product scores -inf: a second stable sort on "is padding"
    pad_key = (~real).gather(1, order).to(torch.int8)
    order = order.gather(1, torch.sort(pad_key, dim=1, stable=True).indices)
    return products.gather(1, order)


def mean_search_metrics(per_query: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average each metric over queries (every query weighted equally; NaN when there are none)."""
    return {name: float(values.double().mean()) if values.numel() else float("nan") for name, values in per_query.items()}
