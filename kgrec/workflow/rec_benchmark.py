"""Train and evaluate the fused model and its baselines side by side, on one split.

Every model gets the same snapshot, the same split, the same full-ranking
evaluator and the same trainer (with per-model learning rates and epoch
budgets, recorded in the results).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from kgrec.evaluation.recommendation import evaluate, ndcg_validator
from kgrec.evaluation.results import ModelResult
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
