import pytest
import torch

from kgrec.evaluation.recommendation import evaluate
from kgrec.fusion.data import evaluation_examples, training_examples
from kgrec.fusion.models import FusedConfig, FusedRecommender, Recommender, TextZeroShot
from kgrec.fusion.registry import MODEL_NAMES, ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit


@pytest.fixture(scope="module")
def text_features(tiny_snapshot):
    return torch.randn(tiny_snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_contract(name, tiny_snapshot, text_features):
    model = build_model(name, ModelInputs.from_snapshot(tiny_snapshot, text_features), FusedConfig(graph_dim=8))
    model.set_graph(tiny_snapshot.message_passing("train"))
    batch = training_examples(tiny_snapshot, max_history=5)[:7]
    model.eval()
    scores = model.score_all(batch)
    assert scores.shape == (7, tiny_snapshot.num_products) and torch.isfinite(scores).all()
    picks = torch.randint(0, tiny_snapshot.num_products, (7, 4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.score(batch, picks), scores.gather(1, picks))
    if model.trainable:
        model.train()
        loss = model.loss(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_training_lowers_the_loss(tiny_snapshot, text_features):
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text_features), FusedConfig(graph_dim=8))
    batch = training_examples(tiny_snapshot, max_history=5)
    model.set_graph(tiny_snapshot.message_passing("train"))
    model.train()
    before = float(model.loss(batch))
    history = fit(model, tiny_snapshot, TrainConfig(epochs=15, batch_size=64, lr=1e-2, patience=100, max_history=5), progress=False)
    model.set_graph(tiny_snapshot.message_passing("train"))
    model.train()
    torch.manual_seed(0)
    assert history.losses[-1] < history.losses[0] and float(model.loss(batch)) < before
    assert history.valid == {} and history.best_epoch == 15  # no validators: every epoch, the last weights


def test_validation_keeps_the_best_weights_and_counts_the_untrained_start(tiny_snapshot, text_features):
    from kgrec.evaluation.recommendation import evaluate, ndcg_validator

    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text_features), FusedConfig(graph_dim=8))
    validate = ndcg_validator(tiny_snapshot, "valid", max_history=5)
    history = fit(model, tiny_snapshot, TrainConfig(epochs=6, batch_size=64, lr=1e-2, patience=100, max_history=5),
                  progress=False, validators={"rec": validate})
    scores = history.valid_ndcg
    assert len(scores) == 7  # the untrained model, then every epoch
    assert history.best_epoch == max(range(7), key=lambda i: (scores[i], -i))
    assert scores[history.best_epoch] >= scores[0]
    assert evaluate(model, tiny_snapshot, "valid", (10,), 5).metrics["ndcg@10"] == pytest.approx(max(scores))


@pytest.mark.parametrize("use_graph, gate_bias", [(False, 3.0), (True, 3.0), (True, 0.0)])
def test_untrained_model_ranks_like_zero_shot(tiny_snapshot, text_features, use_graph, gate_bias):
    """Adapters and the graph branch start at zero, so the untrained model is the zero-shot baseline."""
    cfg = FusedConfig(use_graph=use_graph, max_history=5, recency_decay=0.6, graph_dim=8, gate_bias=gate_bias)
    fused = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products, cfg, text_features=text_features,
        num_nodes=tiny_snapshot.num_nodes, edge_types=list(tiny_snapshot.message_passing("test").edge_types),
    ).eval()
    fused.set_graph(tiny_snapshot.message_passing("test"))
    zero = TextZeroShot(tiny_snapshot.num_users, text_features, decay=0.6)
    batch, _ = evaluation_examples(tiny_snapshot, "test", max_history=5)
    assert torch.allclose(fused.score_all(batch) * cfg.temperature, zero.score_all(batch), atol=1e-5)


def test_supervision_edges_are_hidden_in_training(tiny_snapshot, text_features):
    model = build_model("graph-only", ModelInputs.from_snapshot(tiny_snapshot, None), FusedConfig(graph_dim=8))
    model.set_graph(tiny_snapshot.message_passing("train"))
    full = model.edge_index_dict[("user", "interacted", "product")]
    batch = training_examples(tiny_snapshot)[:5]
    edges = model._edges_without(batch)
    kept = edges[("user", "interacted", "product")]
    hidden = set(zip(batch.users.tolist(), batch.targets.tolist()))
    assert not hidden & set(map(tuple, kept.T.tolist()))
    removed = full.shape[1] - kept.shape[1]
    assert removed == sum(1 for pair in map(tuple, full.T.tolist()) if pair in hidden) > 0
    assert torch.equal(edges[("product", "rev_interacted", "user")], kept.flip(0))


class _Oracle(Recommender):
    """Scores history products highest, then the true target: exclusion must drop the history."""

    def __init__(self, snapshot, split):
        super().__init__(snapshot.num_users, snapshot.num_products)
        part = snapshot.interactions[snapshot.interactions.split == split]
        self.target = dict(zip(part.user, part["product"]))

    def score_all(self, batch):
        scores = torch.zeros(len(batch), self.num_products)
        rows = torch.arange(len(batch)).unsqueeze(1).expand_as(batch.history)
        valid = batch.history >= 0
        scores[rows[valid], batch.history[valid]] = 100.0
        scores[torch.arange(len(batch)), torch.tensor([self.target[int(u)] for u in batch.users])] = 50.0
        return scores


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluation_excludes_history_and_finds_the_target(tiny_snapshot, split):
    result = evaluate(_Oracle(tiny_snapshot, split), tiny_snapshot, split, ks=(1, 10))
    inter = tiny_snapshot.interactions
    # a target the user already bought before is excluded with the history and cannot be hit
    repeats = sum(
        int(t) in set(inter[(inter.user == u) & (inter.split.isin(["train"] if split == "valid" else ["train", "valid"]))]["product"])
        for u, t in zip(result.users.tolist(), result.targets.tolist())
    )
    expected = 1 - repeats / len(result.users)
    assert result.metrics["ndcg@1"] == pytest.approx(expected)
    assert result.metrics["recall@10"] == pytest.approx(expected)
    assert result.topk.shape == (tiny_snapshot.num_users, 10)
