"""Scorer: recommend / score / similar / search / add_products on tiny artifacts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kgrec.fusion.data import RecBatch
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import save_artifact


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))


def _scorer(name, snapshot, store, encoder, directory):
    text = encoder.encode(snapshot.product_text)
    model = build_model(name, ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=8))
    fit(model, snapshot, TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu"), progress=False)
    save_artifact(model, snapshot, directory / name, text_encoder=encoder, products=store.nodes("Product"))
    return Scorer.load(directory / name)


@pytest.fixture(scope="module")
def fused(tiny_snapshot, tiny_store, encoder, tmp_path_factory):
    return _scorer("fused", tiny_snapshot, tiny_store, encoder, tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def text_only(tiny_snapshot, tiny_store, encoder, tmp_path_factory):
    return _scorer("text-only", tiny_snapshot, tiny_store, encoder, tmp_path_factory.mktemp("api"))


@pytest.fixture()
def fresh_text_only(text_only):
    """A private copy (add_products changes a scorer)."""
    return Scorer(text_only.artifact)


def _visible(snapshot):
    seen = snapshot.visible("test")
    users, products = snapshot.id_maps["user"], snapshot.id_maps["product"]
    out = {}
    for u, p in zip(seen["user"], seen["product"]):
        out.setdefault(users[u], []).append(products[p])
    return out


def test_recommend_excludes_seen_and_matches_a_full_ranking(fused, tiny_snapshot):
    users = tiny_snapshot.id_maps["user"]
    history = _visible(tiny_snapshot)
    recs = fused.recommend(users, k=5)
    model, state = fused.model, fused.state
    for rec in recs:
        assert rec.source == "history" and len(rec) == 5
        assert not set(p for p, _ in rec) & set(history[rec.user_id])
        scores = [s for _, s in rec]
        assert scores == sorted(scores, reverse=True)
    # the same as ranking every product with the model and masking the history by hand
    batch = RecBatch(torch.arange(len(users)), fused._padded(np.arange(len(users))), torch.full((len(users),), -1))
    with torch.no_grad():
        full = model.serving_users(state, batch) @ state["products"].T
    for row, rec in enumerate(recs):
        mask = torch.tensor([p in history[rec.user_id] for p in fused.product_ids])
        top = torch.topk(full[row].masked_fill(mask, float("-inf")), 5)
        assert [p for p, _ in rec] == [fused.product_ids[i] for i in top.indices.tolist()]
        assert [s for _, s in rec] == pytest.approx(top.values.tolist(), abs=1e-5)
    with_seen = fused.recommend([users[0]], k=24, exclude_seen=False)[0]
    assert len(with_seen) == 24 and set(history[users[0]]) <= {p for p, _ in with_seen}


@pytest.mark.parametrize("cache", [False, True])
def test_batched_requests_call_the_user_tower_once_and_equal_single_requests(fused, tiny_snapshot, monkeypatch, cache):
    scorer = Scorer(fused.artifact, cache_user_vectors=cache)
    users = tiny_snapshot.id_maps["user"][:6] + ["stranger", "visitor"]
    session = {"visitor": fused.product_ids[:3]}
    singles = [scorer.recommend([u], k=4, session=session if u == "visitor" else None)[0] for u in users]
    calls = []
    original = scorer.model.serving_users
    monkeypatch.setattr(scorer.model, "serving_users", lambda state, batch: calls.append(len(batch)) or original(state, batch))
    batched = scorer.recommend(users, k=4, session=session)
    # one tower call for the rows that need it: every user with a history (no cache) or only the
    # session visitor (cache); the stranger is scored by popularity
    assert calls == [1] if cache else [len(users) - 1]
    for one, many in zip(singles, batched):
        assert [p for p, _ in one] == [p for p, _ in many] and one.source == many.source
        assert [s for _, s in one] == pytest.approx([s for _, s in many], abs=1e-5)


def test_unknown_user_falls_back_to_popularity_in_order(fused, tiny_snapshot):
    counts = np.bincount(tiny_snapshot.visible("test")["product"], minlength=tiny_snapshot.num_products)
    rec = fused.recommend(["nobody"], k=6)[0]
    assert rec.source == "popularity"
    got = [fused.product_ids.index(p) for p, _ in rec]
    assert [s for _, s in rec] == sorted(counts, reverse=True)[:6]
    assert [counts[i] for i in got] == [s for _, s in rec]
    assert min(counts[got]) >= max(np.delete(counts, got))


def test_session_user_is_scored_like_a_known_user_with_that_history(fused, tiny_snapshot):
    history = _visible(tiny_snapshot)
    known = fused.recommend(["U3"], k=5)[0]
    visitor = fused.recommend(["visitor"], k=5, session=history["U3"])[0]
    assert visitor.source == "session" and known.source == "history"
    assert [p for p, _ in visitor] == [p for p, _ in known]
    assert [s for _, s in visitor] == pytest.approx([s for _, s in known], abs=1e-5)
    # a known user's session items are appended to the history and excluded
    extra = [p for p in fused.product_ids if p not in history["U3"]][:2]
    rec = fused.recommend(["U3"], k=5, session={"U3": extra})[0]
    assert rec.source == "history" and not set(extra) & {p for p, _ in rec}


def test_filters_restrict_candidates(fused):
    by_brand = fused.recommend(["U1"], k=24, filters={"brand": "Acme"})[0]
    assert by_brand.items and {fused.brand[fused.product_ids.index(p)] for p, _ in by_brand} == {"Acme"}
    power = fused.recommend(["U1", "U2"], k=24, filters={"category": "Tools > Power", "brand": ["Acme", "Bolt"]})
    for rec in power:
        for p, _ in rec:
            i = fused.product_ids.index(p)
            assert fused.category[i] == "Tools > Power" and fused.brand[i] in ("Acme", "Bolt")
    tools = fused.recommend(["U1"], k=24, exclude_seen=False, filters={"category": "Tools"})[0]
    assert {p for p, _ in tools} == {p for i, p in enumerate(fused.product_ids) if fused.category[i].startswith("Tools")}
    with pytest.raises(ValueError, match="'Garden'"):
        fused.recommend(["U1"], filters={"category": "Garden"})
    with pytest.raises(ValueError, match="unknown filter 'colour'"):
        fused.recommend(["U1"], filters={"colour": "red"})


def test_similar_ranks_nearest_by_cosine(fused):
    unit = F.normalize(fused.state["products"], dim=-1)
    for pid in ("P00", "P07"):
        i = fused.product_ids.index(pid)
        sims = unit @ unit[i]
        sims[i] = float("-inf")
        top = torch.topk(sims, 5)
        got = fused.similar([pid], k=5)[0]
        assert [p for p, _ in got] == [fused.product_ids[j] for j in top.indices.tolist()]
        assert [s for _, s in got] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert pid not in {p for p, _ in got}
    assert len(fused.similar(["P00", "P01"], k=50)) == 2 and len(fused.similar(["P00"], k=50)[0]) == 23


def test_score_matches_recommend(fused):
    rec = fused.recommend(["U2"], k=3)[0]
    assert fused.score([("U2", p) for p, _ in rec]) == pytest.approx([s for _, s in rec], abs=1e-5)


def test_search_finds_a_product_by_its_own_text(text_only, tiny_snapshot):
    for i in (2, 9, 17):
        hits = text_only.search(tiny_snapshot.product_text[i], k=3)
        assert hits[0][0] == tiny_snapshot.id_maps["product"][i] and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    batch = text_only.search([tiny_snapshot.product_text[2], tiny_snapshot.product_text[9]], k=2)
    assert [b[0][0] for b in batch] == ["P02", "P09"]


def test_search_with_a_user_leans_towards_the_user(fused):
    plain = fused.search("cordless drill kit", k=24)
    personal = fused.search("cordless drill kit", k=24, user_id="U4")
    assert len(plain) == len(personal) == 24 and all(-1.0001 <= s <= 1.0001 for _, s in plain)
    user = F.normalize(fused._users(["U4"])[0], dim=-1)[0]
    unit = F.normalize(fused.state["products"], dim=-1)
    lean = {p: float(unit[fused.product_ids.index(p)] @ user) for p, _ in plain}
    gain = {p: s for p, s in personal}
    # with the user mixed in, products the user vector likes gain relative to the plain ranking
    top_user = max(lean, key=lean.get)
    assert [p for p, _ in personal].index(top_user) <= [p for p, _ in plain].index(top_user)
    assert set(gain) == set(lean)
    assert fused.search("drill", k=3, filters={"brand": "Bolt"}) and all(
        fused.brand[fused.product_ids.index(p)] == "Bolt" for p, _ in fused.search("drill", k=3, filters={"brand": "Bolt"})
    )


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_hybrid_search_mixes_bm25_into_the_model_scores(fused, weight):
    from kgrec.search.bm25 import BM25Ranker
    from kgrec.search.hybrid import mix

    query = "tape red kit"
    found = fused.search(query, k=24, lexical_weight=weight)
    q = fused.model.serving_query(fused.state, fused.text_encoder().encode([query]))
    dense = F.normalize(q, dim=-1) @ fused._unit_products().T
    expected = mix(dense, BM25Ranker(fused.titles).score_all([query]), weight)[0]
    order = torch.argsort(expected, descending=True, stable=True)
    assert [s for _, s in found] == pytest.approx(expected[order].tolist(), abs=1e-4)
    if weight == 1.0:  # BM25 alone: the titles holding all three words come first
        assert all(set(query.split()) <= set(fused.titles[fused.product_ids.index(p)].lower().split()) for p, _ in found[:1])
    brand = fused.search(query, k=3, lexical_weight=weight, filters={"brand": "Bolt"})
    assert brand and all(fused.brand[fused.product_ids.index(p)] == "Bolt" for p, _ in brand)
    with pytest.raises(ValueError, match="lexical_weight"):
        fused.search(query, lexical_weight=1.5)


def test_add_products_scores_a_new_product_without_retraining(fresh_text_only, tiny_snapshot):
    scorer = fresh_text_only
    i = tiny_snapshot.id_maps["product"].index("P03")
    twin = pd.DataFrame({"product_id": ["NEW-1"], "title": ["tape red kit"], "brand": ["Acme"],
                         "category_path": [["Tools", "Hand"]]})
    assert tiny_snapshot.product_text[i] == "tape red kit. Tools Hand. Acme."
    report = scorer.add_products(twin)
    assert report.to_dict("records") == [{"product_id": "NEW-1", "category": "Tools > Hand",
                                          "category_products": 10, "brand_products": 8}]
    # the text tower sees the same text as P03: the same vector
    assert scorer.similar(["NEW-1"], k=1)[0][0][0] == "P03"
    assert scorer.similar(["NEW-1"], k=1)[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert scorer.score([("U0", "NEW-1")]) == pytest.approx(scorer.score([("U0", "P03")]), abs=1e-4)
    assert "NEW-1" in {p for p, _ in scorer.recommend(["U0"], k=30, filters={"brand": "Acme"})[0]}
    assert scorer.popularity[-1] == 0
    with pytest.raises(ValueError, match="'NEW-1' already exists"):
        scorer.add_products(twin)


def test_new_fused_product_reproduces_an_existing_one_from_its_own_parts(fused, encoder, tiny_snapshot):
    """serving_add_products must fuse exactly like the model: text + one-hot neighbour -> the vector the
    model gives that product's parts with no graph evidence (a new product has no interactions yet);
    where the product has none either, the very same vector."""
    import torch.nn.functional as F

    model, state = fused.model, fused.state
    graph = tiny_snapshot.message_passing("test")
    evidence = model.graph_evidence(graph.edge_index_dict, tiny_snapshot.num_products)
    unseen = [i for i in range(tiny_snapshot.num_products) if evidence[i] == 0]
    for i in [7, *unseen[:1]]:
        text = encoder.encode([tiny_snapshot.product_text[i]])
        neighbours = torch.zeros(1, tiny_snapshot.num_products)
        neighbours[0, i] = 1.0
        grown = model.serving_add_products(state, text, neighbours)
        with torch.no_grad():
            alone = model.fuse(state["product_text"][i : i + 1], state["product_graph"][i : i + 1], torch.zeros(1))
        assert torch.allclose(grown["products"][-1], F.normalize(alone, dim=-1)[0], atol=1e-5)
        if i in unseen:
            assert torch.allclose(grown["products"][-1], state["products"][i], atol=1e-5)
        assert grown["product_graph"].shape[0] == tiny_snapshot.num_products + 1
    assert unseen, "the tiny catalogue has products nobody bought before the test split"


def test_clear_errors(fused):
    with pytest.raises(ValueError, match="'NOPE'"):
        fused.recommend(["U1"], session=["NOPE"])
    with pytest.raises(ValueError, match="'NOPE'"):
        fused.similar(["NOPE"])
    with pytest.raises(ValueError, match="'ghost'"):
        fused.score([("ghost", "P01")])
    with pytest.raises(ValueError, match="'NOPE'"):
        fused.score([("U1", "NOPE")])
    for k in (0, -3, "5", 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            fused.recommend(["U1"], k=k)
    with pytest.raises(ValueError, match="non-empty query"):
        fused.search("  ")
    with pytest.raises(TypeError, match="single string"):
        fused.recommend("U1")
    with pytest.raises(ValueError, match="'U9'"):
        fused.recommend(["U1"], session={"U9": ["P01"]})
