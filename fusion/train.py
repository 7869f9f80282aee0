"""One trainer for every :class:`~fusion.models.Recommender`.

Minibatches of training examples (:func:`fusion.data.training_examples`), Adam,
validation NDCG@10 after each epoch, early stopping with patience, and the best
epoch's weights restored at the end — the checkpoint that gets tested.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from fusion.data import training_examples
from fusion.evaluate import evaluate
from fusion.models import Recommender
from kg.export import GraphSnapshot


@dataclass
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: maximum epochs (default 30).
        batch_size: examples per step (default 512).
        lr: Adam learning rate (default 1e-3).
        weight_decay: Adam weight decay (default 0).
        patience: epochs without a better validation NDCG@10 before stopping (default 3).
        max_history: history length given to models (default 50).
        seed: seeds torch, numpy and random (default 0).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        time_limit: stop after this many seconds of training (None = no limit).
    """

    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3
    max_history: int = 50
    seed: int = 0
    device: str = "auto"
    time_limit: float | None = None


@dataclass
class TrainHistory:
    """What happened during :func:`fit`."""

    losses: list[float] = field(default_factory=list)
    valid_ndcg: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: Recommender, snapshot: GraphSnapshot, config: TrainConfig, progress: bool = True) -> TrainHistory:
    """Train ``model`` on the train split; keep the weights with the best validation NDCG@10."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    history = TrainHistory()
    train_graph = snapshot.message_passing("train")
    if not model.trainable:
        model.set_graph(train_graph)
        return history

    examples = training_examples(snapshot, config.max_history)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_state, best_score, stale = None, -1.0, 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.set_graph(train_graph)
        model.train()
        order = torch.randperm(len(examples))
        total, steps = 0.0, 0
        bar = tqdm(range(0, len(examples), config.batch_size), desc=f"{model.name} epoch {epoch + 1}", leave=False, disable=not progress)
        for begin in bar:
            batch = examples[order[begin : begin + config.batch_size]].to(device)
            loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        history.losses.append(total / max(steps, 1))
        score = evaluate(model, snapshot, "valid", ks=(10,), max_history=config.max_history).metrics["ndcg@10"]
        history.valid_ndcg.append(score)
        if progress:
            tqdm.write(f"{model.name} epoch {epoch + 1}: loss {history.losses[-1]:.4f}  valid ndcg@10 {score:.4f}")
        if score > best_score:
            best_score, stale, history.best_epoch = score, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= config.patience:
            break
        if config.time_limit is not None and time.perf_counter() - start > config.time_limit:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    history.seconds = time.perf_counter() - start
    model.set_graph(train_graph)
    return history
