"""kgrec.search.hybrid: per-query standardisation, the dense/BM25 mix, the validation-chosen weight."""
import math

import pytest
import torch

from kgrec.evaluation.search import evaluate_search
from kgrec.fusion.data import SearchBatch
from kgrec.search.bm25 import BM25Ranker
from kgrec.search.hybrid import DEFAULT_GRID, HybridSearch, choose_lexical_weight, mix, standardize


def _batch(products, grades, texts=None):
    products = torch.tensor(products)
    n = products.shape[0]
    return SearchBatch(torch.zeros(n, 4), products, torch.tensor(grades, dtype=torch.float32), torch.full((n,), -1),
                       torch.full((n, 1), -1), torch.full((n,), -1), texts)


def test_standardize_rows_and_keeps_excluded_products_out():
    s = torch.tensor([[1.0, 2.0, 3.0, float("-inf")], [5.0, 5.0, 5.0, 5.0]])
    z = standardize(s)
    assert z[0, :3].tolist() == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], abs=1e-6)  # population std
    assert z[0, 3] == float("-inf")
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a constant row carries no ranking


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_mix_is_the_weighted_sum_of_standardised_rows(weight):
    g = torch.Generator().manual_seed(0)
    dense, lexical = torch.randn(3, 7, generator=g), 10 * torch.rand(3, 7, generator=g)
    expected = (1 - weight) * standardize(dense) + weight * standardize(lexical)
    assert torch.allclose(mix(dense, lexical, weight), expected, atol=1e-6)
    # invariant to each ranker's scale and offset, per query
    assert torch.allclose(mix(3 * dense + 1, lexical * 0.01 - 4, weight), expected, atol=1e-5)


def test_mix_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        mix(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix(torch.zeros(2, 3), torch.zeros(2, 3), 1.5)


def test_choose_lexical_weight_picks_the_best_grid_point_on_the_given_queries():
    # query 0: only the dense ranker finds product 0; query 1: only BM25 finds product 3
    dense = torch.tensor([[5.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 9.0]])
    lexical = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0, 0.0]])
    batch = _batch([[0], [3]], [[2.0], [2.0]])
    choice = choose_lexical_weight(dense, lexical, batch, grid=(0.0, 0.5, 1.0), metric="ndcg@1")
    by_hand = {w: evaluate_search(mix(dense, lexical, w), batch, ks=(1,))["ndcg@1"] for w in (0.0, 0.5, 1.0)}
    assert choice.curve == pytest.approx(by_hand)
    assert by_hand[0.5] == 1.0 and by_hand[0.0] == 0.5 and by_hand[1.0] == 0.5
    assert choice.weight == 0.5 and choice.best == 1.0
    tie = choose_lexical_weight(dense, lexical, _batch([[0], [4]], [[2.0], [2.0]]), grid=(0.0, 0.1), metric="ndcg@1")
    assert tie.weight == 0.0  # dense alone is already perfect: ties go to the smaller weight
    assert DEFAULT_GRID[0] == 0.0 and DEFAULT_GRID[-1] == 1.0 and len(DEFAULT_GRID) == 21


def test_hybrid_search_scores_queries_with_both_rankers():
    titles = ["cordless drill 18v", "red work gloves", "blue painters tape", "drill bit set"]
    bm25 = BM25Ranker(titles)
    texts = ["drill", "tape"]
    dense_scores = torch.tensor([[0.1, 0.9, 0.0, 0.2], [0.0, 0.3, 0.8, 0.1]])
    hybrid = HybridSearch(lambda batch: dense_scores, bm25, weight=0.4)
    out = hybrid(_batch([[0], [2]], [[2.0], [2.0]], texts))
    assert torch.allclose(out, mix(dense_scores, bm25.score_all(texts), 0.4), atol=1e-6)
    dense_only = standardize(dense_scores)
    assert out[0, 0] - out[0, 1] > dense_only[0, 0] - dense_only[0, 1]  # BM25 pulls the drill towards the top
    with pytest.raises(ValueError, match="texts"):
        hybrid(_batch([[0]], [[2.0]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        HybridSearch(lambda b: dense_scores, bm25, weight=-0.1)
