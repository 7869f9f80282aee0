"""Train and evaluate the fused model and its baselines side by side, on one split.

Every model gets the same snapshot, the same split, the same full-ranking
evaluator and the same trainer (with per-model learning rates and epoch
budgets, recorded in the results).
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from kgrec.evaluation.recommendation import evaluate
from kgrec.fusion.models import (
    FusedConfig,
    FusedRecommender,
    LightGCNRecommender,
    MatrixFactorization,
    Popularity,
    Recommender,
    TextZeroShot,
)
from kgrec.fusion.train import TrainConfig, TrainHistory, fit
from kgrec.kg.export import GraphSnapshot

#: Models in the order of the results table; ``fused`` last.
MODEL_NAMES = ("popularity", "mf-bpr", "lightgcn", "text-zero-shot", "text-only", "graph-only", "fused")


@dataclass
class BenchmarkConfig:
    """What :func:`run_benchmark` trains and how.

    Attributes:
        models: names from :data:`MODEL_NAMES`.
        train: trainer settings for the softmax models (text-only, graph-only, fused).
        bpr_train: trainer settings for the BPR baselines (mf-bpr, lightgcn).
        fused: architecture of the text/graph models.
        ks: metric cut-offs.
    """

    models: tuple[str, ...] = MODEL_NAMES
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, batch_size=2048, lr=3e-3, patience=2))
    bpr_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, batch_size=4096, lr=1e-2, patience=3))
    fused: FusedConfig = field(default_factory=FusedConfig)
    ks: tuple[int, ...] = (10, 20)

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {list(MODEL_NAMES)}")


@dataclass
class ModelResult:
    """One row of the comparison."""

    model: str
    valid: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    epochs: int
    best_epoch: int
    parameters: int
    config: dict


def build_model(name: str, snapshot: GraphSnapshot, text_features: torch.Tensor | None, fused: FusedConfig) -> Recommender:
    """Instantiate a model of :data:`MODEL_NAMES` for ``snapshot``."""
    users, products = snapshot.num_users, snapshot.num_products
    edge_types = list(snapshot.message_passing("train").edge_types)
    if name == "popularity":
        return Popularity(users, products)
    if name == "mf-bpr":
        return MatrixFactorization(users, products)
    if name == "lightgcn":
        return LightGCNRecommender(users, products)
    if name == "text-zero-shot":
        return TextZeroShot(users, _need_text(text_features, name), fused.recency_decay)
    variants = {"text-only": (True, False), "graph-only": (False, True), "fused": (True, True)}
    if name in variants:
        use_text, use_graph = variants[name]
        model = FusedRecommender(
            users, products, replace(fused, use_text=use_text, use_graph=use_graph),
            text_features=_need_text(text_features, name) if use_text else None,
            num_nodes=snapshot.num_nodes, edge_types=edge_types,
        )
        model.name = name
        return model
    raise ValueError(f"unknown model {name!r}; choose from {list(MODEL_NAMES)}")


def _need_text(text_features: torch.Tensor | None, name: str) -> torch.Tensor:
    if text_features is None:
        raise ValueError(f"model {name!r} needs product text features")
    return text_features


def run_benchmark(
    snapshot: GraphSnapshot,
    text_features: torch.Tensor | None,
    config: BenchmarkConfig,
    progress: bool = True,
    evaluate_test: Callable[[Recommender, TrainConfig], dict[str, float]] | None = None,
    on_trained: Callable[[str, Recommender, TrainConfig, TrainHistory], None] | None = None,
) -> list[ModelResult]:
    """Train every model of ``config.models`` and evaluate it on valid and test.

    Args:
        evaluate_test: computes the test metrics of a trained model (default: :func:`evaluate`
            on ``"test"`` with ``config.ks``); the report passes a more detailed evaluator.
        on_trained: called with each trained model, e.g. to keep histories or extra results.
    """
    results = []
    for name in config.models:
        model = build_model(name, snapshot, text_features, config.fused)
        train_cfg = config.bpr_train if name in ("mf-bpr", "lightgcn") else config.train
        history = fit(model, snapshot, train_cfg, progress=progress)
        valid = evaluate(model, snapshot, "valid", config.ks, train_cfg.max_history).metrics
        if evaluate_test is None:
            test = evaluate(model, snapshot, "test", config.ks, train_cfg.max_history).metrics
        else:
            test = evaluate_test(model, train_cfg)
        results.append(
            ModelResult(
                model=name,
                valid=valid,
                test=test,
                train_seconds=round(history.seconds, 1),
                epochs=len(history.losses),
                best_epoch=history.best_epoch + 1,
                parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                config={"model": model.config_dict(), "train": asdict(train_cfg)},
            )
        )
        if on_trained is not None:
            on_trained(name, model, train_cfg, history)
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"{name}: test ndcg@10 {test['ndcg@10']:.4f}  ({history.seconds:.0f} s)")
    return results


def write_results(results: list[ModelResult], path: str | Path, extra: dict | None = None) -> None:
    """Write the comparison as JSON (with environment facts)."""
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        **(extra or {}),
        "results": [asdict(r) for r in results],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def results_markdown(results: list[ModelResult], split: str = "test", ks: tuple[int, ...] = (10, 20)) -> str:
    """The comparison as a markdown table (best value of each column in bold)."""
    columns = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")] + [f"mrr@{max(ks)}"]
    rows = [(r.model, [getattr(r, split)[c] for c in columns], r.train_seconds) for r in results]
    best = [max(v[i] for _, v, _ in rows) for i in range(len(columns))]
    lines = ["| model | " + " | ".join(columns) + " | train s |", "|---" * (len(columns) + 2) + "|"]
    for name, values, secs in rows:
        cells = [f"**{v:.4f}**" if v == b else f"{v:.4f}" for v, b in zip(values, best)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)
