"""Top-K ranking metrics, computed in batch from a hit matrix.

Given each user's top-K list and its relevant products, ``hits[u, r]`` is True
when the product at rank ``r + 1`` is relevant. All metrics follow trec_eval's
definitions (checked against pytrec_eval in the tests):

* ``recall@k``   = relevant in top k / number relevant
* ``precision@k`` = relevant in top k / k
* ``hit@k``      = 1 if any relevant in top k
* ``ndcg@k``     = DCG@k / IDCG@k with binary gains and ``1 / log2(rank + 1)`` discounts
* ``mrr@k``      = 1 / rank of the first relevant product within top k (0 if none)
* ``map@k``      = mean over relevant products of precision at their ranks, / min(#relevant, k)
"""
from __future__ import annotations

import torch

METRICS = ("recall", "precision", "hit", "ndcg", "mrr", "map")


def hit_matrix(topk: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[U, K]`` bool: ``topk[u, r] == targets[u]`` (one relevant product per user)."""
    return topk == targets.unsqueeze(1)


def per_user_metrics(hits: torch.Tensor, num_relevant: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Metric values per user.

    Args:
        hits: ``[U, K]`` bool, ``K >= max(ks)``.
        num_relevant: ``[U]`` number of relevant products per user (>= 1).
        ks: cut-offs.

    Returns:
        ``{"ndcg@10": FloatTensor [U], ...}`` for every metric in :data:`METRICS` and k in ``ks``.
    """
    if hits.shape[1] < max(ks):
        raise ValueError(f"need at least {max(ks)} ranked items, got {hits.shape[1]}")
    hits = hits.float()
    n_rel = num_relevant.float().clamp(min=1)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32, device=hits.device)
    discounts = 1.0 / torch.log2(ranks + 1)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        h = hits[:, :k]
        found = h.sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(torch.minimum(n_rel, torch.tensor(float(k))) - 1).long()]
        first = torch.where(h.any(1), h.argmax(1).float() + 1, torch.full_like(found, float("inf")))
        precision_at = torch.cumsum(h, 1) / ranks[:k]
        out[f"recall@{k}"] = found / n_rel
        out[f"precision@{k}"] = found / k
        out[f"hit@{k}"] = (found > 0).float()
        out[f"ndcg@{k}"] = (h * discounts[:k]).sum(1) / ideal
        out[f"mrr@{k}"] = 1.0 / first
        out[f"map@{k}"] = (precision_at * h).sum(1) / torch.minimum(n_rel, torch.tensor(float(k)))
    return out


def mean_metrics(per_user: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average each metric over users."""
    return {name: float(values.mean()) for name, values in per_user.items()}
