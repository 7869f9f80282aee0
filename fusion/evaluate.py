"""Full-ranking evaluation of any :class:`~fusion.models.Recommender`.

For each target of a split the model scores *every* product; the products the
user interacted with before the split (the whole visible history) are excluded;
the top K are compared with the target. The model sees the message-passing
graph of :meth:`kg.export.GraphSnapshot.message_passing` for that split, so the
targets are never part of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fusion.data import RecBatch, evaluation_examples
from fusion.metrics import hit_matrix, mean_metrics, per_user_metrics
from fusion.models import Recommender
from kg.export import GraphSnapshot


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

    Sets the model's graph to ``snapshot.message_passing(split)`` first.
    """
    model.set_graph(snapshot.message_passing(split))
    batch, histories = evaluation_examples(snapshot, split, max_history)
    exclude = exclusion_mask(histories, snapshot.num_products)
    topk = rank_top_k(model, batch, exclude, max(ks), batch_size)
    hits = hit_matrix(topk, batch.targets)
    per_user = per_user_metrics(hits, torch.ones(len(batch)), ks)
    return EvalResult(mean_metrics(per_user), per_user, topk, batch.users, batch.targets)
