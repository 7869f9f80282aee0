"""Training and evaluation examples built from a :class:`~kgrec.kg.export.GraphSnapshot`.

An example is a user, the products the user interacted with before the target
(the history, most recent last, at most ``max_history``), and the target product.
Histories are padded on the left with ``-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kgrec.kg.export import GraphSnapshot


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

    def to(self, device: torch.device | str) -> RecBatch:
        return RecBatch(self.users.to(device), self.history.to(device), self.targets.to(device))

    def __getitem__(self, index: torch.Tensor | slice) -> RecBatch:
        return RecBatch(self.users[index], self.history[index], self.targets[index])


@dataclass
class SearchBatch:
    """A batch of search examples: queries with graded judged products.

    Attributes:
        queries: ``[B, d_text]`` query text vectors from the (frozen) text encoder.
        products: ``[B, J]`` judged product indices, ``-1`` = padding.
        grades: ``[B, J]`` graded relevance ``>= 0`` (0 = judged not relevant; padding 0).
        users: ``[B]`` user indices for personalised search, ``-1`` = anonymous.
        history: ``[B, L]`` the user's products before the query (most recent last, ``-1`` pad).
        query_nodes: ``[B]`` index of the query's node in the message-passing graph
            (``-1`` = not in the graph); its judged edges are hidden while it is trained on.
        texts: the B query strings (a trainable text tower re-encodes them), or None.
    """

    queries: torch.Tensor
    products: torch.Tensor
    grades: torch.Tensor
    users: torch.Tensor
    history: torch.Tensor
    query_nodes: torch.Tensor
    texts: list[str] | None = None

    def __len__(self) -> int:
        return int(self.queries.shape[0])

    def to(self, device: torch.device | str) -> SearchBatch:
        return SearchBatch(
            self.queries.to(device), self.products.to(device), self.grades.to(device), self.users.to(device),
            self.history.to(device), self.query_nodes.to(device), self.texts,
        )

    def __getitem__(self, index: torch.Tensor | slice) -> SearchBatch:
        texts = None
        if self.texts is not None:
            rows = range(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index).tolist()
            texts = [self.texts[i] for i in rows]
        return SearchBatch(
            self.queries[index], self.products[index], self.grades[index], self.users[index],
            self.history[index], self.query_nodes[index], texts,
        )


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


def training_sequences(snapshot: GraphSnapshot, max_history: int = 50) -> RecBatch:
    """One example per window of a user's train sequence, for models that score every position
    (``FusedRecommender(sequence_training=True)``): the history is the window but its last item,
    which is the target. A sequence longer than ``max_history + 1`` is cut into windows from its
    end (each item is a prediction target exactly once); windows of one item are dropped. Same
    predictions as :func:`training_examples`, whose examples are this function's prefixes."""
    train = snapshot.interactions[snapshot.interactions["split"] == "train"]
    users, targets, histories = [], [], []
    for user, products in train.groupby("user", sort=True)["product"]:
        seq = products.to_numpy()
        for end in range(len(seq), 1, -max_history):
            window = seq[max(0, end - max_history - 1) : end]
            if len(window) < 2:
                continue
            users.append(user)
            targets.append(window[-1])
            histories.append(window[:-1])
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
