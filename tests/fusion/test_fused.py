"""The fused scorer's towers (kgrec.fusion.models.fused): sequence training, the degree-aware
gate with graph-branch dropout, the relational encoder and the causal user tower behind the
model contract and the artifact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kgrec.fusion.data import RecBatch, evaluation_examples, training_examples, training_sequences
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.models.base import INTERACTION_EDGE
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit

VARIANTS = {
    "transformer": {"user_tower": "transformer"},
    "text-prior": {"text_prior": 0.25, "text_only_below": 2},
    "cold-boost": {"text_prior": 0.1, "cold_text_prior": 0.3, "cold_below": 2},
    "rgcn": {"graph_encoder": "rgcn", "gnn_bases": 2},
    "sequences": {"user_tower": "transformer", "sequence_training": True},
    "recency-sequences": {"sequence_training": True},
}


@pytest.fixture(scope="module")
def text_features(tiny_snapshot):
    return torch.randn(tiny_snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))


def _model(snapshot, text, name="fused", seed=0, **overrides):
    torch.manual_seed(seed)
    config = FusedConfig(graph_dim=8, max_history=5, tower_dim=8, tower_dropout=0.0, dropout=0.0, **overrides)
    model = build_model(name, ModelInputs.from_snapshot(snapshot, text), config)
    model.set_graph(snapshot.message_passing("train"))
    with torch.no_grad():  # leave the zero-initialised starting point, so every branch shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_training_sequences_make_the_same_predictions_as_prefix_examples(tiny_snapshot):
    for max_history in (2, 3, 50):
        prefixes = training_examples(tiny_snapshot, max_history)
        sequences = training_sequences(tiny_snapshot, max_history)
        want = {(int(u), tuple(h[h >= 0].tolist()), int(t)) for u, h, t in zip(prefixes.users, prefixes.history, prefixes.targets)}
        got = set()
        for u, h, t in zip(sequences.users, sequences.history, sequences.targets):
            seq = h[h >= 0].tolist() + [int(t)]
            for j in range(1, len(seq)):  # position j-1 predicts seq[j] from the window before it
                got.add((int(u), tuple(seq[max(0, j - max_history) : j]), seq[j]))
        # a window's first positions see less than max_history items; their longer prefixes live in
        # the previous window's predictions only as far as the window reaches
        assert {(u, t) for u, _, t in got} == {(u, t) for u, _, t in want}
        assert int((sequences.history >= 0).sum()) == len(prefixes)
        if max_history == 50:
            assert got == want and len(sequences) == tiny_snapshot.num_users


@pytest.mark.parametrize("variant", ["transformer", "recency-sequences"])
def test_every_position_is_the_user_vector_of_its_prefix(tiny_snapshot, text_features, variant):
    model = _model(tiny_snapshot, text_features, **VARIANTS[variant]).eval()
    batch = training_sequences(tiny_snapshot, 5)
    with torch.no_grad():
        products, user_nodes = model._towers(None)
        sequence = model._user_sequence(batch, products, user_nodes)
        for j in range(5):
            prefix = batch.history.clone()
            prefix[:, j + 1 :] = -1
            prefix = torch.cat([torch.full((len(batch), 4 - j), -1), prefix[:, : j + 1]], dim=1)  # left-pad again
            keep = batch.history[:, j] >= 0
            alone = model._users(RecBatch(batch.users, prefix, batch.targets), products, user_nodes)
            assert torch.allclose(sequence[keep, j], alone[keep], atol=1e-5), j


def test_sequence_loss_is_the_mean_of_the_prefix_losses(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features, **VARIANTS["sequences"]).eval()  # the full graph for both
    prefixes = training_examples(tiny_snapshot, 5)
    with torch.no_grad():
        sequence_loss = model.loss(training_sequences(tiny_snapshot, 5))
        prefix_loss = F.cross_entropy(model.score_all(prefixes), prefixes.targets)
    assert sequence_loss == pytest.approx(float(prefix_loss), rel=1e-5)


def test_sequence_training_hides_every_predicted_pair(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features, **VARIANTS["sequences"]).train()
    seen = []
    encode = model._encode
    model._encode = lambda edges, text=None: seen.append(edges) or encode(edges, text)
    batch = training_sequences(tiny_snapshot, 5)[:3]
    model.loss(batch).backward()
    visible = set(map(tuple, seen[0][INTERACTION_EDGE].T.tolist()))
    for u, h, t in zip(batch.users.tolist(), batch.history.tolist(), batch.targets.tolist()):
        predicted = [p for p in h if p >= 0][1:] + [t]
        assert not {(u, p) for p in predicted} & visible
        assert (u, [p for p in h if p >= 0][0]) in visible  # the first item is history only


def test_graph_evidence_counts_visible_interactions(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features)
    edges = model.edge_index_dict
    counts = torch.bincount(edges[INTERACTION_EDGE][1], minlength=tiny_snapshot.num_products).float()
    assert torch.allclose(model.graph_evidence(edges, tiny_snapshot.num_products), torch.log1p(counts))
    # a batch's targets leave message passing: their evidence drops in training
    batch = training_examples(tiny_snapshot, 5)[:6]
    hidden = model.graph_evidence(model._edges_without(batch), tiny_snapshot.num_products)
    assert bool((hidden[batch.targets] < torch.log1p(counts)[batch.targets]).all())


def test_degree_gate_reads_the_evidence_and_graph_dropout_leaves_text(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features, graph_dropout=0.5)
    d = model.dim
    with torch.no_grad():  # a gate that trusts the graph in proportion to the evidence
        model.gate.weight.zero_()
        model.gate.weight[:, 2 * d] = -4.0
        model.gate.bias.fill_(3.0)
    text, graph = torch.randn(4, d), torch.randn(4, d)
    evidence = torch.tensor([0.0, 0.5, 2.0, 4.0])
    model.eval()
    torch.set_grad_enabled(False)
    try:
        _check_gate(model, text, graph, evidence)
    finally:
        torch.set_grad_enabled(True)


def _check_gate(model, text, graph, evidence):
    fused = model.fuse(text, graph, evidence)
    text_share = ((fused - graph) / (text - graph)).mean(1)  # g of each row (the same in every dimension)
    assert text_share[0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), abs=1e-4)
    assert bool((text_share.diff() < 0).all())  # more evidence, less text
    assert torch.allclose(model.fuse(text, graph), model.fuse(text, graph, torch.zeros(4)))  # None = no evidence
    # in training, dropped rows lose the graph vector and the evidence: g * text, with g at zero evidence
    model.train()
    torch.manual_seed(1)
    out = model.fuse(text, graph, evidence)
    torch.manual_seed(1)
    dropped = torch.rand(4) < 0.5
    assert 0 < int(dropped.sum()) < 4
    g0 = torch.sigmoid(torch.tensor(3.0))
    assert torch.allclose(out[dropped], g0 * text[dropped], atol=1e-6)
    assert torch.allclose(out[~dropped], fused[~dropped], atol=1e-6)


def test_new_products_are_fused_as_products_without_graph_evidence(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features).eval()
    state = model.serving_state()
    new_text = torch.randn(2, 16)
    neighbours = torch.zeros(2, tiny_snapshot.num_products)
    neighbours[0, 3] = neighbours[1, 7] = 1.0
    grown = model.serving_add_products(state, new_text, neighbours)
    with torch.no_grad():
        t = F.normalize(new_text, dim=-1)
        t = t + model.text_adapter(t)
        want = model.fuse(t, state["product_graph"][[3, 7]], torch.zeros(2))
    assert torch.allclose(grown["products"][-2:], F.normalize(want, dim=-1), atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", ["fused", "graph-only", "text-only"])
def test_variants_keep_the_contract(tiny_snapshot, text_features, variant, name):
    model = _model(tiny_snapshot, text_features, name, **VARIANTS[variant])
    batch = training_examples(tiny_snapshot, 5)[:7]
    model.eval()
    scores = model.score_all(batch)
    assert scores.shape == (7, tiny_snapshot.num_products) and torch.isfinite(scores).all()
    picks = torch.randint(0, tiny_snapshot.num_products, (7, 4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.score(batch, picks), scores.gather(1, picks))
    state = model.serving_state()
    assert torch.allclose(model.serving_users(state, batch) @ state["products"].T, scores, atol=1e-4)
    model.train()
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    if "transformer" in variant or variant == "sequences":
        assert model.tower.output.weight.grad.abs().sum() > 0
    if variant == "rgcn" and name != "text-only":
        assert model.graph.convs[0].comp.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_round_trip_through_the_artifact(tiny_snapshot, tiny_store, tiny_bert_dir, tmp_path, variant):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.serving.artifact import load_artifact, save_artifact

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    text = encoder.encode(tiny_snapshot.product_text)
    config = FusedConfig(graph_dim=8, max_history=5, tower_dim=8, **VARIANTS[variant])
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text), config)
    fit(model, tiny_snapshot, TrainConfig(epochs=2, batch_size=16, lr=1e-2, max_history=5, device="cpu"), progress=False)
    path = save_artifact(model, tiny_snapshot, tmp_path / variant, text_encoder=encoder, products=tiny_store.nodes("Product"))
    model.set_graph(tiny_snapshot.message_passing("test"))
    model.eval()
    batch, _ = evaluation_examples(tiny_snapshot, "test", max_history=5)
    loaded = load_artifact(path)
    assert loaded.model.config == model.config
    with torch.no_grad():
        expected = model.score_all(batch)
        assert torch.allclose(loaded.model.score_all(batch), expected, atol=1e-5)
        served = loaded.model.serving_users(loaded.state, batch) @ loaded.state["products"].T
    assert torch.allclose(served, expected, atol=1e-4)


def test_tuned_tower_loss_is_in_batch_plus_the_catalogue_term_on_cached_text(tiny_snapshot, tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder
    from kgrec.fusion.models import FusedRecommender

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    texts = list(tiny_snapshot.product_text)
    torch.manual_seed(0)
    model = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products,
        FusedConfig(graph_dim=8, max_history=5, dropout=0.0, catalogue_loss=0.5, tuned_history=2),
        text_features=encoder.encode(texts), num_nodes=tiny_snapshot.num_nodes,
        edge_types=list(tiny_snapshot.message_passing("train").edge_types),
        text_tower=TunedTextEncoder(encoder, TextTuningConfig(mode="lora")), product_texts=texts,
    )
    model.set_graph(tiny_snapshot.message_passing("train"))
    batch = training_examples(tiny_snapshot, 5)[:6]
    model.train()
    torch.manual_seed(1)
    loss = model.loss(batch)
    recent = batch.history[:, -2:]
    fresh = torch.unique(torch.cat([batch.targets, recent[recent >= 0]]))
    assert torch.equal(model._fresh_rows, fresh)  # targets and the two most recent history items
    torch.manual_seed(1)  # the same dropout masks, the same order of passes
    edges = model._edges_without(batch)
    products, _ = model._encode(edges, model._fresh_text(fresh))
    users = F.normalize(model._users(batch, products, None), dim=-1)
    logits, targets = model._in_batch(users @ F.normalize(products, dim=-1).T / 0.05, batch.targets)
    in_batch = F.cross_entropy(logits, targets)
    cached, _ = model._encode(edges)
    whole = F.cross_entropy(users @ F.normalize(cached, dim=-1).T / 0.05, batch.targets)
    assert torch.allclose(loss, in_batch + 0.5 * whole, atol=1e-5)
    loss.backward()
    lora = [p for _, p in model.text_tower.named_parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    with pytest.raises(ValueError, match="tuned_history"):
        FusedConfig(tuned_history=-1)


def test_text_prior_adds_the_untrained_text_cosine_at_scoring_only(tiny_snapshot, text_features):
    model = _model(tiny_snapshot, text_features).eval()
    batch = training_examples(tiny_snapshot, 5)[:6]
    with torch.no_grad():
        without = model.score_all(batch)
        loss_without = float(model.train().loss(batch))
        model.config = FusedConfig(**{**model.config.__dict__, "text_prior": 0.3})
        assert float(model.loss(batch)) == pytest.approx(loss_without)  # training never sees the prior
        model.eval()
        history = batch.history
        weights = torch.softmax(model.recency[-5:].unsqueeze(0).masked_fill(history < 0, float("-inf")), dim=1)
        raw = F.normalize(text_features, dim=-1)
        text_user = F.normalize((weights.unsqueeze(-1) * raw[history.clamp(min=0)]).sum(1), dim=-1)
        want = without + 0.3 * (text_user @ raw.T) / 0.05
        assert torch.allclose(model.score_all(batch), want, atol=1e-4)
        # serving: users and products carry the text part, so one dot product gives the same scores
        state = model.serving_state()
        users = model.serving_users(state, batch)
        assert torch.allclose(users @ state["products"].T, want, atol=1e-4)
        # search scores the fused part only: the query is padded with zeros over the text part
        query = model.serving_query(state, torch.randn(2, 16))
        assert query.shape == (2, state["products"].shape[1]) and torch.equal(query[:, model.dim :], torch.zeros(2, 16))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="text_prior"):
            FusedConfig(text_prior=bad)
        with pytest.raises(ValueError, match="cold_text_prior"):
            FusedConfig(cold_text_prior=bad)
    with pytest.raises(ValueError, match="text_prior"):
        FusedConfig(text_prior=0.5, use_text=False)


@pytest.mark.parametrize("text_prior", [0.0, 0.2])
def test_cold_boost_adds_text_only_to_products_with_little_evidence(tiny_snapshot, text_features, text_prior):
    model = _model(tiny_snapshot, text_features, text_prior=text_prior).eval()
    batch = training_examples(tiny_snapshot, 5)[:6]
    visible = tiny_snapshot.message_passing("train")[("user", "interacted", "product")].edge_index[1]
    counts = torch.bincount(visible, minlength=tiny_snapshot.num_products)
    with torch.no_grad():
        base = model.score_all(batch)
        model.config = FusedConfig(**{**model.config.__dict__, "cold_text_prior": 0.5, "cold_below": 2})
        cold = (counts < 2).float()
        assert torch.equal(model.cold_products(), cold) and 0 < cold.sum() < len(cold)
        history = batch.history
        weights = torch.softmax(model.recency[-5:].unsqueeze(0).masked_fill(history < 0, float("-inf")), dim=1)
        raw = F.normalize(text_features, dim=-1)
        text_user = F.normalize((weights.unsqueeze(-1) * raw[history.clamp(min=0)]).sum(1), dim=-1)
        want = base + 0.5 * cold * (text_user @ raw.T) / 0.05
        assert torch.allclose(model.score_all(batch), want, atol=1e-4)
        state = model.serving_state()
        users = model.serving_users(state, batch)
        assert torch.allclose(users @ state["products"].T, want, atol=1e-4)
        # a product added at serving time has no graph evidence: it gets the boost
        new_text = torch.randn(1, 16)
        grown = model.serving_add_products(state, new_text, torch.zeros(1, tiny_snapshot.num_products))
        unit = F.normalize(new_text, dim=-1)
        fused_part = users[:, : model.dim] @ grown["products"][-1, : model.dim]
        want_new = fused_part + (text_prior + 0.5) * (text_user @ unit.T).squeeze(1) / 0.05
        assert torch.allclose(users @ grown["products"][-1], want_new, atol=1e-4)
