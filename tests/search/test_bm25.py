"""kgrec.search.bm25.BM25Ranker against a BM25 written out with numpy, plus edge cases."""
import math

import numpy as np
import pytest
import torch

from kgrec.search.bm25 import METHODS, BM25Ranker

CORPUS = [
    "cordless drill kit drill bits",
    "hammer drill",
    "garden hose reel hose hose",
    "",  # a product without text
    "paint roller kit",
    "led light bulb light",
    "drill",
    "garden hose",
]
QUERIES = ["drill", "garden hose", "hose hose kit", "zzz unknown", "light drill paint", ""]


def reference_scores(corpus, queries, method, k1=1.5, b=0.75, delta=0.5) -> np.ndarray:
    """``[Q, P]`` BM25 from the textbook formulas (Kamphuis et al. 2020 variants), whitespace tokens."""
    docs = [d.split() for d in corpus]
    n = len(docs)
    lengths = np.array([len(d) for d in docs], dtype=float)
    avg = lengths.mean()
    vocab = sorted({t for d in docs for t in d})
    df = {t: sum(t in d for d in docs) for t in vocab}
    out = np.zeros((len(queries), n))
    for qi, q in enumerate(queries):
        for t in q.split():  # a repeated query token counts again
            if t not in df:
                continue
            idf = {
                "lucene": math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)),
                "robertson": math.log(max(1.0, (n - df[t] + 0.5) / (df[t] + 0.5))),
                "atire": math.log(n / df[t]),
                "bm25l": math.log((n + 1) / (df[t] + 0.5)),
                "bm25+": math.log((n + 1) / df[t]),
            }[method]
            for d, doc in enumerate(docs):
                tf = doc.count(t)
                norm = 1 - b + b * lengths[d] / avg
                if method in ("lucene", "robertson"):
                    part = tf / (tf + k1 * norm)
                elif method == "atire":
                    part = tf * (k1 + 1) / (tf + k1 * norm)
                elif method == "bm25l":
                    c = tf / norm
                    part = (k1 + 1) * (c + delta) / (k1 + c + delta)
                else:  # bm25+
                    part = tf * (k1 + 1) / (tf + k1 * norm) + delta
                out[qi, d] += idf * part
    return out


@pytest.mark.parametrize("method", METHODS)
def test_scores_match_the_formula(method):
    ranker = BM25Ranker(CORPUS, k1=1.2, b=0.6, method=method, stopwords=None, stemmer=None)
    expected = reference_scores(CORPUS, QUERIES, method, k1=1.2, b=0.6)
    assert np.allclose(ranker.score_all(QUERIES).numpy(), expected, rtol=1e-5, atol=1e-5)
    # bm25s' own per-query scorer agrees (same index)
    for qi, q in enumerate(QUERIES[:3]):
        assert np.allclose(ranker.retriever.get_scores(q.split()), expected[qi], rtol=1e-5, atol=1e-5)
    candidates = torch.tensor([[6, 1, 0, -1], [7, 2, 3, 0], [2, 4, -1, -1], [0, 1, 2, 3], [5, 6, 4, -1], [0, -1, -1, -1]])
    got = ranker.score_candidates(QUERIES, candidates)
    for qi in range(len(QUERIES)):
        for j, p in enumerate(candidates[qi].tolist()):
            if p < 0:
                assert got[qi, j].item() == float("-inf")
            else:
                assert got[qi, j].item() == pytest.approx(expected[qi, p], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_top_k_is_the_reference_ranking_with_ties_by_index(method):
    ranker = BM25Ranker(CORPUS, method=method, stopwords=None, stemmer=None, batch_size=2)  # several batches
    expected = reference_scores(CORPUS, QUERIES, method)
    idx, val = ranker.top_k(QUERIES, 5)
    assert idx.shape == (len(QUERIES), 5) and idx.dtype == torch.long and val.dtype == torch.float32
    for qi in range(len(QUERIES)):
        scores = np.round(expected[qi], 5)
        order = sorted(range(len(CORPUS)), key=lambda p: (-scores[p], p))[:5]
        assert idx[qi].tolist() == order
        assert np.allclose(val[qi].numpy(), expected[qi][order], rtol=1e-5, atol=1e-5)
    # a query with no known token: products 0..k-1, score 0
    assert idx[3].tolist() == [0, 1, 2, 3, 4] and val[3].tolist() == [0.0] * 5
    assert idx[5].tolist() == [0, 1, 2, 3, 4]  # the empty query too


def test_top_k_longer_than_the_catalogue_and_bad_arguments():
    ranker = BM25Ranker(CORPUS, stopwords=None, stemmer=None)
    idx, val = ranker.top_k(["garden hose"], 11)
    assert idx[0, :8].tolist() == [7, 2] + [0, 1, 3, 4, 5, 6] and idx[0, 8:].tolist() == [-1, -1, -1]
    assert torch.isinf(val[0, 8:]).all() and (val[0, 8:] < 0).all() and (val[0, :2] > 0).all()
    assert ranker.top_k([], 3)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="k must be"):
        ranker.top_k(["drill"], 0)
    with pytest.raises(ValueError, match=r"\[Q=1, J\]"):
        ranker.score_candidates(["drill"], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="product indices"):
        ranker.score_candidates(["drill"], torch.tensor([[1, 8]]))
    with pytest.raises(ValueError, match="method"):
        BM25Ranker(CORPUS, method="bm26")
    with pytest.raises(ValueError, match="empty"):
        BM25Ranker([])
    with pytest.raises(ValueError, match="product text 1"):
        BM25Ranker(["a b", None])


def test_ties_at_the_cut_take_the_lowest_indices():
    corpus = ["red drill", "blue saw", "red drill", "red drill", "green drill"]
    ranker = BM25Ranker(corpus, stopwords=None, stemmer=None)
    idx, val = ranker.top_k(["red drill"], 2)  # products 0, 2, 3 tie
    assert idx.tolist() == [[0, 2]] and val[0, 0].item() == val[0, 1].item() > 0


def test_stopwords_are_dropped():
    ranker = BM25Ranker(["the drill", "the saw", "a hammer of the gods"], stopwords="en", stemmer=None)
    assert "the" not in ranker.vocab and ranker.query_tokens(["the drill of doom"]) == [["drill"]]
    assert ranker.score_all(["the"]).abs().sum().item() == 0.0


def test_english_stemmer_when_pystemmer_is_installed():
    pytest.importorskip("Stemmer")
    ranker = BM25Ranker(["cordless drills", "drilling machine", "garden hoses"])  # default stemmer="english"
    assert ranker.query_tokens(["drill hose"]) == [["drill", "hose"]]
    scores = ranker.score_all(["drill"])[0]
    assert scores[0] > 0 and scores[1] > 0 and scores[2] == 0
    assert BM25Ranker(["cordless drills"], stemmer=None).query_tokens(["drill"]) == [[]]
