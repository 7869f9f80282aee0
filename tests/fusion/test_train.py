"""The trainer (kgrec.fusion.train.fit): what it keeps, when it stops, and that it repeats itself."""
from __future__ import annotations

import pytest
import torch

from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit


@pytest.fixture(scope="module")
def text_features(tiny_snapshot):
    return torch.randn(tiny_snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))


def _scripted(scores):
    """A validator that returns ``scores`` in turn (the untrained model first)."""
    calls = iter(scores)
    return lambda model: next(calls)


@pytest.mark.parametrize(("scores", "patience", "epochs_run", "best"), [
    # the first epochs dip below the untrained start: training goes on and finds a better epoch
    ([0.5, 0.1, 0.2, 0.3, 0.6, 0.55, 0.5], 2, 6, 4),
    # never better than the start: the untrained weights are kept, patience counts trained epochs
    ([0.5, 0.1, 0.3, 0.2, 0.25], 2, 4, 0),
    ([0.1, 0.2, 0.2, 0.2], 2, 3, 1),  # ties are not improvements
])
def test_patience_counts_from_the_best_trained_epoch(tiny_snapshot, text_features, scores, patience, epochs_run, best):
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text_features), FusedConfig(graph_dim=8))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, tiny_snapshot, TrainConfig(epochs=10, batch_size=64, lr=1e-2, patience=patience, max_history=5),
                  progress=False, validators={"rec": _scripted(scores)})
    assert len(history.losses) == epochs_run and history.best_epoch == best
    assert history.valid_ndcg == scores[: epochs_run + 1]
    if best == 0:
        assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("overrides", [{}, {"user_tower": "transformer", "sequence_training": True, "graph_dropout": 0.2}])
def test_same_seed_same_weights_and_scores(tiny_snapshot, text_features, overrides):
    torch.manual_seed(123)  # whatever ran before: the seed given to build_model decides the start
    from kgrec.evaluation.recommendation import evaluate, ndcg_validator

    def run():
        model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text_features),
                            FusedConfig(graph_dim=8, max_history=5, tower_dim=8, **overrides), seed=7)
        history = fit(model, tiny_snapshot, TrainConfig(epochs=3, batch_size=16, lr=1e-2, patience=5, max_history=5, seed=7),
                      progress=False, validators={"rec": ndcg_validator(tiny_snapshot, max_history=5)})
        return model, history, evaluate(model, tiny_snapshot, "test", (10,), 5).metrics

    first, first_history, first_metrics = run()
    torch.rand(5)  # move the global generator on
    second, second_history, second_metrics = run()
    assert first_history.losses == second_history.losses and first_history.valid == second_history.valid
    assert first_metrics == second_metrics
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_time_limit_stops_within_the_epoch(tiny_snapshot, text_features):
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text_features), FusedConfig(graph_dim=8), seed=0)
    history = fit(model, tiny_snapshot, TrainConfig(epochs=5, batch_size=4, lr=1e-2, max_history=5, time_limit=0.0),
                  progress=False, validators={"rec": _scripted([0.1, 0.2, 0.3])})
    # one step, then the cut epoch is validated and training ends
    assert len(history.losses) == 1 and history.valid_ndcg == [0.1, 0.2] and history.best_epoch == 1
    assert history.examples_per_second > 0
