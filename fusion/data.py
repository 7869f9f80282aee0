"""Training and evaluation examples built from a :class:`~kg.export.GraphSnapshot`.

An example is a user, the products the user interacted with before the target
(the history, most recent last, at most ``max_history``), and the target product.
Histories are padded on the left with ``-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kg.export import GraphSnapshot


@dataclass
class RecBatch:
    """A batch of recommendation examples.

    Attributes:
        users: ``[B]`` user indices.
        history: ``[B, L]`` product indices, most recent last, ``-1`` = padding.
        targets: ``[B]`` target product indices (``-1`` when unknown, e.g. at serving time).
    """

    users: torch.Tensor
    history: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str) -> "RecBatch":
        return RecBatch(self.users.to(device), self.history.to(device), self.targets.to(device))

    def __getitem__(self, index: torch.Tensor | slice) -> "RecBatch":
        return RecBatch(self.users[index], self.history[index], self.targets[index])


def _pad_left(sequences: list[np.ndarray], length: int) -> np.ndarray:
    out = np.full((len(sequences), length), -1, dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if len(seq):
            out[row, length - len(seq) :] = seq
    return out


def training_examples(snapshot: GraphSnapshot, max_history: int = 50) -> RecBatch:
    """One example per train interaction that has at least one train interaction before it."""
    train = snapshot.interactions[snapshot.interactions["split"] == "train"]
    users, targets, histories = [], [], []
    for user, products in train.groupby("user", sort=True)["product"]:
        seq = products.to_numpy()
        for i in range(1, len(seq)):
            users.append(user)
            targets.append(seq[i])
            histories.append(seq[max(0, i - max_history) : i])
    return RecBatch(
        torch.as_tensor(np.asarray(users, dtype=np.int64)),
        torch.as_tensor(_pad_left(histories, max_history)),
        torch.as_tensor(np.asarray(targets, dtype=np.int64)),
    )


def evaluation_examples(snapshot: GraphSnapshot, split: str, max_history: int = 50) -> tuple[RecBatch, list[np.ndarray]]:
    """Examples for the targets of ``split`` and, per example, every product to exclude.

    The history is what is visible before the split (:meth:`GraphSnapshot.visible`);
    all of it (not only the last ``max_history``) is excluded from the ranking.
    """
    visible = snapshot.visible(split)
    targets = snapshot.interactions[snapshot.interactions["split"] == split]
    seen = dict(tuple(visible.groupby("user", sort=False)["product"]))
    users = targets["user"].to_numpy()
    histories = [seen[u].to_numpy() if u in seen else np.empty(0, dtype=np.int64) for u in users]
    batch = RecBatch(
        torch.as_tensor(users.copy(), dtype=torch.long),
        torch.as_tensor(_pad_left(histories, max_history)),
        torch.as_tensor(targets["product"].to_numpy().copy(), dtype=torch.long),
    )
    return batch, histories
