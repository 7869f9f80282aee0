"""kgrec.workflow.search_benchmark end to end on a small Home Depot-format file: conversion, ingest,
the query-disjoint split, every model of the benchmark in one run, the hybrid row, the paired
comparison with BM25 — and the proof that the benchmark and ``kgrec evaluate`` are one path."""
from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from kgrec.evaluation.search import evaluate_search
from kgrec.fusion.train import TrainConfig
from kgrec.search.bm25 import BM25Ranker
from kgrec.workflow.evaluate import EvaluateConfig, evaluate_store
from kgrec.workflow.features import encode_text, load_text_encoder
from kgrec.workflow.models import search_examples
from kgrec.workflow.search_benchmark import (
    SEARCH_MODELS,
    SearchBenchmarkConfig,
    homedepot_data,
    run_search_benchmark,
    search_results_markdown,
    search_settings,
)
from kgrec.workflow.store import WorkflowError, open_store

KINDS = ["drill", "saw", "glove", "tape", "lamp", "hose", "rake", "bolt", "pipe", "fan"]
COLOURS = ["red", "blue", "green", "black", "white"]


def write_homedepot_csv(path) -> None:
    """50 queries ("<colour> <kind>") over 50 products; each query judges its exact product
    (rating 3), a same-kind product (2) and a same-colour product (1)."""
    products = {f"{c} {k}": 100000 + i for i, (c, k) in enumerate((c, k) for k in KINDS for c in COLOURS)}
    rows, row_id = [], 1
    for c, k in ((c, k) for k in KINDS for c in COLOURS):
        other_colour = COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)]
        other_kind = KINDS[(KINDS.index(k) + 1) % len(KINDS)]
        for title, grade in ((f"{c} {k}", 3), (f"{other_colour} {k}", 2), (f"{c} {other_kind}", 1)):
            rows.append([row_id, products[title], f"{title.title()} Pro Model {products[title]}", f"{c} {k}", grade])
            row_id += 1
    with path.open("w", newline="", encoding="latin-1") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["id", "product_uid", "product_title", "search_term", "relevance"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd")
    write_homedepot_csv(root / "train.csv")
    return homedepot_data(root / "train.csv", root / "work")


@pytest.fixture(scope="module")
def features(data, tiny_bert_dir):
    return encode_text(data.dataset, load_text_encoder(tiny_bert_dir))


def settings(**overrides):
    """Two epochs of 8 queries per step on the CPU, seed 0."""
    return search_settings(**{"train": TrainConfig(epochs=2, lr=1e-2, patience=2, seed=0), "search_batch_size": 8,
                              "tuned_batch_size": 8, "seed": 0, "device": "cpu", **overrides})


def test_homedepot_data_is_ingested_and_split_by_query(data):
    assert data.counts["loaded"] == 150 and data.counts["rejected"] == 0
    assert data.counts["ingest"]["rejected"] == 0 and data.counts["ingest"]["read"] == data.counts["ingest"]["loaded"] > 150
    dataset = data.dataset
    assert dataset.snapshot.num_products == 50 and len(dataset.titles) == 50
    by_query = dataset.judgements.groupby("query_id")["split"].nunique()
    assert (by_query == 1).all()  # every query in exactly one split
    assert set(dataset.queries["split"]) == {"train", "valid", "test"}
    assert sorted(dataset.judgements["grade"].unique().tolist()) == [0.0, 1.0, 2.0]
    # only the train queries enter the graph
    train_queries = sorted(dataset.queries.loc[dataset.queries["split"] == "train", "query_id"])
    assert dataset.snapshot.id_maps["query"] == train_queries


def test_benchmark_runs_every_model_and_the_hybrid_in_one_run(data, features):
    results = run_search_benchmark(data.dataset, features, SearchBenchmarkConfig(models=SEARCH_MODELS, settings=settings(),
                                                                                 bootstrap=200), progress=False)
    names = [r.model for r in results]
    assert names == ["random", "bm25", "text-zero-shot", "text-only", "graph-only", "fused", "fused + bm25"]
    rows = {r.model: r for r in results}
    # BM25's row is BM25 on the same test queries, scored by hand here
    test = search_examples(data.dataset, features, "test")
    bm25 = BM25Ranker(list(data.dataset.titles)).score_all(test.texts)
    assert rows["bm25"].test["full"]["ndcg@10"] == pytest.approx(evaluate_search(bm25, test, ks=(10,))["ndcg@10"])
    # BM25 finds these queries' words in the titles
    assert rows["bm25"].test["full"]["ndcg@10"] > rows["random"].test["full"]["ndcg@10"]
    hybrid = rows["fused + bm25"]
    curve = {float(w): v for w, v in hybrid.extra["valid_curve"].items()}
    assert hybrid.extra["lexical_weight"] in curve and hybrid.valid_ndcg == max(curve.values())
    assert len(curve) == 21 and 0.0 in curve and 1.0 in curve
    for name in ("text-zero-shot", "text-only", "graph-only", "fused", "fused + bm25"):
        paired = rows[name].extra["vs_bm25_ndcg@10"]
        assert paired["n"] == len(test) and paired["mean_b"] == pytest.approx(rows["bm25"].test["full"]["ndcg@10"])
        assert paired["mean_a"] == pytest.approx(rows[name].test["full"]["ndcg@10"])
    assert rows["fused"].extra["config"]["feature_ids"] is False and rows["fused"].extra["config"]["graph_text_input"] is True
    assert rows["text-zero-shot"].trainable_parameters == 0 and rows["text-zero-shot"].epochs == 0
    assert rows["fused"].epochs == 2 and rows["fused"].extra["batch_size"] == 8
    table = search_results_markdown(results)
    assert "| fused + bm25 | frozen |" in table and "vs BM25" in table


def test_the_benchmark_fused_row_is_evaluate_stores_fused_row(data, features, tiny_bert_dir, tmp_path):
    """One path: on the same store and settings, the benchmark's fused and hybrid rows equal ``kgrec
    evaluate``'s (same split, same model, same metrics, same paired test, same lexical weight)."""
    model_settings = settings()
    bench = {r.model: r for r in run_search_benchmark(
        data.dataset, features, SearchBenchmarkConfig(models=("bm25", "fused", "hybrid"), settings=model_settings,
                                                      bootstrap=200), progress=False)}
    store = open_store(data.store)
    try:
        evaluation = evaluate_store(store, EvaluateConfig(models=("bm25", "fused"), settings=model_settings,
                                                          text_model=tiny_bert_dir, bootstrap=200), tmp_path / "report")
    finally:
        store.close()
    assert evaluation.tasks == ("search",)
    cli = {r.model: r for r in evaluation.search}
    assert list(cli) == list(bench) == ["bm25", "fused", "fused + bm25"]
    for name in cli:
        for protocol in ("full", "rerank"):
            assert cli[name].test[protocol].keys() == bench[name].test[protocol].keys()
            for metric, value in cli[name].test[protocol].items():
                assert bench[name].test[protocol][metric] == pytest.approx(value, abs=1e-6), (name, protocol, metric)
    assert bench["fused"].valid_ndcg == pytest.approx(cli["fused"].valid_ndcg, abs=1e-6)
    assert bench["fused"].extra["valid_curve"] == pytest.approx(cli["fused"].extra["valid_curve"], abs=1e-6)
    assert bench["fused + bm25"].extra["lexical_weight"] == cli["fused + bm25"].extra["lexical_weight"]
    for name in ("fused", "fused + bm25"):
        assert bench[name].extra["vs_bm25_ndcg@10"] == pytest.approx(cli[name].extra["vs_bm25_ndcg@10"], abs=1e-6)


@pytest.mark.parametrize("config, message", [
    (dict(models=("bm25", "hybrid")), "add 'fused'"),
    (dict(models=("bm25", "dense")), "unknown search models"),
    (dict(modes=("frozen", "adapter")), "unknown text tuning 'adapter'"),
])
def test_bad_configs_say_what_is_wrong(config, message):
    with pytest.raises(WorkflowError, match=message):
        SearchBenchmarkConfig(**config)


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


def test_cross_encoder_stage_reranks_the_hybrid_first_stage(data, features):
    config = SearchBenchmarkConfig(models=("bm25", "fused", "hybrid"), settings=replace(settings(), epochs=1),
                                   cross_encoder=True, cross_encoder_queries=10, rerank_depth=5, bootstrap=200)
    results = run_search_benchmark(data.dataset, features, config, progress=False)
    ce = results[-1]
    assert [r.model for r in results] == ["bm25", "fused", "fused + bm25", "fused + bm25 + cross-encoder@5"]
    assert ce.extra["train_queries"] == 10
    # each of the 10 queries: its 3 judged products (one of grade 0) + the 2..5 unjudged ones of the
    # first stage's top 5, at grade 0
    assert 10 * (3 + 2) <= ce.extra["train_pairs"] <= 10 * (3 + 5)
    assert ce.extra["negatives"] == ce.extra["train_pairs"] - 10 * 2
    assert ce.extra["vs_bm25_ndcg@10"]["n"] == len(search_examples(data.dataset, features, "test"))
    assert 0.0 <= ce.test["full"]["ndcg@10"] <= 1.0 and 0.0 <= ce.test["rerank"]["ndcg@10"] <= 1.0


def test_tuned_modes_get_their_own_batch_size_and_epochs(data, features):
    config = SearchBenchmarkConfig(models=("bm25", "fused", "hybrid"), modes=("frozen", "lora"), tuned_epochs=1,
                                   settings=settings(search_batch_size=16, tuned_batch_size=4, max_search_queries=20),
                                   bootstrap=200)
    results = run_search_benchmark(data.dataset, features, config, progress=False)
    rows = {r.model: r for r in results}
    assert list(rows) == ["bm25", "fused", "fused[lora]", "fused + bm25", "fused[lora] + bm25"]
    assert rows["fused"].extra["batch_size"] == 16 and rows["fused"].epochs == 2
    assert rows["fused[lora]"].extra["batch_size"] == 4 and rows["fused[lora]"].epochs == 1
    assert rows["fused[lora]"].extra["text_tower"]["trainable"] > 0 and rows["fused"].mode == "frozen"
    assert rows["fused[lora] + bm25"].mode == "lora"


def test_max_search_queries_samples_the_train_queries(data, features):
    everything = search_examples(data.dataset, features, "train")
    some = search_examples(data.dataset, features, "train", limit=7, seed=3)
    again = search_examples(data.dataset, features, "train", limit=7, seed=3)
    assert len(some) == 7 and some.texts == again.texts and set(some.texts) < set(everything.texts)
    # the sampled queries keep their graph nodes (the graph holds every train query)
    nodes = {q: i for i, q in enumerate(data.dataset.snapshot.id_maps["query"])}
    text_to_id = dict(zip(data.dataset.queries["query"], data.dataset.queries["query_id"]))
    assert some.query_nodes.tolist() == [nodes[text_to_id[t]] for t in some.texts]


@pytest.fixture(scope="module")
def demo_like(tiny_tables, tiny_bert_dir, tmp_path_factory):
    """The tiny catalogue through the one path: tables -> ingest -> dataset (leave-one-out), text features,
    and the HEM query of every product."""
    from kgrec.ingest.tables import write_tables
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.ingest import ingest_files
    from kgrec.workflow.search_benchmark import category_queries

    root = tmp_path_factory.mktemp("personal")
    write_tables(tiny_tables, root / "data")
    ingest_files([root / "data"], root / "store")
    store = open_store(root / "store")
    try:
        dataset = load_dataset(store)
        queries = category_queries(store, dataset.snapshot)
    finally:
        store.close()
    return dataset, encode_text(dataset, load_text_encoder(tiny_bert_dir)), queries


def test_category_queries_are_the_products_paths_without_the_root(demo_like, tiny_tables):
    from kgrec.search.examples import category_query

    dataset, _, queries = demo_like
    paths = dict(zip(tiny_tables.products["product_id"], tiny_tables.products["category_path"]))
    assert queries == [category_query(paths[p]) for p in dataset.snapshot.id_maps["product"]]
    assert set(queries) == {"Power", "Hand", ""}  # P00, P05, ... have no category


def test_personalized_search_trains_rec_only_and_multi_task_side_by_side(demo_like):
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import SOFTMAX_TRAINING
    from kgrec.search.examples import category_path_examples
    from kgrec.workflow.models import ModelSettings
    from kgrec.workflow.search_benchmark import PERSONAL_MODELS, personal_results_markdown, run_personalized_search

    dataset, features, queries = demo_like
    query_vectors = features.encoder.encode(queries)
    settings = ModelSettings(train=replace(SOFTMAX_TRAINING, epochs=2, batch_size=16, device="cpu"), fused=FusedConfig(),
                             search_batch_size=16)
    results, rec = run_personalized_search(dataset, features, queries, query_vectors, settings, progress=False)
    rows = {r.model: r for r in results}
    assert tuple(rows) == PERSONAL_MODELS
    # BM25's row, by hand: the test targets' category queries, the user's history excluded
    test = category_path_examples(dataset.snapshot, "test", queries, query_vectors, FusedConfig().max_history)
    assert len(test) == 10  # one leave-one-out target per user
    bm25 = BM25Ranker(list(dataset.snapshot.product_text)).score_all(list(test.texts))
    by_hand = evaluate_search(bm25, test, ks=(10,), protocol="full", exclude_history=True)
    assert rows["bm25"].test["full"] == pytest.approx(by_hand)
    # only the multi-task model was validated (and early-stopped) on search; both on recommendation
    assert rows["fused (rec only)"].valid_ndcg is None
    multi = rows["fused (multi-task, personalised)"]
    assert multi.valid_ndcg is not None and 0.0 <= multi.valid_ndcg <= 1.0
    assert rows["fused (multi-task, anonymous)"].extra == multi.extra  # one model, scored two ways
    assert set(rec) == {"fused (rec only)", "fused (multi-task)"}
    assert all(0.0 <= v <= 1.0 for m in rec.values() for v in m.values())
    table = personal_results_markdown(results, rec)
    assert "| fused (multi-task, personalised) |" in table and "| fused (rec only) |" in table
