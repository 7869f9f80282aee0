"""One trainer for every :class:`~kgrec.fusion.models.Recommender`.

Minibatches of training examples (:func:`kgrec.fusion.data.training_examples`), Adam,
validation before training and after each epoch, early stopping with patience, and the
best weights restored at the end — the checkpoint that gets tested. The untrained model
competes too, so training never ends worse on validation than it started.

Validation is injected: ``validators`` maps a name to a :data:`Validator` (a function of
the model, higher is better; :func:`kgrec.evaluation.recommendation.ndcg_validator` and
:func:`kgrec.evaluation.search.search_validator` build the usual ones). The trainer depends
on no evaluation code; without validators it trains every epoch and keeps the last weights.

The same loop runs

* multi-task: with a :class:`SearchTask`, each step adds a batch of graded search examples
  to the recommendation batch (one shared product tower, ``model(rec_batch, search_batch,
  weight)``); the validation score is the mean over the validators;
* in mixed precision: ``precision="bf16"`` (default on CUDA) runs the forward pass
  under ``torch.autocast``;
* distributed: launched by ``torchrun`` (:func:`kgrec.fusion.distributed.init_distributed`),
  the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` and
  every rank trains on its own shard of each epoch's permutation.
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from kgrec.fusion.data import SearchBatch, training_examples, training_sequences
from kgrec.fusion.models import Recommender
from kgrec.kg.export import GraphSnapshot

#: Scores a model under whatever graph it sets itself (higher is better), e.g. validation NDCG@10.
Validator = Callable[[Recommender], float]


@dataclass
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: maximum epochs (default 30).
        batch_size: examples per step (default 512); for a model that trains on sequences
            (``trains_on_sequences``), about this many predictions per step.
        lr: Adam learning rate (default 1e-3).
        weight_decay: Adam weight decay (default 0).
        patience: epochs without a better validation score than the best trained epoch before
            stopping (default 3). The untrained start competes for the kept weights but not for
            patience: a model whose first epochs dip below its starting point (the fused model's
            gate and adapters reorganise) keeps training.
        max_history: history length given to models (default 50).
        seed: seeds torch, numpy and random (default 0).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        time_limit: stop after this many seconds (None = no limit), checked after every step:
            the epoch in progress ends there and is validated like a full one (a distributed
            run checks at the end of each epoch).
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16".
        neighbor_sampling: fan-outs per GNN layer for mini-batch training of the fused model
            over sampled subgraphs (:class:`kgrec.fusion.minibatch.SampledFusedLoss`); None
            (default) = full-batch message passing.
        num_negatives: uniform negative products per step with ``neighbor_sampling`` (default 1024).
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
    precision: str = "auto"
    neighbor_sampling: tuple[int, ...] | None = None
    num_negatives: int = 1024

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.neighbor_sampling is not None:
            self.neighbor_sampling = tuple(int(f) for f in self.neighbor_sampling)


@dataclass
class SearchTask:
    """Graded search examples trained jointly with recommendation (:func:`fit`).

    Attributes:
        train: the training examples.
        weight: weight of the search loss next to the recommendation loss (default 1.0).
        batch_size: search examples per step (default 256).
        graph: the message-passing graph to train with instead of the snapshot's (e.g.
            :func:`kgrec.search.examples.search_graph`); None = the snapshot's train graph.
    """

    train: SearchBatch
    weight: float = 1.0
    batch_size: int = 256
    graph: HeteroData | None = None


@dataclass
class TrainHistory:
    """What happened during :func:`fit`.

    Attributes:
        losses: mean training loss of each epoch.
        valid: validator name -> its score before training (index 0), then after each epoch.
        best_epoch: epochs of training behind the kept weights (0 = the untrained start).
        seconds: wall seconds in all; ``train_seconds`` in training steps alone, which
            ``examples_per_second`` divides by.
    """

    losses: list[float] = field(default_factory=list)
    valid: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    examples_per_second: float = 0.0

    @property
    def valid_ndcg(self) -> list[float]:
        """Scores of the ``"rec"`` validator (empty without one)."""
        return self.valid.get("rec", [])

    @property
    def valid_search_ndcg(self) -> list[float]:
        """Scores of the ``"search"`` validator (empty without one)."""
        return self.valid.get("search", [])

    def best(self, name: str) -> float | None:
        """The validator's score of the kept weights (None without that validator)."""
        scores = self.valid.get(name)
        return scores[self.best_epoch] if scores else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parameter_groups(model: Recommender, lr: float) -> list[dict]:
    """Trainable parameters; a fine-tuned text tower gets its own learning rate
    (``text_tower.config.learning_rate()``: BERT weights want a far smaller step)."""
    tower = getattr(model, "text_tower", None)
    tower_ids = {id(p) for p in tower.parameters()} if tower is not None else set()
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in tower_ids]
    groups = [{"params": rest, "lr": lr}]
    if tower is not None:
        trained = [p for p in tower.parameters() if p.requires_grad]
        if trained:
            groups.append({"params": trained, "lr": tower.config.learning_rate()})
    return groups


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None = full precision)."""
    if config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def fit(
    model: Recommender,
    snapshot: GraphSnapshot,
    config: TrainConfig,
    progress: bool = True,
    search: SearchTask | None = None,
    validators: Mapping[str, Validator] | None = None,
    rec: bool = True,
) -> TrainHistory:
    """Train ``model`` on the train split; keep the weights with the best validation score.

    Args:
        search: graded search examples trained jointly (multi-task), or alone when the
            snapshot has no interactions to learn from.
        validators: name -> :data:`Validator`; the validation score is their mean, taken
            before training and after each epoch. None or empty: no early stopping, the
            last epoch's weights are kept.
        rec: train recommendation on the snapshot's train interactions (default True; False
            trains ``search`` alone on a snapshot that also has interactions).
    """
    from kgrec.fusion.distributed import rank_and_world

    seed_everything(config.seed)
    device = resolve_device(config.device)
    rank, world = rank_and_world()
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    model.to(device)
    history = TrainHistory()
    train_graph = search.graph if search is not None and search.graph is not None else snapshot.message_passing("train")
    if not model.trainable:
        model.set_graph(train_graph)
        return history

    sequences = bool(getattr(model, "trains_on_sequences", False)) and search is None
    if sequences:  # one example per user's sequence, scored at every position
        examples = training_sequences(snapshot, config.max_history)
        predictions = int((examples.history >= 0).sum())
        batch_size = max(1, round(config.batch_size * len(examples) / max(predictions, 1)))
    else:
        examples = training_examples(snapshot, config.max_history)
        batch_size = config.batch_size
    has_rec = rec and len(examples) > 0
    if not has_rec and search is None:
        raise ValueError("nothing to train on: the snapshot has no train interactions after a user's first "
                         "and no search task was given")
    step_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             find_unused_parameters=True)
    loss_fn = None
    if config.neighbor_sampling is not None:
        from kgrec.fusion.minibatch import SampledFusedLoss
        from kgrec.fusion.models import FusedRecommender

        if search is not None or world > 1 or sequences:
            raise ValueError("neighbor_sampling trains recommendation only, in one process, one example per interaction")
        if not isinstance(model, FusedRecommender):
            raise ValueError(f"neighbor_sampling trains the fused model only, not {model.name!r}")
        loss_fn = SampledFusedLoss(model, train_graph, config.neighbor_sampling, config.num_negatives, seed=config.seed)
    amp = autocast_dtype(config, device)
    optimizer = torch.optim.Adam(parameter_groups(model, config.lr), lr=config.lr, weight_decay=config.weight_decay)
    validators = dict(validators or {})
    best_state, best_score, stale = None, float("-inf"), 0
    best_trained = float("-inf")  # patience counts from the best trained epoch, not the untrained start
    start = time.perf_counter()
    if validators:
        best_score = _validate(model, validators, history, train_graph, epoch=0, progress=progress and rank == 0)
        best_state = copy.deepcopy(model.state_dict())
    seen_examples = 0
    generator = torch.Generator().manual_seed(config.seed)  # the same permutation on every rank
    tuned_text = getattr(model, "text_tower", None) is not None and getattr(model.text_tower, "trainable", False)
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        model.set_graph(train_graph)
        if loss_fn is not None:
            loss_fn.set_graph(train_graph)
        model.train()
        nothing = torch.empty(0, dtype=torch.long)
        rec_order = torch.randperm(len(examples), generator=generator)[rank::world] if has_rec else nothing
        search_order = torch.randperm(len(search.train), generator=generator)[rank::world] if search is not None else nothing
        if has_rec:
            steps = len(rec_order) // batch_size + (1 if len(rec_order) % batch_size and world == 1 else 0)
        else:
            steps = max(len(search_order) // search.batch_size, 1) if search is not None else 0
        if world > 1:
            steps = min(steps, _min_over_ranks(steps, device))
        total = 0.0
        bar = tqdm(range(steps), desc=f"{model.name} epoch {epoch + 1}", leave=False, disable=not progress or rank != 0)
        for step in bar:
            batch = examples[rec_order[step * batch_size : (step + 1) * batch_size]].to(device) if has_rec else None
            search_batch = None
            if search is not None:
                begin = (step * search.batch_size) % max(len(search_order), 1)
                search_batch = search.train[search_order[begin : begin + search.batch_size]].to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                if loss_fn is not None and batch is not None:
                    loss = loss_fn(batch)
                elif search is None or search_batch is None:
                    loss = step_model(batch)
                else:
                    loss = step_model(batch, search_batch, search.weight)
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            optimizer.step()
            total += float(loss.detach())
            seen_examples += (len(batch) if batch is not None else 0) + (len(search_batch) if search_batch is not None else 0)
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
            if world == 1 and config.time_limit is not None and time.perf_counter() - start > config.time_limit:
                steps = step + 1  # (ranks of a distributed run stop at the epoch's end, together)
                break
        history.losses.append(total / max(steps, 1))
        history.train_seconds += time.perf_counter() - epoch_start
        if tuned_text:  # products not in a batch still hold the vectors of the epoch's start
            model.eval()
            refresh_text: Callable[..., None] = getattr(model, "refresh_text")  # noqa: B009 (only tuned text towers have it)
            refresh_text(progress=progress and rank == 0)
        out_of_time = config.time_limit is not None and time.perf_counter() - start > config.time_limit
        if not validators:
            if out_of_time:
                break
            continue
        score = _validate(model, validators, history, train_graph, epoch=epoch + 1, progress=progress and rank == 0,
                          loss=history.losses[-1])
        if score > best_score:
            best_score, history.best_epoch = score, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if score > best_trained:
            best_trained, stale = score, 0
        else:
            stale += 1
        if stale >= config.patience or out_of_time:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = len(history.losses)
    history.seconds = time.perf_counter() - start
    history.examples_per_second = seen_examples * world / max(history.train_seconds, 1e-9)
    model.set_graph(train_graph)  # the restored ``text`` buffer was refreshed with the restored tower
    return history


def _validate(model: Recommender, validators: dict[str, Validator], history: TrainHistory, graph: HeteroData,
              epoch: int, progress: bool, loss: float | None = None) -> float:
    """Run every validator, record the scores, return their mean (the model keeps ``graph``)."""
    model.eval()
    scores = {}
    for name, validate in validators.items():
        scores[name] = float(validate(model))
        history.valid.setdefault(name, []).append(scores[name])
    model.set_graph(graph)
    if progress:
        parts = [f"loss {loss:.4f}"] if loss is not None else ["untrained"]
        parts += [f"valid {name} {score:.4f}" for name, score in scores.items()]
        tqdm.write(f"{model.name} epoch {epoch}: " + "  ".join(parts))
    return sum(scores.values()) / len(scores)


def _min_over_ranks(value: int, device: torch.device) -> int:
    """The smallest ``value`` over all ranks (every rank must take the same number of steps)."""
    import torch.distributed as dist

    t = torch.tensor([value], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
