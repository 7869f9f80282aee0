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


# --- Beyond top-K accuracy: AUC, coverage, popularity bias, graded NDCG -----------------
#
# Added for the evaluation report (docs/evaluation.md defines each one). Everything
# above this line is unchanged.


@torch.no_grad()
def target_rank(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank of each example's target among its candidates, ties at their mid-rank.

    Args:
        scores: ``[N, P]`` scores of every product.
        targets: ``[N]`` target product per example.
        exclude: ``[N, P]`` bool, products that are not candidates (the seen history).

    Returns:
        ``(rank, num_candidates)``, both ``[N]`` float. The candidates are the products
        not excluded, plus the target. ``rank = 1 + #(candidates scored higher) + 0.5 *
        #(other candidates scored equal)``. A target that is itself excluded (a repeat
        purchase under full ranking) can never be recommended: it gets the last rank,
        ``rank = num_candidates``.
    """
    if exclude is None:
        exclude = torch.zeros_like(scores, dtype=torch.bool)
    return rank_among_allowed(scores.masked_fill(exclude, float("-inf")), scores, targets, exclude)


@torch.no_grad()
def rank_among_allowed(
    masked: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor,
    num_excluded: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`target_rank` when ``masked = scores.masked_fill(exclude, -inf)`` is already at hand
    (the evaluator reuses it for ``topk``).

    One pass over ``[N, P]``: with ``G``/``E``/``L`` the entries above / equal to / below the
    target's score (excluded entries are -inf, so below), ``sum(sign(masked - t)) = G - L`` and
    ``G + E + L = P`` give ``G + E/2 = (P + G - L) / 2``, hence ``rank = 1 + G + (E - 1)/2``
    without counting booleans (slow on CPU). Rows whose target score is not finite fall back to
    explicit comparisons. ``num_excluded`` (``[N]``) may be passed when known.
    """
    t = targets.long().unsqueeze(1)
    target_score = scores.gather(1, t)
    target_excluded = exclude.gather(1, t).squeeze(1)
    if num_excluded is None:
        num_excluded = torch.count_nonzero(exclude, dim=1)
    num_excluded = num_excluded.to(scores.device).float()
    p = scores.shape[1]
    balance = (masked - target_score).sign_().sum(1, dtype=torch.float32)  # G - L
    rank = 0.5 + 0.5 * (p + balance)
    odd = ~torch.isfinite(target_score.squeeze(1)) & ~target_excluded
    if bool(odd.any()):  # -inf / nan target scores: count explicitly (rare)
        m, ts = masked[odd], target_score[odd]
        greater = torch.count_nonzero(m > ts, dim=1).float()
        equal = torch.count_nonzero((scores[odd] == ts) & ~exclude[odd], dim=1).float() - 1.0
        rank[odd] = 1.0 + greater + 0.5 * equal
    num_candidates = p - num_excluded + target_excluded.float()
    rank = torch.where(target_excluded, num_candidates, rank)
    return rank, num_candidates


def auc_from_rank(rank: torch.Tensor, num_candidates: torch.Tensor) -> torch.Tensor:
    """AUC of one target against all other candidates: ``1 - (rank - 1) / (num_candidates - 1)``.

    This is the fraction of (target, negative) pairs ordered correctly, a tie counting 1/2,
    i.e. the area under the ROC curve of a list with one positive. ``[N]`` float; 1.0 for
    an example whose target is the only candidate.
    """
    negatives = (num_candidates - 1).clamp(min=1)
    return torch.where(num_candidates > 1, 1.0 - (rank - 1) / negatives, torch.ones_like(rank))


def group_auc(auc: torch.Tensor, groups: torch.Tensor) -> float:
    """GAUC: the mean over groups (users) of each group's mean AUC, every group weighted equally.

    With one example per user (leave-one-out) it equals the mean AUC; a protocol that gives
    a user several targets (e.g. the temporal split's validation) weights users, not examples.
    """
    if auc.numel() == 0:
        return float("nan")
    groups = groups.long()
    groups = groups - groups.min()  # non-negative ids for bincount (no sort, unlike torch.unique)
    sums = torch.bincount(groups, weights=auc.double())
    counts = torch.bincount(groups).double()
    present = counts > 0
    return float((sums[present] / counts[present]).mean())


def catalogue_coverage(topk: torch.Tensor, k: int, num_products: int) -> float:
    """Share of the catalogue that appears in at least one top-``k`` list: ``|U_u top_k(u)| / P``."""
    if topk.numel() == 0:
        return 0.0
    seen = torch.bincount(topk[:, :k].reshape(-1).long(), minlength=num_products)
    return float(torch.count_nonzero(seen)) / num_products


def popularity_counts(products: torch.Tensor, num_products: int) -> torch.Tensor:
    """``[P]`` float: how many interactions each product has in ``products`` (e.g. the visible ones)."""
    return torch.bincount(products.long(), minlength=num_products).float()


def recommended_popularity(topk: torch.Tensor, k: int, popularity: torch.Tensor) -> torch.Tensor:
    """Per-user popularity bias: mean popularity of the user's top-``k`` products ``[N]``.

    Its mean over users is the *average recommendation popularity* (ARP, Abdollahpouri
    et al., 2019); ``popularity`` is usually :func:`popularity_counts` of the interactions
    visible when the list is made.
    """
    return popularity.to(topk.device)[topk[:, :k]].float().mean(1)


def graded_ndcg(
    ranked_relevance: torch.Tensor,
    judged_relevance: torch.Tensor,
    k: int,
    gain: str = "exponential",
) -> torch.Tensor:
    """NDCG@k with graded relevance, per query (for search).

    Args:
        ranked_relevance: ``[Q, K]`` relevance label of the product at each rank
            (0 for unjudged), ``K >= k`` or shorter lists padded with 0.
        judged_relevance: ``[Q, J]`` every judged label of the query (any order, pad 0);
            the ideal ranking sorts them.
        k: cut-off.
        gain: ``"exponential"`` (``2^rel - 1``, Burges et al. 2005; ranx ``ndcg_burges``)
            or ``"linear"`` (``rel``, trec_eval ``ndcg_cut``).

    Returns:
        ``[Q]`` float; 0 for a query with no positive label (as trec_eval and ranx).
    """
    if gain not in ("exponential", "linear"):
        raise ValueError(f"gain must be 'exponential' or 'linear', got {gain!r}")

    def gains(rel: torch.Tensor) -> torch.Tensor:
        rel = rel.double()
        return torch.pow(2.0, rel) - 1.0 if gain == "exponential" else rel

    def dcg(rel: torch.Tensor) -> torch.Tensor:
        rel = rel[:, :k]
        if rel.shape[1] < k:
            rel = torch.nn.functional.pad(rel, (0, k - rel.shape[1]))
        discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=rel.device))
        return (gains(rel) * discounts).sum(1)

    ideal = dcg(torch.sort(judged_relevance.double(), dim=1, descending=True).values)
    actual = dcg(ranked_relevance.double())
    return torch.where(ideal > 0, actual / ideal.clamp(min=1e-300), torch.zeros_like(actual)).float()


def metrics_from_position(position: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The metrics of :func:`per_user_metrics` for one target per example, from its position.

    ``position[u]`` is the 1-based position of the target in the example's ranked list,
    0 when the target is not in the list. Equal to ``per_user_metrics(hit_matrix(topk,
    targets), ones, ks)`` for lists at least ``max(ks)`` long, so per-user results can be
    stored as one integer per example and every metric@K recomputed.
    """
    pos = position.float()
    found = pos > 0
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = found & (pos <= k)
        h = hit.float()
        out[f"recall@{k}"] = h
        out[f"precision@{k}"] = h / k
        out[f"hit@{k}"] = h
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(pos + 1), torch.zeros_like(pos))
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / pos.clamp(min=1), torch.zeros_like(pos))
        out[f"map@{k}"] = out[f"mrr@{k}"].clone()
    return out
