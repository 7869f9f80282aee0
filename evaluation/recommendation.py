"""Full-ranking evaluation of any :class:`~kgrec.fusion.models.Recommender`.

For each target of a split the model scores *every* product; the products the
user interacted with before the split (the whole visible history) are excluded;
the top K are compared with the target. The model sees the message-passing
graph of :meth:`kgrec.kg.export.GraphSnapshot.message_passing` for that split, so the
targets are never part of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kgrec.evaluation.metrics import hit_matrix, mean_metrics, per_user_metrics
from kgrec.fusion.data import RecBatch
from kgrec.fusion.models import Recommender
from kgrec.fusion.train import Validator
from kgrec.kg.export import GraphSnapshot


@dataclass
class EvalResult:
    """Metrics of one model on one split.

    Attributes:
        metrics: mean over users, e.g. ``{"ndcg@10": 0.07, ...}``.
        per_user: ``{metric: [N]}`` per evaluated example (for significance tests).
        topk: ``[N, K]`` ranked product indices.
        users: ``[N]`` user indices, targets ``[N]`` target products.
    """

    metrics: dict[str, float]
    per_user: dict[str, torch.Tensor] = field(repr=False)
    topk: torch.Tensor = field(repr=False)
    users: torch.Tensor = field(repr=False)
    targets: torch.Tensor = field(repr=False)


def padded_hits(hits: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]`` hits: a catalogue of fewer than ``k`` products ranks them all, and the
    positions past its end are misses."""
    if hits.shape[1] >= k:
        return hits
    return torch.nn.functional.pad(hits, (0, k - hits.shape[1]), value=False)


def exclusion_mask(histories: list[np.ndarray], num_products: int) -> torch.Tensor:
    """``[N, P]`` bool, True where the product is in the example's history."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate(histories) if histories else np.empty(0, dtype=np.int64)
    mask = torch.zeros(len(histories), num_products, dtype=torch.bool)
    mask[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = True
    return mask


@torch.no_grad()
def rank_top_k(
    model: Recommender,
    batch: RecBatch,
    exclude: torch.Tensor,
    k: int,
    batch_size: int = 2048,
) -> torch.Tensor:
    """``[N, k]`` product indices ranked by ``model.score_all`` with ``exclude`` masked out."""
    model.eval()
    device = model.device
    out = []
    for start in range(0, len(batch), batch_size):
        part = batch[slice(start, start + batch_size)].to(device)
        scores = model.score_all(part)
        scores = scores.masked_fill(exclude[start : start + batch_size].to(device), float("-inf"))
        out.append(torch.topk(scores, k, dim=1).indices.cpu())
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


def evaluate(
    model: Recommender,
    snapshot: GraphSnapshot,
    split: str = "test",
    ks: tuple[int, ...] = (10, 20),
    max_history: int = 50,
    batch_size: int = 2048,
) -> EvalResult:
    """Evaluate ``model`` on the targets of ``split`` by full ranking.

    Sets the model's graph to ``snapshot.message_passing(split)`` first. Inputs are built
    without a Python loop over users (:func:`evaluation_inputs`) and the exclusion mask on the
    model's device, chunk by chunk (:func:`rank_top_k_pairs`); tests check the result equals
    the per-example path (:func:`kgrec.fusion.data.evaluation_examples`, :func:`exclusion_mask`,
    :func:`rank_top_k`).
    """
    model.set_graph(snapshot.message_passing(split))
    batch, rows, cols = evaluation_inputs(snapshot, split, max_history)
    topk = rank_top_k_pairs(model, batch, rows, cols, min(max(ks), snapshot.num_products), batch_size)
    hits = padded_hits(hit_matrix(topk, batch.targets), max(ks))
    per_user = per_user_metrics(hits, torch.ones(len(batch)), ks)
    return EvalResult(mean_metrics(per_user), per_user, topk, batch.users, batch.targets)


# --- Detailed evaluation for the report (added; everything above is unchanged) --------------


@dataclass(kw_only=True)  # keyword-only: its fields follow EvalResult's, which have no defaults
class DetailedEvalResult(EvalResult):
    """:class:`EvalResult` plus what the evaluation report needs.

    Attributes:
        position: ``[N]`` 1-based position of the target in ``topk`` (0 = not in it).
        rank: ``[N]`` the target's rank among all candidates, ties at mid-rank
            (:func:`kgrec.evaluation.metrics.target_rank`); ``num_candidates`` ``[N]``.
        history_length: ``[N]`` products in the visible history (all of it, the ranking excludes them).
        target_popularity: ``[N]`` visible interactions of the target product before the split.
        target_seen: ``[N]`` bool, the target is in the history (a repeat: it cannot be hit).
        aggregate: metrics that are not means over examples (``coverage@k``, ``gauc``).
    """

    position: torch.Tensor = field(repr=False)
    rank: torch.Tensor = field(repr=False)
    num_candidates: torch.Tensor = field(repr=False)
    history_length: torch.Tensor = field(repr=False)
    target_popularity: torch.Tensor = field(repr=False)
    target_seen: torch.Tensor = field(repr=False)
    aggregate: dict[str, float] = field(default_factory=dict)


def evaluate_detailed(
    model: Recommender,
    snapshot: GraphSnapshot,
    split: str = "test",
    ks: tuple[int, ...] = (10, 20),
    max_history: int = 50,
    batch_size: int = 2048,
    coverage_ks: tuple[int, ...] = (10, 20),
) -> DetailedEvalResult:
    """:func:`evaluate` (same full ranking, same top-K, same metrics) plus AUC, GAUC,
    catalogue coverage, popularity bias (``arp@k``) and per-example facts for breakdowns.

    ``per_user`` holds every metric of :func:`evaluate` for ``ks``, plus ``auc`` and
    ``arp@k`` for ``k`` in ``coverage_ks`` (mean visible-interaction count of the top-k).
    """
    from kgrec.evaluation.metrics import auc_from_rank, catalogue_coverage, group_auc, popularity_counts, recommended_popularity

    model.set_graph(snapshot.message_passing(split))
    batch, rows, cols = evaluation_inputs(snapshot, split, max_history)
    depth = max(max(ks), max(coverage_ks))
    depth = min(depth, snapshot.num_products)
    topk, rank, num_candidates = rank_top_k_pairs(model, batch, rows, cols, depth, batch_size, with_rank=True)
    history_length = torch.bincount(rows, minlength=len(batch))
    target_seen = torch.zeros(len(batch), dtype=torch.bool)
    target_seen[rows[cols == batch.targets[rows]]] = True
    # an excluded target sits among the -inf scores: only reachable when depth > candidates; never a hit
    hits = hit_matrix(topk, batch.targets) & ~target_seen.unsqueeze(1)
    per_user = per_user_metrics(padded_hits(hits, max(ks)), torch.ones(len(batch)), ks)
    per_user["auc"] = auc_from_rank(rank, num_candidates)
    visible = snapshot.visible(split)
    popularity = popularity_counts(torch.as_tensor(visible["product"].to_numpy().copy()), snapshot.num_products)
    for k in coverage_ks:
        per_user[f"arp@{k}"] = recommended_popularity(topk, k, popularity)
    position = torch.where(hits.any(1), hits.float().argmax(1) + 1, torch.zeros(len(batch), dtype=torch.long))
    aggregate = {f"coverage@{k}": catalogue_coverage(topk, k, snapshot.num_products) for k in coverage_ks}
    aggregate["gauc"] = group_auc(per_user["auc"], batch.users)
    return DetailedEvalResult(
        metrics=mean_metrics(per_user),
        per_user=per_user,
        topk=topk,
        users=batch.users,
        targets=batch.targets,
        position=position.long(),
        rank=rank,
        num_candidates=num_candidates,
        history_length=history_length,
        target_popularity=popularity[batch.targets].long() if len(batch) else torch.zeros(0, dtype=torch.long),
        target_seen=target_seen,
        aggregate=aggregate,
    )


# --- Vectorised evaluation inputs (added; same results as evaluate(), see tests) -------------


def evaluation_inputs(snapshot: GraphSnapshot, split: str, max_history: int = 50) -> tuple[RecBatch, torch.Tensor, torch.Tensor]:
    """:func:`kgrec.fusion.data.evaluation_examples` without a Python loop over users.

    Returns ``(batch, rows, cols)``: the same :class:`~kgrec.fusion.data.RecBatch`, and the exclusion
    as index pairs (``rows[i]`` = example, ``cols[i]`` = a product of its visible history,
    sorted by example) instead of one array per example — :func:`exclusion_mask` of the
    histories is ``mask[rows, cols] = True``.
    """
    visible = snapshot.visible(split)
    targets = snapshot.interactions[snapshot.interactions["split"] == split]
    users = targets["user"].to_numpy().astype(np.int64)
    vu = visible["user"].to_numpy().astype(np.int64)
    vp = visible["product"].to_numpy().astype(np.int64)
    order = np.argsort(vu, kind="stable")  # per user, the frame's row order (as groupby keeps it)
    su, sp = vu[order], vp[order]
    starts = np.searchsorted(su, users, side="left")
    lengths = np.searchsorted(su, users, side="right") - starts
    total = int(lengths.sum())
    rows = np.repeat(np.arange(len(users)), lengths)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0..len-1 per example
    cols = sp[np.repeat(starts, lengths) + within]
    history = np.full((len(users), max_history), -1, dtype=np.int64)
    keep = within >= np.repeat(lengths, lengths) - max_history  # the last max_history of each
    history[rows[keep], (max_history - np.repeat(lengths, lengths) + within)[keep]] = cols[keep]
    batch = RecBatch(
        torch.as_tensor(users.copy(), dtype=torch.long),
        torch.as_tensor(history),
        torch.as_tensor(targets["product"].to_numpy().astype(np.int64).copy(), dtype=torch.long),
    )
    return batch, torch.as_tensor(rows), torch.as_tensor(cols)


@torch.no_grad()
def rank_top_k_pairs(
    model: Recommender,
    batch: RecBatch,
    rows: torch.Tensor,
    cols: torch.Tensor,
    k: int,
    batch_size: int = 2048,
    with_rank: bool = False,
):
    """:func:`rank_top_k` with the exclusion given as sorted ``(rows, cols)`` pairs: each chunk's
    mask is built on the model's device (no dense ``[N, P]`` mask crosses to a GPU).

    Returns ``topk [N, k]``; with ``with_rank`` also the targets' full ranks and candidate counts
    (:func:`kgrec.evaluation.metrics.rank_among_allowed`).
    """
    from kgrec.evaluation.metrics import rank_among_allowed

    model.eval()
    device = model.device
    bounds = torch.searchsorted(rows, torch.arange(0, len(batch) + batch_size, batch_size))
    rows_d, cols_d = rows.to(device), cols.to(device)
    tops, ranks, cands = [], [], []
    for i, start in enumerate(range(0, len(batch), batch_size)):
        part = batch[slice(start, start + batch_size)].to(device)
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        excl = torch.zeros(len(part), model.num_products, dtype=torch.bool, device=device)
        excl[rows_d[lo:hi] - start, cols_d[lo:hi]] = True
        scores = model.score_all(part)
        masked = scores.masked_fill(excl, float("-inf"))
        tops.append(torch.topk(masked, k, dim=1).indices)
        if with_rank:
            rank, num = rank_among_allowed(masked, scores, part.targets, excl,
                                           torch.bincount(rows_d[lo:hi] - start, minlength=len(part)))
            ranks.append(rank)
            cands.append(num)
    topk = torch.cat(tops).cpu() if tops else torch.empty(0, k, dtype=torch.long)
    if not with_rank:
        return topk
    empty = torch.empty(0)
    return topk, (torch.cat(ranks).cpu() if ranks else empty), (torch.cat(cands).cpu() if cands else empty)


def ndcg_validator(snapshot: GraphSnapshot, split: str = "valid", k: int = 10, max_history: int = 50) -> Validator:
    """A :data:`~kgrec.fusion.train.Validator`: full-ranking NDCG@``k`` on the targets of ``split``
    (what :func:`kgrec.fusion.train.fit` early-stops on)."""

    def validate(model: Recommender) -> float:
        return evaluate(model, snapshot, split, ks=(k,), max_history=max_history).metrics[f"ndcg@{k}"]

    return validate
