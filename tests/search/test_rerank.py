"""Tests for kgrec.search.rerank: the BERT cross-encoder re-ranker (tiny random BERT from conftest.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kgrec.encoders.text import TextEncoder, TextEncoderConfig
from kgrec.encoders.tuning import TextTuningConfig
from kgrec.evaluation.metrics import graded_ndcg
from kgrec.search.rerank import CrossEncoderConfig, CrossEncoderReranker

ITEMS = ["drill", "saw", "gloves", "tape", "paint", "ladder"]
COLORS = ["red", "blue", "green", "black"]
PRODUCTS = ["red drill kit", "blue saw set", "green gloves box", "black tape", "red paint brush"]


@pytest.fixture(scope="module")
def enc(tiny_bert_dir) -> TextEncoder:
    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))


def toy_dataset():
    """8 queries "<color> <item>", 6 candidates each; grade = words shared with the query
    (2 for the exact product, 1 for the same item or colour, 0 otherwise)."""
    queries, texts, grades, groups = [], [], [], []
    g = 0
    for ci, c in enumerate(COLORS):
        for ii, it in enumerate(ITEMS):
            if (ci + ii) % 3:
                continue
            oc, oc2 = COLORS[(ci + 1) % 4], COLORS[(ci + 2) % 4]
            oi, oi2 = ITEMS[(ii + 1) % 6], ITEMS[(ii + 2) % 6]
            cands = [
                (f"{c} {it} kit", 2),
                (f"{oc} {it} kit", 1),
                (f"{c} {oi} kit", 1),
                (f"{oc} {oi} kit", 0),
                (f"{oc2} {oi2} kit", 0),
                (f"{oc} {oi2} set", 0),
            ]
            for text, grade in cands:
                queries.append(f"{c} {it}")
                texts.append(text)
                grades.append(grade)
                groups.append(g)
            g += 1
    return queries, texts, torch.tensor(grades, dtype=torch.float32), torch.tensor(groups)


def train_ndcg(rr: CrossEncoderReranker, queries, texts, grades, k: int = 6) -> float:
    scores = rr.score(queries, texts).view(-1, k)
    rel = grades.view(-1, k)
    ranked = rel.gather(1, scores.argsort(dim=1, descending=True, stable=True))
    return float(graded_ndcg(ranked, rel, k=k).mean())


# --------------------------------------------------------------------------- config


def test_config_defaults_round_trip_and_errors():
    cfg = CrossEncoderConfig()
    assert (cfg.max_length, cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed) == (96, 1, 32, 3e-5, 0)
    assert cfg.tuning.mode == "full"
    custom = CrossEncoderConfig(pooling="cls", tuning=TextTuningConfig(mode="lora", lora_r=4))
    assert CrossEncoderConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    for kw, match in [
        ({"max_length": 2}, "max_length"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"pooling": "max"}, "pooling"),
        ({"tuning": "lora"}, "tuning"),
    ]:
        with pytest.raises(ValueError, match=match):
            CrossEncoderConfig(**kw)
    with pytest.raises(ValueError, match="unknown keys"):
        CrossEncoderConfig.from_dict({"lr": 1e-3, "lr_head": 1.0})


def test_max_length_must_fit_the_position_table(enc):
    with pytest.raises(ValueError, match="max_position_embeddings 128"):
        CrossEncoderReranker(enc, CrossEncoderConfig(max_length=124, tuning=TextTuningConfig(mode="prompt")))


# --------------------------------------------------------------------------- loss


def test_listwise_loss_matches_an_independent_computation():
    scores = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])  # groups [0, 1, 2] and [3, 4]
    gains = torch.pow(2.0, torch.tensor([2.0, 1.0, 0.0, 0.0, 1.0])) - 1
    got = CrossEncoderReranker._listwise_loss(scores, [[0, 1, 2], [3, 4]], gains)
    # group 1: p = (3/4, 1/4, 0); group 2: p = (0, 1)
    lse1 = math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-1.0))
    loss1 = -(0.75 * (1.0 - lse1) + 0.25 * (0.0 - lse1))
    loss2 = -(0.5 - math.log(math.exp(2.0) + math.exp(0.5)))
    assert float(got) == pytest.approx((loss1 + loss2) / 2, abs=1e-6)


# --------------------------------------------------------------------------- training


def test_fit_raises_training_ndcg(enc):
    queries, texts, grades, groups = toy_dataset()
    # two groups that carry no signal: all grades 0, and a single candidate
    queries += ["white ladder", "white ladder", "blue lamp"]
    texts += ["red drill kit", "blue saw kit", "blue lamp"]
    grades = torch.cat([grades, torch.tensor([0.0, 0.0, 1.0])])
    groups = torch.cat([groups, torch.tensor([100, 100, 101])])
    cfg = CrossEncoderConfig(lr=1e-2, head_lr=1e-2, epochs=6, batch_size=24, warmup_ratio=0.0, seed=0)
    rr = CrossEncoderReranker(enc, cfg)
    n = 48
    before = train_ndcg(rr, queries[:n], texts[:n], grades[:n])
    history = rr.fit(queries, texts, grades, groups, progress=False)
    after = train_ndcg(rr, queries[:n], texts[:n], grades[:n])
    assert history["groups"] == 8 and history["skipped_groups"] == 2
    assert history["steps"] == 6 * 2 and len(history["loss"]) == 6
    assert history["loss"][-1] < history["loss"][0]
    assert after > before + 0.03, (before, after)
    assert not rr.training


def test_fit_is_seeded(enc):
    queries, texts, grades, groups = toy_dataset()
    sub = slice(0, 12)
    cfg = CrossEncoderConfig(lr=1e-3, epochs=1, batch_size=6, tuning=TextTuningConfig(mode="lora"))
    runs = []
    for _ in range(2):
        rr = CrossEncoderReranker(enc, cfg)
        h = rr.fit(queries[sub], texts[sub], grades[sub], groups[sub], progress=False)
        runs.append((h["loss"], rr.score(queries[sub], texts[sub])))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_fit_rejects_bad_input(enc):
    rr = CrossEncoderReranker(enc, CrossEncoderConfig(tuning=TextTuningConfig(mode="frozen")))
    with pytest.raises(ValueError, match="must all have length N=2"):
        rr.fit(["a", "b"], ["x", "y"], torch.tensor([1.0]), torch.tensor([0, 0]), progress=False)
    with pytest.raises(ValueError, match=r"grades\[1\] = -1.0"):
        rr.fit(["a", "b"], ["x", "y"], torch.tensor([1.0, -1.0]), torch.tensor([0, 0]), progress=False)
    with pytest.raises(ValueError, match="integer tensor"):
        rr.fit(["a", "b"], ["x", "y"], torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), progress=False)
    # nothing to learn from: no step, no error
    h = rr.fit(["a", "b"], ["x", "y"], torch.tensor([0.0, 0.0]), torch.tensor([0, 0]), progress=False)
    assert h["steps"] == 0 and h["skipped_groups"] == 1


# --------------------------------------------------------------------------- scoring / padding


def test_rerank_scores_pads_with_minus_inf_and_matches_score(enc):
    rr = CrossEncoderReranker(enc, CrossEncoderConfig(batch_size=3, seed=1))
    queries = ["red drill", "gloves", "blue tape"]
    cand = torch.tensor([[4, 0, -1, 2], [-1, -1, -1, -1], [3, 1, 0, 4]])
    got = rr.rerank_scores(queries, cand, PRODUCTS)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    assert torch.equal(torch.isinf(got), cand < 0) and bool((got[cand < 0] < 0).all())
    for r, c in [(0, 0), (0, 1), (0, 3), (2, 0), (2, 2)]:
        one = rr.score([queries[r]], [PRODUCTS[int(cand[r, c])]])
        assert float(got[r, c]) == pytest.approx(float(one[0]), abs=1e-5)
    order, scores = rr.rerank(queries, cand, PRODUCTS)
    assert torch.equal(order[1], cand[1])  # all padding stays padding
    for r in (0, 2):
        valid = cand[r][cand[r] >= 0]
        expected = valid[torch.argsort(got[r][cand[r] >= 0], descending=True, stable=True)]
        assert torch.equal(order[r, : len(valid)], expected)
        assert bool((order[r, len(valid) :] == -1).all())
        assert bool((scores[r, :-1] >= scores[r, 1:]).all())


def test_rerank_scores_rejects_bad_candidates(enc):
    rr = CrossEncoderReranker(enc, CrossEncoderConfig(tuning=TextTuningConfig(mode="frozen")))
    with pytest.raises(ValueError, match=r"candidates\[1, 0\] = 5 is not a product index in \[0, 5\)"):
        rr.rerank_scores(["a", "b"], torch.tensor([[0, 1], [5, -1]]), PRODUCTS)
    with pytest.raises(ValueError, match=r"shape \[2, K\]"):
        rr.rerank_scores(["a", "b"], torch.tensor([0, 1]), PRODUCTS)
    with pytest.raises(ValueError, match="same length"):
        rr.score(["a"], ["x", "y"])


@pytest.mark.parametrize("mode", ["full", "prompt", "frozen"])
def test_save_load_reproduces_scores(enc, tiny_bert_dir, mode, tmp_path):
    queries, texts, grades, groups = toy_dataset()
    sub = slice(0, 12)
    rr = CrossEncoderReranker(enc, CrossEncoderConfig(lr=1e-3, batch_size=6, tuning=TextTuningConfig(mode=mode)))
    rr.fit(queries[sub], texts[sub], grades[sub], groups[sub], progress=False)
    rr.save(tmp_path / "rr")
    names = sorted(p.name for p in (tmp_path / "rr").iterdir())
    assert names == ["head.safetensors", "rerank.json", "tuned.safetensors", "tuning.json"]
    fresh = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir))
    loaded = CrossEncoderReranker.load(tmp_path / "rr", fresh)
    assert loaded.config == rr.config
    torch.testing.assert_close(loaded.score(queries, texts), rr.score(queries, texts), atol=1e-6, rtol=0)
    other = TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, max_length=16))
    with pytest.raises(ValueError, match=other.fingerprint):
        CrossEncoderReranker.load(tmp_path / "rr", other)
