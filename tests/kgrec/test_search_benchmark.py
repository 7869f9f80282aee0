"""kgrec.workflow.search_benchmark end to end on a small Home Depot-format file: conversion, ingest,
the query-disjoint split, every model of the benchmark in one run, the hybrid row and the
paired comparison with BM25."""
from __future__ import annotations

import csv

import pytest
import torch

from kgrec.evaluation.search import evaluate_search
from kgrec.fusion.train import TrainConfig
from kgrec.search.bm25 import BM25Ranker
from kgrec.workflow.search_benchmark import (
    SEARCH_MODELS,
    SearchBenchmarkConfig,
    _split_examples,
    homedepot_data,
    run_search_benchmark,
    search_results_markdown,
)

KINDS = ["drill", "saw", "glove", "tape", "lamp", "hose", "rake", "bolt", "pipe", "fan"]
COLOURS = ["red", "blue", "green", "black", "white"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """50 queries ("<colour> <kind>") over 50 products; each query judges its exact product
    (grade 3), a same-kind product (2) and a same-colour product (1)."""
    root = tmp_path_factory.mktemp("hd")
    products = {f"{c} {k}": 100000 + i for i, (c, k) in enumerate((c, k) for k in KINDS for c in COLOURS)}
    rows, row_id = [], 1
    for i, (c, k) in enumerate((c, k) for k in KINDS for c in COLOURS):
        other_colour = COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)]
        other_kind = KINDS[(KINDS.index(k) + 1) % len(KINDS)]
        for title, grade in ((f"{c} {k}", 3), (f"{other_colour} {k}", 2), (f"{c} {other_kind}", 1)):
            rows.append([row_id, products[title], f"{title.title()} Pro Model {products[title]}", f"{c} {k}", grade])
            row_id += 1
    path = root / "train.csv"
    with path.open("w", newline="", encoding="latin-1") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["id", "product_uid", "product_title", "search_term", "relevance"])
        writer.writerows(rows)
    return homedepot_data(path, root / "work", seed=0)


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir):
    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(model_path=tiny_bert_dir, max_length=16))


def test_homedepot_data_is_split_by_query(data):
    assert data.counts["loaded"] == 150 and data.counts["rejected"] == 0
    assert data.snapshot.num_products == 50 and len(data.titles) == 50
    by_query = data.judgements.groupby("query_id")["split"].nunique()
    assert (by_query == 1).all()  # every query in exactly one split
    assert set(data.queries["split"]) == {"train", "valid", "test"}
    assert sorted(data.judgements["grade"].unique().tolist()) == [0.0, 1.0, 2.0]


def test_benchmark_runs_every_model_and_the_hybrid_in_one_run(data, encoder):
    config = SearchBenchmarkConfig(
        models=SEARCH_MODELS, modes=("frozen",), batch_size=8,
        train=TrainConfig(epochs=2, lr=1e-2, patience=2, seed=0),
    )
    results = run_search_benchmark(data, encoder, config, progress=False)
    names = [r.model for r in results]
    assert names == ["random", "bm25", "text-zero-shot", "text-only", "graph-only", "fused", "fused + bm25"]
    rows = {r.model: r for r in results}
    # BM25's row is BM25 on the same test queries, scored by hand here
    index = {q: i for i, q in enumerate(data.queries["query_id"])}
    qv = encoder.encode(list(data.queries["query"]))
    test = _split_examples(data, "test", qv, index, None)
    bm25 = BM25Ranker(list(data.titles)).score_all(test.texts)
    assert rows["bm25"].test["full"]["ndcg@10"] == pytest.approx(evaluate_search(bm25, test, ks=(10,))["ndcg@10"])
    # BM25 finds these queries' words in the titles
    assert rows["bm25"].test["full"]["ndcg@10"] > rows["random"].test["full"]["ndcg@10"]
    hybrid = rows["fused + bm25"]
    curve = {float(w): v for w, v in hybrid.extra["valid_curve"].items()}
    assert hybrid.extra["lexical_weight"] in curve and hybrid.valid_ndcg == max(curve.values())
    assert len(curve) == 21 and 0.0 in curve and 1.0 in curve
    for name in ("text-only", "graph-only", "fused", "fused + bm25"):
        paired = rows[name].extra["vs_bm25_ndcg@10"]
        assert paired["n"] == len(test) and paired["mean_b"] == pytest.approx(rows["bm25"].test["full"]["ndcg@10"])
        assert paired["mean_a"] == pytest.approx(rows[name].test["full"]["ndcg@10"])
    assert rows["fused"].extra["config"]["feature_ids"] is False
    table = search_results_markdown(results)
    assert "| fused + bm25 | frozen |" in table and "vs BM25" in table


def test_hybrid_needs_the_fused_model():
    with pytest.raises(ValueError, match="fused"):
        SearchBenchmarkConfig(models=("bm25", "hybrid"))


def test_rerank_training_pairs_add_unjudged_first_stage_negatives():
    from kgrec.fusion.data import SearchBatch
    from kgrec.workflow.search_benchmark import rerank_training_pairs

    batch = SearchBatch(torch.zeros(2, 3), torch.tensor([[4, 1], [2, -1]]), torch.tensor([[2.0, 0.0], [1.0, 0.0]]),
                        torch.full((2,), -1), torch.full((2, 1), -1), torch.full((2,), -1), ["a", "b"])
    first = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.2, 0.0], [0.5, 0.0, 0.9, 0.1, 0.0, 0.7]])
    rows, products, grades = rerank_training_pairs(batch, first, depth=3)
    pairs = sorted(zip(rows.tolist(), products.tolist(), grades.tolist()))
    # query 0: judged 4 (2) and 1 (0); top-3 = 1, 3, 4 -> 3 is new. query 1: judged 2; top-3 = 2, 5, 0
    assert pairs == [(0, 1, 0.0), (0, 3, 0.0), (0, 4, 2.0), (1, 0, 0.0), (1, 2, 1.0), (1, 5, 0.0)]
    assert rows.tolist() == sorted(rows.tolist())  # each query's pairs together


def test_cross_encoder_stage_reranks_the_hybrid_first_stage(data, encoder):
    config = SearchBenchmarkConfig(
        models=("bm25", "fused", "hybrid"), modes=("frozen",), batch_size=8, cross_encoder=True,
        cross_encoder_queries=10, rerank_depth=5, train=TrainConfig(epochs=1, lr=1e-2, patience=1, seed=0),
    )
    results = run_search_benchmark(data, encoder, config, progress=False)
    ce = results[-1]
    assert ce.model == "fused + bm25 + cross-encoder@5" and ce.extra["train_queries"] == 10
    assert ce.extra["negatives"] > 0 and ce.extra["train_pairs"] > ce.extra["negatives"]
    assert "vs_bm25_ndcg@10" in ce.extra and 0.0 <= ce.test["full"]["ndcg@10"] <= 1.0


def test_tuned_modes_get_their_own_batch_size_and_epochs(data, encoder):
    config = SearchBenchmarkConfig(
        models=("bm25", "fused", "hybrid"), modes=("frozen", "lora"), batch_size=16, tuned_batch_size=4, tuned_epochs=1,
        train=TrainConfig(epochs=2, lr=1e-2, patience=2, seed=0),
    )
    results = run_search_benchmark(data, encoder, config, progress=False)
    rows = {r.model: r for r in results}
    assert list(rows) == ["bm25", "fused", "fused[lora]", "fused + bm25", "fused[lora] + bm25"]
    assert rows["fused"].extra["batch_size"] == 16 and rows["fused"].epochs == 2
    assert rows["fused[lora]"].extra["batch_size"] == 4 and rows["fused[lora]"].epochs == 1
    assert rows["fused[lora]"].extra["text_tower"]["trainable"] > 0
    assert rows["fused[lora] + bm25"].mode == "lora"
