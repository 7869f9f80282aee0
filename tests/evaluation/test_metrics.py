"""kgrec.evaluation.metrics against two independent implementations: pytrec_eval (trec_eval) and ranx."""
import numpy as np
import pytest
import pytrec_eval
import torch

from kgrec.evaluation.metrics import hit_matrix, mean_metrics, per_user_metrics

K = 20


def _random_run(seed: int, users: int = 60, items: int = 50):
    rng = np.random.default_rng(seed)
    topk = np.stack([rng.permutation(items)[:K] for _ in range(users)])
    relevant = [set(rng.choice(items, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(users)]
    hits = torch.tensor([[int(p) in rel for p in row] for row, rel in zip(topk, relevant)])
    n_rel = torch.tensor([len(r) for r in relevant])
    qrels = {f"u{u}": {f"p{p}": 1 for p in rel} for u, rel in enumerate(relevant)}
    # strictly decreasing scores so no tie-breaking rule can reorder the run
    run = {f"u{u}": {f"p{p}": float(K - r) for r, p in enumerate(row)} for u, row in enumerate(topk)}
    return hits, n_rel, qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [5, 10, 20])
def test_against_pytrec_eval(seed, k):
    hits, n_rel, qrels, run = _random_run(seed)
    ours = per_user_metrics(hits, n_rel, (k,))
    measures = {f"ndcg_cut.{k}", f"recall.{k}", f"P.{k}"}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for u in range(len(hits)):
        t = trec[f"u{u}"]
        assert ours[f"ndcg@{k}"][u].item() == pytest.approx(t[f"ndcg_cut_{k}"], abs=1e-6)
        assert ours[f"recall@{k}"][u].item() == pytest.approx(t[f"recall_{k}"], abs=1e-6)
        assert ours[f"precision@{k}"][u].item() == pytest.approx(t[f"P_{k}"], abs=1e-6)


@pytest.mark.parametrize("seed", [3])
def test_against_ranx(seed):
    from ranx import Qrels, Run, evaluate

    hits, n_rel, qrels, run = _random_run(seed)
    ours = mean_metrics(per_user_metrics(hits, n_rel, (10, 20)))
    theirs = evaluate(Qrels(qrels), Run(run), ["mrr@10", "map@20", "hit_rate@10", "ndcg@20"], make_comparable=True)
    assert ours["mrr@10"] == pytest.approx(theirs["mrr@10"], abs=1e-6)
    assert ours["map@20"] == pytest.approx(theirs["map@20"], abs=1e-6)
    assert ours["hit@10"] == pytest.approx(theirs["hit_rate@10"], abs=1e-6)
    assert ours["ndcg@20"] == pytest.approx(theirs["ndcg@20"], abs=1e-6)


def test_single_target_values():
    topk = torch.tensor([[3, 1, 2], [5, 6, 7], [9, 8, 4]])
    hits = hit_matrix(topk, torch.tensor([3, 9, 4]))
    m = per_user_metrics(hits, torch.ones(3), (1, 3))
    assert m["ndcg@3"].tolist() == pytest.approx([1.0, 0.0, 0.5])  # ranks 1, none, 3
    assert m["mrr@3"].tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    assert m["recall@1"].tolist() == [1.0, 0.0, 0.0]


def test_too_few_ranked_items():
    with pytest.raises(ValueError, match="at least 10"):
        per_user_metrics(torch.zeros(2, 5, dtype=torch.bool), torch.ones(2), (10,))
