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

from kgrec.evaluation.recommendation import evaluate, ndcg_validator
from kgrec.fusion.models import FusedConfig, ModelInputs, Recommender
from kgrec.fusion.registry import BPR_TRAINING, MODEL_NAMES, MODELS, SOFTMAX_TRAINING, build_model
from kgrec.fusion.train import TrainConfig, TrainHistory, fit
from kgrec.kg.export import GraphSnapshot


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
    train: TrainConfig = field(default_factory=lambda: replace(SOFTMAX_TRAINING))
    bpr_train: TrainConfig = field(default_factory=lambda: replace(BPR_TRAINING))
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
        model = build_model(name, ModelInputs.from_snapshot(snapshot, text_features), config.fused)
        train_cfg = config.bpr_train if MODELS[name].training is BPR_TRAINING else config.train
        validators = {"rec": ndcg_validator(snapshot, "valid", max_history=train_cfg.max_history)}
        history = fit(model, snapshot, train_cfg, progress=progress, validators=validators)
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
                best_epoch=history.best_epoch,
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
