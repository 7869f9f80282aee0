"""Search from the fused scorer: graded listwise loss, personalisation, multi-task training,
the search graph's leakage guard and the evaluation protocols."""
import pandas as pd
import pytest
import torch

from kgrec.evaluation.recommendation import ndcg_validator
from kgrec.evaluation.search import evaluate_search, model_scores, search_validator
from kgrec.fusion.data import SearchBatch
from kgrec.fusion.models import QUERY_EDGE, REV_QUERY_EDGE, FusedConfig, FusedRecommender, drop_pairs
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import SearchTask, TrainConfig, fit
from kgrec.search.examples import anonymous, category_path_examples, category_query, judged_examples, search_graph

D = 16


@pytest.fixture(scope="module")
def text_features(tiny_snapshot):
    return torch.randn(tiny_snapshot.num_products, D, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def personal(tiny_snapshot, text_features):
    """Category-path search examples; each product's query vector is random (unrelated to its
    text), so only training can map queries to products."""
    g = torch.Generator().manual_seed(3)
    queries = torch.randn(text_features.shape, generator=g)
    texts = [f"query {i}" for i in range(tiny_snapshot.num_products)]
    return {s: category_path_examples(tiny_snapshot, s, texts, queries, max_history=5) for s in ("train", "valid", "test")}


def _fused(snapshot, text, **kw):
    return build_model("fused", ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=8, max_history=5, **kw))


def test_category_query_drops_the_root():
    assert category_query(["Industrial & Scientific", "Lab", "Tubes"]) == "Lab Tubes"
    assert category_query(["Tools"]) == "Tools"
    assert category_query([]) == ""


def test_drop_pairs_removes_exactly_the_pairs_and_mirrors():
    edges = {("a", "r", "b"): torch.tensor([[0, 0, 1, 2], [1, 2, 2, 0]]), ("b", "rev_r", "a"): torch.tensor([[1, 2, 2, 0], [0, 0, 1, 2]])}
    out = drop_pairs(edges, ("a", "r", "b"), ("b", "rev_r", "a"), torch.tensor([0, 2, -1]), torch.tensor([2, 0, 1]))
    assert out[("a", "r", "b")].tolist() == [[0, 1], [1, 2]]
    assert out[("b", "rev_r", "a")].tolist() == [[1, 2], [0, 1]]
    assert edges[("a", "r", "b")].shape[1] == 4  # input untouched


def test_graded_listwise_loss_value(tiny_snapshot, text_features):
    model = _fused(tiny_snapshot, text_features)
    model.set_graph(tiny_snapshot.message_passing("train"))
    model.eval()
    batch = SearchBatch(
        queries=text_features[:2], products=torch.tensor([[0, 1, -1], [2, 3, 4]]),
        grades=torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),
        users=torch.tensor([-1, -1]), history=torch.full((2, 5), -1), query_nodes=torch.tensor([-1, -1]),
    )
    logits = model.search_logits(batch)
    logp = torch.log_softmax(logits[0], dim=0)
    expected = -(3 / 4 * logp[0] + 1 / 4 * logp[1])  # gains 2^2-1=3 and 2^1-1=1; query 2 has no gain
    assert torch.allclose(model.search_loss(batch), expected, atol=1e-5)


def test_untrained_search_is_text_cosine_and_personalisation_starts_off(tiny_snapshot, text_features, personal):
    model = _fused(tiny_snapshot, text_features)
    model.set_graph(tiny_snapshot.message_passing("train"))
    model.eval()
    batch = personal["valid"]
    personal_scores = model.search_logits(batch)
    assert torch.allclose(personal_scores, model.search_logits(anonymous(batch)))
    q = torch.nn.functional.normalize(batch.queries, dim=-1)
    p = torch.nn.functional.normalize(text_features, dim=-1)
    assert torch.allclose(personal_scores, q @ p.T / model.config.temperature, atol=1e-4)
    assert torch.isfinite(personal_scores).all()


def test_multitask_training_learns_search_and_keeps_one_product_tower(tiny_snapshot, text_features, personal):
    model = _fused(tiny_snapshot, text_features)
    task = SearchTask(train=personal["train"], batch_size=16)
    model.set_graph(tiny_snapshot.message_passing("train"))
    before = evaluate_search(model_scores(model), personal["train"], protocol="full")["ndcg@10"]
    validators = {"rec": ndcg_validator(tiny_snapshot, "valid", max_history=5),
                  "search": search_validator(personal["valid"], exclude_history=True)}
    history = fit(model, tiny_snapshot, TrainConfig(epochs=15, batch_size=16, lr=1e-2, patience=15, max_history=5),
                  progress=False, search=task, validators=validators)
    assert len(history.valid_search_ndcg) == len(history.losses) + 1 == len(history.valid_ndcg)
    assert history.losses[-1] < history.losses[0]
    after = evaluate_search(model_scores(model), personal["train"], protocol="full")["ndcg@10"]
    assert after > before
    assert float(model.search_user_weight.detach().abs()) > 0  # personalisation was learned
    # search and recommendation rank against the same product vectors
    model.eval()
    q = torch.nn.functional.normalize(model.query_vectors(personal["test"].queries), dim=-1)
    logits = model.search_logits(anonymous(personal["test"]))
    assert torch.allclose(logits, q @ model.product_embeddings().T / model.config.temperature, atol=1e-4)


def test_evaluate_search_protocols_and_history_exclusion():
    products = torch.tensor([[1, 2, -1], [0, 3, 4]])
    batch = SearchBatch(
        queries=torch.zeros(2, 4), products=products, grades=torch.tensor([[1.0, 2.0, 0.0], [2.0, 0.0, 1.0]]),
        users=torch.tensor([0, 1]), history=torch.tensor([[2], [-1]]), query_nodes=torch.tensor([-1, -1]),
    )
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.1, 0.2], [0.5, 0.1, 0.1, 0.9, 0.8]])
    rerank = evaluate_search(scores, batch, ks=(10,), protocol="rerank")
    # q0 ranks 1 (g1) over 2 (g2): dcg = 1 + 3/log2(3), ideal = 3 + 1/log2(3)
    import math

    q0 = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    q1 = (0 + 1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))  # ranks 3 (g0), 4 (g1), 0 (g2)
    assert rerank["ndcg@10"] == pytest.approx((q0 + q1) / 2, abs=1e-5)
    full = evaluate_search(scores, batch, ks=(2,), protocol="full", exclude_history=True)
    # q0 without product 2 (history): top-2 = [1, 4] -> dcg 1; ideal 3 + 1/log2(3)
    assert full["ndcg@2"] == pytest.approx((1 / (3 + 1 / math.log2(3)) + (1 / math.log2(3)) / (3 + 1 / math.log2(3))) / 2, abs=1e-5)


def test_search_graph_holds_only_train_judgements_and_training_hides_the_batch(tiny_snapshot, text_features):
    P = tiny_snapshot.num_products
    frame = pd.DataFrame({
        "query_id": ["a", "a", "b", "c", "c"], "query": ["qa", "qa", "qb", "qc", "qc"],
        "product": [0, 1, 2, 3, 4], "grade": [2.0, 0.0, 1.0, 2.0, 1.0],
    })
    train_nodes = {"a": 0, "b": 1}  # "c" is a test query
    graph = search_graph(tiny_snapshot.message_passing("train"), frame, train_nodes)
    assert graph[QUERY_EDGE].edge_index.tolist() == [[0, 1], [0, 2]]  # grade 0 and test query left out
    assert graph[REV_QUERY_EDGE].edge_index.tolist() == [[0, 2], [0, 1]]
    qvec = torch.randn(3, D, generator=torch.Generator().manual_seed(2))
    model = FusedRecommender(
        tiny_snapshot.num_users, P, FusedConfig(graph_dim=8, max_history=5), text_features=text_features,
        num_nodes={**tiny_snapshot.num_nodes, "query": 2}, edge_types=list(graph.edge_types),
        node_features={"query": qvec[:2]},
    )
    model.set_graph(graph)
    train = judged_examples(frame[frame.query_id.isin(train_nodes)], qvec, {"a": 0, "b": 1, "c": 2}, train_nodes)
    assert train.query_nodes.tolist() == [0, 1] and train.products.tolist() == [[0, 1], [2, -1]]
    seen = {}
    original = model.graph.forward

    def spy(edges, features=None, **kw):
        seen["edges"] = edges
        return original(edges, features, **kw)

    model.graph.forward = spy
    model.train()
    model.search_loss(train)
    assert seen["edges"][QUERY_EDGE].shape[1] == 0  # both judged edges belong to the batch
    model.eval()
    model._cache = None
    model.search_logits(train)
    assert seen["edges"][QUERY_EDGE].shape[1] == 2


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_search_model_round_trips_through_an_artifact(tiny_snapshot, tiny_bert_dir, tmp_path, mode):
    """A search-trained model with a (tuned) text tower: saved, loaded, and the Scorer's
    search ranks as the trained model does."""
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder
    from kgrec.serving.api import Scorer
    from kgrec.serving.artifact import load_artifact, save_artifact

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    texts = list(tiny_snapshot.product_text)
    text = encoder.encode(texts)
    tower = TunedTextEncoder(encoder, TextTuningConfig(mode=mode)) if mode != "frozen" else None
    model = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products, FusedConfig(graph_dim=8, max_history=5),
        text_features=text, num_nodes=tiny_snapshot.num_nodes, edge_types=list(tiny_snapshot.message_passing("train").edge_types),
        text_tower=tower, product_texts=texts if tower is not None else None,
    )
    queries = ["drill kit", "red gloves", "blue tape"]
    qvec = encoder.encode(queries)
    batch = SearchBatch(qvec, torch.tensor([[0], [7], [13]]), torch.ones(3, 1), torch.full((3,), -1),
                        torch.full((3, 5), -1), torch.full((3,), -1), queries)
    task = SearchTask(train=batch, batch_size=3)
    fit(model, tiny_snapshot, TrainConfig(epochs=2, batch_size=16, lr=1e-2, patience=5, max_history=5), progress=False, search=task)
    if tower is not None:
        untrained = TunedTextEncoder(encoder, TextTuningConfig(mode=mode)).tuned_state_dict()
        assert any(not torch.equal(a, b) for a, b in zip(tower.tuned_state_dict().values(), untrained.values()))
    save_artifact(model, tiny_snapshot, tmp_path / "art", text_encoder=encoder, max_history=5)
    assert (tmp_path / "art" / "text_tower").is_dir() == (mode != "frozen")
    art = load_artifact(tmp_path / "art")
    assert art.config["text_tuning"]["mode"] == mode
    scorer = Scorer(art)
    found = scorer.search(queries, k=5)
    model.eval()
    model.set_graph(tiny_snapshot.message_passing("test"))
    model._cache = None
    q = tower.encode(queries) if tower is not None else qvec
    query_batch = SearchBatch(q, batch.products, batch.grades, batch.users, batch.history, batch.query_nodes)
    expected = torch.topk(model.search_logits(query_batch), 5).indices
    ids = tiny_snapshot.id_maps["product"]
    assert [[pid for pid, _ in row] for row in found] == [[ids[i] for i in row] for row in expected.tolist()]


def test_trainable_tower_trains_on_in_batch_negatives(tiny_snapshot, tiny_bert_dir):
    """With a fine-tuned tower the softmax covers only the products re-encoded this step."""
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    texts = list(tiny_snapshot.product_text)
    model = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products, FusedConfig(graph_dim=8, max_history=5, dropout=0.0),
        text_features=encoder.encode(texts), num_nodes=tiny_snapshot.num_nodes,
        edge_types=list(tiny_snapshot.message_passing("train").edge_types),
        text_tower=TunedTextEncoder(encoder, TextTuningConfig(mode="lora", lora_dropout=0.0)), product_texts=texts,
    )
    model.set_graph(tiny_snapshot.message_passing("train"))
    queries = ["drill kit", "red gloves"]
    batch = SearchBatch(encoder.encode(queries), torch.tensor([[5, 2], [9, -1]]), torch.tensor([[1.0, 2.0], [1.0, 0.0]]),
                        torch.full((2,), -1), torch.full((2, 5), -1), torch.full((2,), -1), queries)
    model.train()
    torch.manual_seed(0)  # BERT's own dropout: the same masks in both passes
    loss = model.search_loss(batch)
    assert model._fresh_rows.tolist() == [2, 5, 9]
    torch.manual_seed(0)
    logits = model.search_logits(batch)[:, [2, 5, 9]]
    logp = torch.log_softmax(logits, dim=-1)
    expected = -((1 / 4) * logp[0, 1] + (3 / 4) * logp[0, 0] + logp[1, 2]) / 2  # gains 1 and 3; query 2: product 9
    assert torch.allclose(loss, expected, atol=1e-5)
    model.eval()
    assert model.search_logits(batch).shape == (2, tiny_snapshot.num_products)


def test_a_tuned_tower_encodes_the_queries_it_scores(tiny_snapshot, tiny_bert_dir):
    """Out of training too, queries go through the model's text tower (the product cache holds
    the tower's vectors), not the base encoder's vectors the batch carries."""
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    texts = list(tiny_snapshot.product_text)
    tower = TunedTextEncoder(encoder, TextTuningConfig(mode="lora"))
    with torch.no_grad():  # a tuned tower: LoRA's B matrices start at 0, move them
        for p in tower.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    model = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products, FusedConfig(graph_dim=8, max_history=5),
        text_features=encoder.encode(texts), num_nodes=tiny_snapshot.num_nodes,
        edge_types=list(tiny_snapshot.message_passing("train").edge_types), text_tower=tower, product_texts=texts,
    )
    model.set_graph(tiny_snapshot.message_passing("test"))
    model.refresh_text()
    model.eval()
    queries = ["drill kit", "red gloves"]
    base, tuned = encoder.encode(queries), tower.encode(queries)
    assert not torch.allclose(base, tuned, atol=1e-3)

    def batch(vectors, with_texts):
        return SearchBatch(vectors, torch.tensor([[0], [1]]), torch.ones(2, 1), torch.full((2,), -1),
                           torch.full((2, 5), -1), torch.full((2,), -1), queries if with_texts else None)

    with torch.no_grad():
        scored = model.search_logits(batch(base, True))
        assert torch.allclose(scored, model.search_logits(batch(tuned, False)), atol=1e-5)
        assert not torch.allclose(scored, model.search_logits(batch(base, False)), atol=1e-3)


def test_feature_only_search_model_round_trips_without_id_embeddings(tiny_snapshot, tiny_bert_dir, tmp_path):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.serving.artifact import load_artifact, save_artifact

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    text = encoder.encode(list(tiny_snapshot.product_text))
    config = FusedConfig(graph_dim=8, max_history=5, graph_text_input=True, feature_ids=False)
    torch.manual_seed(0)
    model = FusedRecommender(tiny_snapshot.num_users, tiny_snapshot.num_products, config, text_features=text,
                             num_nodes=tiny_snapshot.num_nodes, edge_types=list(tiny_snapshot.message_passing("train").edge_types))
    keys = set(model.state_dict())
    assert "graph.embedding.user.weight" in keys and "graph.embedding.product.weight" not in keys
    with torch.no_grad():  # move the zero-initialised graph branch so it shows in the scores
        model.graph_proj.weight.normal_(0, 0.3)
    save_artifact(model, tiny_snapshot, tmp_path / "art", text_encoder=encoder, max_history=5)
    art = load_artifact(tmp_path / "art")
    assert art.config["model"]["config"]["feature_ids"] is False
    assert art.config["model"]["init"]["num_nodes"]["product"] == tiny_snapshot.num_products
    for m in (model, art.model):
        m.eval()
        m.set_graph(tiny_snapshot.message_passing("test"))
    assert torch.allclose(model.product_embeddings(), art.model.product_embeddings(), atol=1e-5)


def test_catalogue_loss_adds_the_whole_catalogue_softmax_on_cached_text(tiny_snapshot, tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder

    encoder = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    texts = list(tiny_snapshot.product_text)
    torch.manual_seed(0)
    model = FusedRecommender(
        tiny_snapshot.num_users, tiny_snapshot.num_products,
        FusedConfig(graph_dim=8, max_history=5, dropout=0.0, catalogue_loss=0.5),
        text_features=encoder.encode(texts), num_nodes=tiny_snapshot.num_nodes,
        edge_types=list(tiny_snapshot.message_passing("train").edge_types),
        text_tower=TunedTextEncoder(encoder, TextTuningConfig(mode="lora")), product_texts=texts,
    )
    model.set_graph(tiny_snapshot.message_passing("train"))
    queries = ["drill kit", "red gloves"]
    batch = SearchBatch(encoder.encode(queries), torch.tensor([[5, 2], [9, -1]]), torch.tensor([[1.0, 2.0], [1.0, 0.0]]),
                        torch.full((2,), -1), torch.full((2, 5), -1), torch.full((2,), -1), queries)
    model.train()
    torch.manual_seed(1)
    loss = model.search_loss(batch)
    torch.manual_seed(1)  # the same dropout masks, the same order of passes
    edges = model._search_edges(batch)
    products, _ = model._search_products(batch, None, edges)
    q = model.query_vectors(batch.queries, batch.texts)
    in_batch = model._graded_loss(model._search_logits(batch, products, None, q), batch)
    cached, _ = model._encode(edges)
    whole = model._graded_loss(model._search_logits(batch, cached, None, q), batch, in_batch=False)
    assert torch.allclose(loss, in_batch + 0.5 * whole, atol=1e-5)
    assert whole.item() > 0 and not torch.allclose(whole, in_batch)  # 24 products vs the batch's 3
    loss.backward()
    lora = [p for n, p in model.text_tower.named_parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    model.eval()  # evaluation: the plain scores, whatever the training loss
    with torch.no_grad():
        assert torch.isfinite(model.search_loss(batch))
    with pytest.raises(ValueError, match="catalogue_loss"):
        FusedConfig(catalogue_loss=-1.0)
