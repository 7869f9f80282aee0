"""Scorer's batched row paths: the cached user vectors and the coordinate masking return what the
straightforward path (the user tower on the whole batch, a dense seen mask) returns."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from kgrec.fusion.data import RecBatch
from kgrec.fusion.models import FusedConfig, Popularity
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import save_artifact

MODELS = ("fused", "mf-bpr", "text-zero-shot", "popularity")


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))


@pytest.fixture(scope="module")
def artifacts(tiny_snapshot, tiny_store, encoder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rows")
    text = encoder.encode(tiny_snapshot.product_text)
    out = {}
    for name in MODELS:
        model = build_model(name, ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8))
        fit(model, tiny_snapshot, TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu"), progress=False)
        out[name] = save_artifact(model, tiny_snapshot, directory / name, text_encoder=encoder,
                                  products=tiny_store.nodes("Product"))
    return out


def reference_recommend(scorer: Scorer, user_ids, k, exclude_seen=True, filters=None, session=None):
    """Recommendations the plain way: one user-tower call on the whole batch (every row), a dense
    ``[B, P]`` seen mask, ``torch.where`` for popularity rows, per-element unpacking."""
    if session is None:
        sessions = [[] for _ in user_ids]
    elif isinstance(session, Mapping):
        sessions = [list(session.get(u, [])) for u in user_ids]
    else:
        sessions = [list(session) for _ in user_ids]
    sessions = [[scorer.product_ids.index(p) for p in s] for s in sessions]
    index = np.array([scorer._uid.get(u, -1) for u in user_ids], dtype=np.int64)
    history = torch.full((len(user_ids), scorer.max_history), -1, dtype=torch.long)
    sources, seen = [], []
    for row, (u, items) in enumerate(zip(index, sessions)):
        past = scorer._hist_products[scorer._indptr[u] : scorer._indptr[u + 1]] if u >= 0 else np.empty(0, np.int64)
        merged = np.concatenate([past, np.asarray(items, dtype=np.int64)])[-scorer.max_history :]
        if len(merged):
            history[row, scorer.max_history - len(merged) :] = torch.as_tensor(merged)
        seen.append(np.concatenate([past, np.asarray(items, dtype=np.int64)]))
        if isinstance(scorer.model, Popularity) or (len(past) == 0 and not items):
            sources.append("popularity")
        else:
            sources.append("history" if len(past) else "session")
    batch = RecBatch(torch.as_tensor(index), history, torch.full((len(user_ids),), -1, dtype=torch.long))
    with torch.no_grad():
        vectors = scorer.model.serving_users(scorer.state, batch)
    popular = torch.as_tensor([s == "popularity" for s in sources])
    keep = scorer.candidates(filters)
    cols = torch.arange(scorer.num_products) if keep is None else keep.nonzero().squeeze(1)
    scores = vectors @ scorer.state["products"][cols].T
    scores = torch.where(popular.unsqueeze(1), scorer.popularity[cols].unsqueeze(0), scores)
    if exclude_seen:
        mask = torch.zeros(len(user_ids), scorer.num_products, dtype=torch.bool)
        for row, items in enumerate(seen):
            mask[row, torch.as_tensor(items, dtype=torch.long)] = True
        scores = scores.masked_fill(mask[:, cols], float("-inf"))
    top = torch.topk(scores, min(k, len(cols)), dim=1)
    out = []
    for values, indices in zip(top.values.tolist(), cols[top.indices].tolist()):
        out.append([(scorer.product_ids[i], v) for v, i in zip(values, indices) if v != float("-inf")])
    return out, sources


def _requests(scorer: Scorer):
    users = scorer.user_ids
    some = scorer.product_ids[:3]
    return [
        dict(user_ids=users, k=5),
        dict(user_ids=users[:4] + ["stranger"], k=24),  # k above the unseen count of some users
        dict(user_ids=users[:3], k=6, exclude_seen=False),
        dict(user_ids=users[:5] + ["visitor"], k=5, session={"visitor": some, users[1]: some[1:]}),
        dict(user_ids=["visitor", users[2]], k=4, session=some),
        dict(user_ids=users[:6], k=4, filters={"brand": ["Acme", "Bolt"]}),
        dict(user_ids=users[:6] + ["nobody"], k=30, filters={"category": "Tools > Power"}),
    ]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("name", MODELS)
def test_fast_recommend_returns_what_the_plain_path_returns(artifacts, name, cache):
    scorer = Scorer.load(artifacts[name], cache_user_vectors=cache)
    assert (scorer._user_cache is not None) == cache
    for request in _requests(scorer):
        want, sources = reference_recommend(scorer, **request)
        got = scorer.recommend(**request)
        assert [r.source for r in got] == sources, request
        for rec, items in zip(got, want):
            assert [p for p, _ in rec.items] == [p for p, _ in items], request
            # float32 rounding of a [B, d] product may differ with the batch's size, nothing more
            assert [s for _, s in rec.items] == pytest.approx([s for _, s in items], rel=1e-6, abs=1e-6), request


def test_cached_user_vectors_equal_the_tower_on_the_stored_history(artifacts):
    scorer = Scorer.load(artifacts["fused"])
    users = np.arange(len(scorer.user_ids))
    batch = RecBatch(torch.as_tensor(users), scorer._padded(users), torch.full((len(users),), -1))
    with torch.no_grad():
        tower = scorer.model.serving_users(scorer.state, batch)
    torch.testing.assert_close(scorer._user_cache, tower, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scorer.user_vectors(scorer.user_ids[:5]), tower[:5], rtol=1e-6, atol=1e-6)


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [p for p, _ in got] == [p for p, _ in want]
    assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-6, abs=1e-6)


def test_recommend_rows_scores_each_row_with_its_own_session(artifacts):
    scorer = Scorer.load(artifacts["fused"])
    first, second = scorer.product_ids[:2], scorer.product_ids[5:8]
    rows = scorer.recommend_rows(["visitor", "visitor", "U1"], [first, second, []], k=5)
    _same(rows[0].items, scorer.recommend(["visitor"], k=5, session=first)[0].items)
    _same(rows[1].items, scorer.recommend(["visitor"], k=5, session=second)[0].items)
    _same(rows[2].items, scorer.recommend(["U1"], k=5)[0].items)
    assert [p for p, _ in rows[0].items] != [p for p, _ in rows[1].items]
    assert [r.source for r in rows] == ["session", "session", "history"]
    with pytest.raises(ValueError, match="2 sessions for 3 users"):
        scorer.recommend_rows(["a", "b", "c"], [[], []])


def test_search_rows_personalise_each_row_like_single_searches(artifacts):
    scorer = Scorer.load(artifacts["fused"])
    queries = ["drill", "gloves", "saw"]
    users = ["U1", None, "visitor"]
    sessions = [[], [], scorer.product_ids[:2]]
    rows = scorer.search_rows(queries, k=4, user_ids=users, sessions=sessions)
    _same(rows[0], scorer.search("drill", k=4, user_id="U1"))
    _same(rows[1], scorer.search("gloves", k=4))
    _same(rows[2], scorer.search("saw", k=4, session=scorer.product_ids[:2]))
    assert [s for _, s in rows[0]] != pytest.approx([s for _, s in scorer.search("drill", k=4)])  # the user moved it


@pytest.mark.parametrize("field", ["user_weight", "lexical_weight"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "heavy"])
def test_search_rejects_weights_that_are_not_finite_numbers(artifacts, field, value):
    scorer = Scorer.load(artifacts["fused"])
    with pytest.raises(ValueError, match=field):
        scorer.search("drill", k=3, user_id="U1", **{field: value})


def test_model_version_names_the_artifact(artifacts):
    a, b = Scorer.load(artifacts["fused"]), Scorer.load(artifacts["mf-bpr"])
    assert len(a.model_version) == 16 and a.model_version != b.model_version
    assert a.model_version == a.artifact.config["checksum"][:16] == Scorer.load(artifacts["fused"]).model_version

