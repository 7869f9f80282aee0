"""kgrec.evaluation.search_metrics against ranx and pytrec_eval on random graded runs, plus hand-computed cases."""
import math

import numpy as np
import pytest
import pytrec_eval
import torch

from kgrec.evaluation.search_metrics import mean_search_metrics, rerank_topk, search_metrics_from_topk
from kgrec.kg.judgements import SearchJudgements


def _judgements(products: list[list[int]], grades: list[list[float]]) -> SearchJudgements:
    j = max(len(p) for p in products)
    prod = torch.tensor([p + [-1] * (j - len(p)) for p in products], dtype=torch.long)
    grad = torch.tensor([g + [0.0] * (j - len(g)) for g in grades], dtype=torch.float32)
    ids = [f"q{i}" for i in range(len(products))]
    return SearchJudgements(query_ids=ids, queries=ids, products=prod, grades=grad)


def _random_case(seed: int, q: int, k: int, num_products: int, max_grade: int):
    """Random judged sets (integer grades 0..max_grade, some queries with no relevant product)
    and random ranked lists over the whole catalogue (unjudged products included, no repeats,
    some lists padded with -1); also the same data as trec/ranx dicts with distinct scores."""
    rng = np.random.default_rng(seed)
    products, grades, ranked = [], [], []
    for _ in range(q):
        n = int(rng.integers(1, 9))
        judged = rng.choice(num_products, size=n, replace=False)
        products.append(judged.tolist())
        grades.append(rng.integers(0, max_grade + 1, size=n).astype(float).tolist())
        length = int(rng.integers(max(1, k // 2), k + 1))
        pool = np.concatenate([judged, rng.choice(num_products, size=min(3 * k, num_products), replace=False)])
        _, first = np.unique(pool, return_index=True)
        pool = pool[np.sort(first)]
        rng.shuffle(pool)
        ranked.append(pool[:length].tolist() + [-1] * (k - length))
    topk = torch.tensor(ranked, dtype=torch.long)
    return topk, _judgements(products, grades)


def _dicts(topk: torch.Tensor, judg: SearchJudgements, threshold: float | None = None):
    """qrels / run dicts; with ``threshold`` the grades become binary ``grade >= threshold``."""
    qrels, run = {}, {}
    for i, qid in enumerate(judg.query_ids):
        qrels[qid] = {}
        for p, g in zip(judg.products[i].tolist(), judg.grades[i].tolist()):
            if p >= 0:
                qrels[qid][f"d{p}"] = int(g >= threshold) if threshold is not None else int(g)
        k = topk.shape[1]
        run[qid] = {f"d{p}": float(k - r) for r, p in enumerate(topk[i].tolist()) if p >= 0}
    return qrels, run


def test_against_ranx():
    """Full-catalogue lists of several shapes and rerank-protocol lists, checked in one ranx call
    (ranx compiles each metric with numba on first use: one call keeps the file fast)."""
    from ranx import Qrels, Run, evaluate

    qrels, run, ours, no_relevant = {}, {}, {}, 0
    for seed, q, k, num_products, max_grade in [(0, 40, 10, 60, 2), (1, 25, 12, 30, 3), (2, 60, 10, 500, 1)]:
        topk, judg = _random_case(seed, q, k, num_products, max_grade)
        no_relevant += int((judg.num_relevant() == 0).sum())
        _add(ours, qrels, run, f"s{seed}", search_metrics_from_topk(topk, judg, ks=(10,)), *_dicts(topk, judg), judg)
    # rerank protocol: each query's judged products with random distinct scores
    _, judg = _random_case(7, 30, 10, 50, 2)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randperm(judg.products.numel(), generator=gen).view(judg.products.shape).float()
    rerank_run = {qid: {f"d{p}": float(s) for p, s in zip(judg.products[i].tolist(), scores[i].tolist()) if p >= 0}
                  for i, qid in enumerate(judg.query_ids)}
    per_query = search_metrics_from_topk(rerank_topk(scores, judg), judg, ks=(10,))
    _add(ours, qrels, run, "rerank", per_query, _dicts(torch.zeros(len(judg), 0, dtype=torch.long), judg)[0],
         rerank_run, judg)

    ranx_run = Run(run)
    names = {"ndcg@10": "ndcg_burges@10", "mrr@10": "mrr@10", "map@10": "map@10", "recall@10": "recall@10"}
    evaluate(Qrels(qrels), ranx_run, list(names.values()), make_comparable=True)
    assert len(ours) == 40 + 25 + 60 + 30 and no_relevant > 0  # incl. queries with nothing relevant (all 0)
    for qid, values in ours.items():
        for mine, theirs in names.items():
            assert values[mine] == pytest.approx(ranx_run.scores[theirs][qid], abs=1e-6), (mine, qid)


def _add(ours, qrels, run, prefix, per_query, case_qrels, case_run, judg):
    for i, qid in enumerate(judg.query_ids):
        key = f"{prefix}-{qid}"
        qrels[key], run[key] = case_qrels[qid], case_run[qid]
        ours[key] = {name: float(v[i]) for name, v in per_query.items()}


@pytest.mark.parametrize("seed,threshold", [(3, 1.0), (4, 2.0), (5, 3.0)])
def test_binary_metrics_against_pytrec_eval(seed, threshold):
    topk, judg = _random_case(seed, 50, 10, 80, 3)
    ours = search_metrics_from_topk(topk, judg, ks=(5, 10), relevant_threshold=threshold)
    qrels, run = _dicts(topk, judg, threshold=threshold)  # binary: grade >= threshold -> 1, else 0
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map_cut.5,10", "recall.5,10"}).evaluate(run)
    for i, qid in enumerate(judg.query_ids):
        t = trec[qid]
        assert ours["mrr@10"][i].item() == pytest.approx(t["recip_rank"], abs=1e-6)  # runs hold <= 10 products
        for k in (5, 10):
            assert ours[f"map@{k}"][i].item() == pytest.approx(t[f"map_cut_{k}"], abs=1e-6)
            assert ours[f"recall@{k}"][i].item() == pytest.approx(t[f"recall_{k}"], abs=1e-6)


def test_ndcg_with_binary_grades_against_pytrec_eval():
    """With grades 0/1 the exponential gain 2^g - 1 equals trec_eval's linear gain."""
    topk, judg = _random_case(6, 50, 10, 40, 1)
    ours = search_metrics_from_topk(topk, judg, ks=(5, 10))
    qrels, run = _dicts(topk, judg)
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5,10"}).evaluate(run)
    for i, qid in enumerate(judg.query_ids):
        for k in (5, 10):
            assert ours[f"ndcg@{k}"][i].item() == pytest.approx(trec[qid][f"ndcg_cut_{k}"], abs=1e-6)


def test_hand_computed_fractional_grades():
    # Home Depot style: labels 3, 2.33, 1.67, 1 -> grades 2, 1.33, 0.67, 0 (grade_offset 1)
    judg = _judgements([[10, 11, 12, 13]], [[2.0, 4 / 3, 2 / 3, 0.0]])
    topk = torch.tensor([[12, 99, 10, 13, 11]])  # 99 unjudged
    out = search_metrics_from_topk(topk, judg, ks=(3, 10))
    g = lambda x: 2.0**x - 1.0
    d = lambda r: 1.0 / math.log2(r + 1)
    dcg3 = g(2 / 3) * d(1) + 0.0 * d(2) + g(2.0) * d(3)
    idcg3 = g(2.0) * d(1) + g(4 / 3) * d(2) + g(2 / 3) * d(3)
    dcg10 = dcg3 + 0.0 * d(4) + g(4 / 3) * d(5)
    idcg10 = idcg3  # the fourth judged grade is 0
    assert out["ndcg@3"].item() == pytest.approx(dcg3 / idcg3, rel=1e-6)
    assert out["ndcg@10"].item() == pytest.approx(dcg10 / idcg10, rel=1e-6)
    # binary relevance grade >= 1: products 10 (rank 3) and 11 (rank 5); R = 2
    assert out["mrr@3"].item() == pytest.approx(1 / 3)
    assert out["map@3"].item() == pytest.approx((1 / 3) / 2)
    assert out["map@10"].item() == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert out["recall@3"].item() == pytest.approx(0.5)
    assert out["recall@10"].item() == pytest.approx(1.0)
    # a lower threshold makes product 12 (grade 0.67) relevant too
    low = search_metrics_from_topk(topk, judg, ks=(3,), relevant_threshold=0.5)
    assert low["mrr@3"].item() == pytest.approx(1.0)
    assert low["map@3"].item() == pytest.approx((1.0 + 2 / 3) / 3)


def test_short_lists_padding_and_nothing_relevant():
    judg = _judgements([[1, 2], [3], [4, 5]], [[1.0, 2.0], [0.0], [1.0, 0.0]])
    topk = torch.tensor([[2, -1, 1], [3, 7, -1], [-1, -1, -1]])  # K = 3 < 10; -1 ranks hold nothing
    out = search_metrics_from_topk(topk, judg, ks=(1, 10))
    g = lambda x: 2.0**x - 1.0
    ideal = g(2) + g(1) / math.log2(3)
    assert out["ndcg@10"][0].item() == pytest.approx((g(2) + g(1) / math.log2(4)) / ideal, rel=1e-6)
    assert out["map@10"][0].item() == pytest.approx((1 + 2 / 3) / 2)
    assert out["recall@1"][0].item() == pytest.approx(0.5)
    assert [out[m][1].item() for m in ("ndcg@10", "mrr@10", "map@10", "recall@10")] == [0.0, 0.0, 0.0, 0.0]
    assert [out[m][2].item() for m in ("ndcg@10", "mrr@10", "map@10", "recall@10")] == [0.0, 0.0, 0.0, 0.0]
    means = mean_search_metrics(out)
    assert means["recall@10"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert set(means) == {f"{m}@{k}" for m in ("ndcg", "mrr", "map", "recall") for k in (1, 10)}


def test_rerank_topk_orders_judged_products():
    judg = _judgements([[5, 6, 7, 8], [9, 4]], [[0.0, 2.0, 1.0, 0.0], [1.0, 0.0]])
    scores = torch.tensor([[0.1, 0.9, 0.9, float("-inf")], [float("-inf"), 3.0, 123.0, 7.0]])
    ranked = rerank_topk(scores, judg)
    # ties in column order (6 before 7), -inf last among judged, padding (-1) after everything
    assert ranked.tolist() == [[6, 7, 5, 8], [4, 9, -1, -1]]
    out = search_metrics_from_topk(ranked, judg)
    assert out["ndcg@10"][0].item() == pytest.approx(1.0)
    assert out["mrr@10"][1].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="NaN"):
        rerank_topk(torch.tensor([[0.1, float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]), judg)
    with pytest.raises(ValueError, match=r"\[Q, J\]"):
        rerank_topk(torch.zeros(2, 3), judg)


def test_bad_inputs():
    judg = _judgements([[1, 2]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="more than once"):
        search_metrics_from_topk(torch.tensor([[1, 3, 1]]), judg)
    with pytest.raises(ValueError, match=r"\[Q=1, K\]"):
        search_metrics_from_topk(torch.tensor([1, 2]), judg)
    with pytest.raises(ValueError, match="relevant_threshold"):
        search_metrics_from_topk(torch.tensor([[1, 2]]), judg, relevant_threshold=0.0)
    with pytest.raises(ValueError, match="ks"):
        search_metrics_from_topk(torch.tensor([[1, 2]]), judg, ks=(0,))
    with pytest.raises(ValueError, match=">= 0"):
        search_metrics_from_topk(torch.tensor([[1, -2]]), judg)
    assert math.isnan(mean_search_metrics({"ndcg@10": torch.zeros(0)})["ndcg@10"])  # no queries
