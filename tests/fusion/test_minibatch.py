"""Tests for kgrec.fusion.minibatch.SampledFusedLoss: sampled subgraph + sampled softmax.

The reference is ``FusedRecommender.loss`` (full graph, softmax over every product) in
train mode with dropout 0, which hides the batch's supervision edges like the sampled loss.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kgrec.fusion.data import training_examples
from kgrec.fusion.minibatch import SampledFusedLoss
from kgrec.fusion.models import INTERACTION_EDGE, REV_INTERACTION_EDGE, FusedConfig, FusedRecommender, Popularity

VARIANTS = {
    "fused": {},
    "graph-only": {"use_text": False},
    "graph-text-input": {"graph_text_input": True},
    "user-graph": {"user_graph": True},
}


@pytest.fixture(scope="module")
def graph(tiny_snapshot):
    return tiny_snapshot.message_passing("train")


@pytest.fixture(scope="module")
def examples(tiny_snapshot):
    return training_examples(tiny_snapshot, max_history=5)


def make_model(snapshot, graph, perturb: bool = True, seed: int = 0, **overrides) -> FusedRecommender:
    """A small fused model with dropout 0; ``perturb`` moves the zero-initialised adapters,
    projections and gate off zero so every branch shapes the loss."""
    torch.manual_seed(seed)
    cfg = FusedConfig(graph_dim=8, dropout=0.0, max_history=5, **overrides)
    text = torch.randn(snapshot.num_products, 16, generator=torch.Generator().manual_seed(seed))
    model = FusedRecommender(
        snapshot.num_users, snapshot.num_products, cfg, text_features=text if cfg.use_text else None,
        num_nodes=snapshot.num_nodes, edge_types=list(graph.edge_types),
    )
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    model.set_graph(graph)
    return model.train()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_all_products_and_all_neighbours_equal_the_full_loss(tiny_snapshot, graph, examples, variant):
    """Candidates = every product and fanouts -1: the sampled loss IS the full-batch loss."""
    model = make_model(tiny_snapshot, graph, **VARIANTS[variant])
    batch = examples[torch.arange(0, len(examples), 3)]
    loss_fn = SampledFusedLoss(model, graph, fanouts=(-1, -1), num_negatives=tiny_snapshot.num_products)
    sampled, full = loss_fn(batch), model.loss(batch)
    assert torch.equal(loss_fn.last_candidates, torch.arange(tiny_snapshot.num_products))
    assert torch.allclose(sampled, full, rtol=1e-5, atol=1e-5), (float(sampled), float(full))


def test_candidate_subset_is_the_full_logits_restricted(tiny_snapshot, graph, examples):
    """With fewer candidates, the loss is the softmax over the full logits' candidate columns."""
    model = make_model(tiny_snapshot, graph)
    batch = examples[:6]
    loss_fn = SampledFusedLoss(model, graph, fanouts=(-1, -1), num_negatives=3, seed=4)
    sampled = loss_fn(batch)
    cand = loss_fn.last_candidates
    needed = set(batch.targets.tolist()) | set(batch.history[batch.history >= 0].tolist())
    assert needed <= set(cand.tolist()) and cand.numel() < tiny_snapshot.num_products
    logits = model._logits(batch)[:, cand]
    expected = F.cross_entropy(logits, torch.searchsorted(cand, batch.targets))
    assert torch.allclose(sampled, expected, rtol=1e-5, atol=1e-5)


def test_supervision_edges_are_not_in_the_subgraph(tiny_snapshot, graph, examples):
    model = make_model(tiny_snapshot, graph)
    batch = examples[:8]
    loss_fn = SampledFusedLoss(model, graph, fanouts=(-1, -1), num_negatives=4)
    loss_fn(batch)
    sub = loss_fn.last_subgraph
    hidden = set(zip(batch.users.tolist(), batch.targets.tolist()))
    inter = set(map(tuple, graph[INTERACTION_EDGE].edge_index.T.tolist()))
    assert hidden <= inter  # the batch's targets are train edges of the message-passing graph
    forward = set(map(tuple, sub.global_edge_index(INTERACTION_EDGE).T.tolist()))
    backward = {(u, p) for p, u in sub.global_edge_index(REV_INTERACTION_EDGE).T.tolist()}
    assert not hidden & forward and not hidden & backward
    # targets are seeds: all their other in-edges are there (value check of what was removed)
    for target in set(batch.targets.tolist()):
        users_of_target = {u for u, p in forward if p == target}
        assert users_of_target == {u for u, p in inter if p == target} - {u for u, p in hidden if p == target}


def test_gradients_reach_graph_text_adapter_and_gate(tiny_snapshot, graph, examples):
    model = make_model(tiny_snapshot, graph)
    loss_fn = SampledFusedLoss(model, graph, fanouts=(3, 3), num_negatives=6)
    loss = loss_fn(examples[:10])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name in ("graph.embedding.product.weight", "graph.convs.0.convs", "graph.convs.1.convs",
                 "graph_proj.weight", "text_adapter.weight", "gate.weight", "recency"):
        # (the last layer's convs into users / categories / brands feed nothing: no gradient)
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name) and p.grad is not None]
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # only sampled products' ID embeddings get a gradient
    touched = torch.nonzero(model.graph.embedding["product"].weight.grad.abs().sum(1)).squeeze(1)
    assert set(touched.tolist()) <= set(loss_fn.last_subgraph.n_id["product"].tolist())


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_with_the_sampled_loss_lowers_the_full_loss(tiny_snapshot, graph, examples, one_thread):
    model = make_model(tiny_snapshot, graph, perturb=False)
    loss_fn = SampledFusedLoss(model, graph, fanouts=(3, 3), num_negatives=8, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(model.loss(examples))
    order = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = examples[torch.randperm(len(examples), generator=order)[:16]]
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.loss(examples))
    assert after < 0.8 * before, (before, after)


def test_same_seed_same_loss(tiny_snapshot, graph, examples):
    model = make_model(tiny_snapshot, graph)
    first = [float(SampledFusedLoss(model, graph, (2, 2), 5, seed=7)(examples[:9]).detach()) for _ in range(2)]
    other = float(SampledFusedLoss(model, graph, (2, 2), 5, seed=8)(examples[:9]).detach())
    assert first[0] == first[1] and other != first[0]


def test_bad_input_is_named(tiny_snapshot, graph, examples):
    with pytest.raises(ValueError, match="use_graph=False"):
        SampledFusedLoss(make_model(tiny_snapshot, graph, use_graph=False), graph)
    with pytest.raises(ValueError, match="3 hops.*2 layers"):
        SampledFusedLoss(make_model(tiny_snapshot, graph), graph, fanouts=(5, 5, 5))
    with pytest.raises(TypeError, match="Popularity"):
        SampledFusedLoss(Popularity(tiny_snapshot.num_users, tiny_snapshot.num_products), graph)
    loss_fn = SampledFusedLoss(make_model(tiny_snapshot, graph), graph)
    bad = examples[:2]
    bad.targets = torch.tensor([0, -1])
    with pytest.raises(ValueError, match="targets"):
        loss_fn(bad)


def test_set_graph_switches_the_sampled_graph(tiny_snapshot, graph, examples):
    model = make_model(tiny_snapshot, graph)
    loss_fn = SampledFusedLoss(model, graph, fanouts=(-1, -1), num_negatives=tiny_snapshot.num_products)
    test_graph = tiny_snapshot.message_passing("test")
    loss_fn.set_graph(test_graph)
    model.set_graph(test_graph)
    assert torch.allclose(loss_fn(examples[:8]), model.loss(examples[:8]), rtol=1e-5, atol=1e-5)


def test_fit_trains_with_neighbour_sampling(tiny_snapshot):
    """The trainer's ``neighbor_sampling`` option runs SampledFusedLoss end to end."""
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import ModelInputs, build_model
    from kgrec.fusion.train import TrainConfig, fit

    text = torch.randn(tiny_snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8, max_history=5))
    history = fit(model, tiny_snapshot, TrainConfig(epochs=4, batch_size=8, lr=1e-2, patience=4, max_history=5,
                                                     neighbor_sampling=(5, 5), num_negatives=8), progress=False)
    assert len(history.losses) == 4 and history.losses[-1] < history.losses[0]
    from kgrec.fusion.train import SearchTask
    from kgrec.search.examples import category_path_examples

    examples = category_path_examples(tiny_snapshot, "valid", ["q"] * tiny_snapshot.num_products, text, 5)
    with pytest.raises(ValueError, match="one process"):
        fit(model, tiny_snapshot, TrainConfig(epochs=1, neighbor_sampling=(5, 5)), progress=False,
            search=SearchTask(train=examples))
