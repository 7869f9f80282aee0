"""The report's extra metrics: AUC/GAUC, coverage, popularity bias, graded NDCG, metrics from
position; each against pytrec_eval / ranx where they define it, else a brute-force version."""
import numpy as np
import pytest
import pytrec_eval
import torch

from kgrec.evaluation.metrics import (
    auc_from_rank,
    catalogue_coverage,
    graded_ndcg,
    group_auc,
    hit_matrix,
    metrics_from_position,
    per_user_metrics,
    popularity_counts,
    recommended_popularity,
    target_rank,
)


def _brute_auc(scores, target, excluded):
    """Pairs (target, negative) ordered correctly, ties 1/2, over non-excluded negatives."""
    if target in excluded:
        return 0.0
    negs = [s for p, s in enumerate(scores) if p != target and p not in excluded]
    if not negs:
        return 1.0
    t = scores[target]
    return sum(1.0 if t > s else 0.5 if t == s else 0.0 for s in negs) / len(negs)


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, p = 40, 30
    # integer scores: plenty of ties
    scores = torch.as_tensor(rng.integers(0, 6, size=(n, p)).astype(np.float32))
    targets = torch.as_tensor(rng.integers(0, p, size=n))
    exclude = torch.as_tensor(rng.random((n, p)) < 0.2)
    rank, num = target_rank(scores, targets, exclude)
    auc = auc_from_rank(rank, num)
    for u in range(n):
        excluded = set(np.nonzero(exclude[u].numpy())[0].tolist())
        assert auc[u].item() == pytest.approx(_brute_auc(scores[u].tolist(), int(targets[u]), excluded), abs=1e-6)
        if int(targets[u]) not in excluded:
            assert num[u].item() == p - len(excluded)


def test_auc_matches_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    scores = torch.as_tensor(rng.normal(size=(1, 50)).round(1).astype(np.float32))
    rank, num = target_rank(scores, torch.tensor([7]))
    labels = np.zeros(50)
    labels[7] = 1
    assert auc_from_rank(rank, num).item() == pytest.approx(metrics.roc_auc_score(labels, scores[0].numpy()), abs=1e-6)


def test_auc_full_ranking_formula_and_gauc():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 3)
    rank, num = target_rank(scores, torch.tensor([0, 2, 4]))
    assert rank.tolist() == [1.0, 3.0, 5.0] and num.tolist() == [5.0, 5.0, 5.0]
    auc = auc_from_rank(rank, num)
    assert auc.tolist() == pytest.approx([1.0, 0.5, 0.0])
    # users 0 (two examples) and 1: mean of per-user means
    assert group_auc(auc, torch.tensor([0, 0, 1])) == pytest.approx(((1.0 + 0.5) / 2 + 0.0) / 2)
    assert group_auc(auc, torch.tensor([0, 1, 2])) == pytest.approx(float(auc.mean()))


def test_coverage_and_popularity_brute_force():
    rng = np.random.default_rng(2)
    topk = torch.as_tensor(np.stack([rng.permutation(25)[:10] for _ in range(8)]))
    for k in (1, 5, 10):
        expected = len({int(x) for row in topk[:, :k] for x in row}) / 25
        assert catalogue_coverage(topk, k, 25) == pytest.approx(expected)
    seen = torch.as_tensor(rng.integers(0, 25, size=200))
    pop = popularity_counts(seen, 25)
    assert pop.tolist() == [float((seen == i).sum()) for i in range(25)]
    arp = recommended_popularity(topk, 5, pop)
    for u in range(8):
        assert arp[u].item() == pytest.approx(np.mean([pop[int(i)].item() for i in topk[u, :5]]))


def _graded_case(seed, queries=30, docs=40, k_max=20):
    rng = np.random.default_rng(seed)
    ranked, judged, qrels, run = [], [], {}, {}
    for q in range(queries):
        labels = {d: int(rng.integers(0, 4)) for d in rng.choice(docs, size=rng.integers(1, 15), replace=False).tolist()}
        order = rng.permutation(docs)[:k_max].tolist()
        ranked.append([labels.get(d, 0) for d in order])
        judged.append(list(labels.values()) + [0] * (15 - len(labels)))
        qrels[f"q{q}"] = {f"d{d}": r for d, r in labels.items()}
        run[f"q{q}"] = {f"d{d}": float(k_max - i) for i, d in enumerate(order)}  # strictly decreasing
    return torch.tensor(ranked), torch.tensor(judged), qrels, run


@pytest.mark.parametrize("k", [5, 10, 20])
def test_graded_ndcg_linear_against_pytrec_eval(k):
    ranked, judged, qrels, run = _graded_case(0)
    ours = graded_ndcg(ranked, judged, k, gain="linear")
    trec = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"}).evaluate(run)
    for q in range(len(ranked)):
        assert ours[q].item() == pytest.approx(trec[f"q{q}"][f"ndcg_cut_{k}"], abs=1e-6)


@pytest.mark.parametrize("k", [5, 10])
def test_graded_ndcg_exponential_against_ranx(k):
    from ranx import Qrels, Run, evaluate

    ranked, judged, qrels, run = _graded_case(1)
    ours = graded_ndcg(ranked, judged, k, gain="exponential")
    ranx_run = Run(run)
    evaluate(Qrels(qrels), ranx_run, f"ndcg_burges@{k}", make_comparable=True)
    theirs = ranx_run.scores[f"ndcg_burges@{k}"]  # per query id
    for q in range(len(ranked)):
        assert ours[q].item() == pytest.approx(theirs[f"q{q}"], abs=1e-6)
    # binary labels: both gains agree with the existing binary ndcg
    binary = (ranked > 0).long()
    assert graded_ndcg(binary, (judged > 0).long(), k).numpy() == pytest.approx(
        graded_ndcg(binary, (judged > 0).long(), k, gain="linear").numpy())


def test_graded_ndcg_no_relevant_is_zero():
    assert graded_ndcg(torch.zeros(2, 5), torch.zeros(2, 3), 5).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        graded_ndcg(torch.zeros(1, 5), torch.zeros(1, 3), 5, gain="cubic")


def test_metrics_from_position_match_hit_matrix():
    rng = np.random.default_rng(3)
    topk = torch.as_tensor(np.stack([rng.permutation(60)[:20] for _ in range(50)]))
    targets = torch.as_tensor(rng.integers(0, 60, size=50))
    hits = hit_matrix(topk, targets)
    position = torch.where(hits.any(1), hits.float().argmax(1) + 1, torch.zeros(50)).long()
    ks = (1, 5, 10, 20)
    a = per_user_metrics(hits, torch.ones(50), ks)
    b = metrics_from_position(position, ks)
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_auc_with_infinite_scores():
    """-inf scores on allowed products (a model may emit them): the explicit fallback path."""
    scores = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf"), 2.0],
                           [float("-inf"), 3.0, float("-inf"), 1.0, 0.0]])
    targets = torch.tensor([1, 2])
    exclude = torch.tensor([[False, False, False, True, False], [True, False, False, False, False]])
    rank, num = target_rank(scores, targets, exclude)
    auc = auc_from_rank(rank, num)
    for u in range(2):
        excluded = set(np.nonzero(exclude[u].numpy())[0].tolist())
        assert auc[u].item() == pytest.approx(_brute_auc(scores[u].tolist(), int(targets[u]), excluded))
