"""BM25 over product text: the lexical baseline for product search.

:class:`BM25Ranker` tokenises and indexes the catalogue once with `bm25s
<https://github.com/xhluca/bm25s>`_ (its tokenizer: lower-case, ``\\w\\w+`` tokens, an
optional stopword list and a Snowball stemmer from PyStemmer; its index: the BM25 weight of
every (product, token) pair, precomputed). A query's score for a product is the sum, over the query's tokens
(repeated tokens count again, as in ``bm25s.BM25.get_scores``), of that weight; for the
``bm25l`` and ``bm25+`` variants every product also gets the weight of a zero term frequency
for each query token, as bm25s does. Scores are computed for a batch of queries at once as
one sparse product ``query_token_counts [B, V] @ weights [V, P]``, so :meth:`top_k` can break
ties deterministically (see there), which ``bm25s.BM25.retrieve`` does not promise.

Variants (``method``; ``N`` products, ``df`` products holding the token, ``tf`` its count in
the product, ``L`` the product's length in tokens, ``avgL`` the mean length,
``n = k1 * (1 - b + b * L / avgL)``), as in bm25s / Kamphuis et al. (ECIR 2020):

========== =================================== =======================================
method     idf                                 term-frequency part
========== =================================== =======================================
lucene     ``ln(1 + (N - df + .5)/(df + .5))`` ``tf / (tf + n)``
robertson  ``max(0, ln((N - df + .5)/(df + .5)))`` ``tf / (tf + n)``
atire      ``ln(N / df)``                      ``tf (k1 + 1) / (tf + n)``
bm25l      ``ln((N + 1)/(df + .5))``           ``(k1 + 1)(c + δ)/(k1 + c + δ)``, ``c = tf / (1 - b + b L / avgL)``
bm25+      ``ln((N + 1)/df)``                  ``tf (k1 + 1)/(tf + n) + δ``
========== =================================== =======================================
"""
from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np
import scipy.sparse as sp
import torch

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def _stemmer(name: str | None):
    if name is None:
        return None
    try:
        import Stemmer  # PyStemmer
    except ModuleNotFoundError:
        raise ImportError(f"BM25Ranker(stemmer={name!r}) needs the PyStemmer package (pip install PyStemmer)") from None
    return Stemmer.Stemmer(name)


class BM25Ranker:
    """A BM25 index over ``P`` product texts.

    Args:
        product_texts: ``P`` texts, index ``i`` = product index ``i`` (e.g. titles in the
            snapshot's product order). An empty text is a product no query matches.
        k1: term-frequency saturation (default 1.5).
        b: length normalisation (default 0.75).
        method: BM25 variant, one of :data:`METHODS` (default ``"lucene"``).
        stopwords: bm25s stopword list name (``"en"``, default) or a list of words, or
            None for none.
        stemmer: a Snowball stemmer language of PyStemmer (default ``"english"``: on Home
            Depot it lifts full-catalogue NDCG@10 from 0.305 to 0.346), or None for no stemming.
        delta: the δ of ``bm25l`` / ``bm25+`` (default 0.5, bm25s' default).
        batch_size: queries scored at once by :meth:`top_k` (default 128; memory about
            ``batch_size * P * 13`` bytes).
    """

    def __init__(
        self,
        product_texts: Sequence[str],
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | list[str] | None = "en",
        stemmer: str | None = "english",
        delta: float = 0.5,
        batch_size: int = 128,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"BM25Ranker: method must be one of {METHODS}, got {method!r}")
        if not k1 >= 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"BM25Ranker: need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if batch_size < 1:
            raise ValueError(f"BM25Ranker: batch_size must be >= 1, got {batch_size}")
        texts = list(product_texts)
        if not texts:
            raise ValueError("BM25Ranker: the catalogue is empty")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"BM25Ranker: product text {i} is {type(t).__name__}, expected str")
        self.k1, self.b, self.method, self.delta = float(k1), float(b), method, float(delta)
        self.stopwords = stopwords if stopwords is not None else []
        self.stemmer_name = stemmer
        self._stemmer = _stemmer(stemmer)
        self.batch_size = int(batch_size)
        self.num_products = len(texts)
        tokenized = bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self._stemmer, show_progress=False)
        self.vocab: dict[str, int] = dict(tokenized.vocab)
        self.retriever = bm25s.BM25(k1=self.k1, b=self.b, delta=self.delta, method=method)
        self.retriever.index(tokenized, show_progress=False)
        s = self.retriever.scores
        num_tokens = len(s["indptr"]) - 1
        # bm25s keeps the weights as CSC of [P, V]: column t = token t's postings
        weights = sp.csc_matrix((s["data"], s["indices"], s["indptr"]), shape=(self.num_products, num_tokens))
        self._by_token = weights.T.tocsr()  # [V, P]
        self._by_product = weights.tocsr()  # [P, V]
        nonocc = self.retriever.nonoccurrence_array
        self._nonoccurrence = None if nonocc is None else np.asarray(nonocc, dtype=np.float32)

    # -- queries -----------------------------------------------------------------------

    def query_tokens(self, queries: Sequence[str]) -> list[list[str]]:
        """The index tokens of each query (tokens the catalogue lacks are dropped)."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise ValueError(f"BM25Ranker: query {i} is {type(q).__name__}, expected str")
        if not queries:
            return []
        tokens = bm25s.tokenize(queries, stopwords=self.stopwords, stemmer=self._stemmer,
                                return_ids=False, show_progress=False)
        return [[t for t in q if t in self.vocab] for q in tokens]

    def _query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """``[Q, V]`` float32 counts of each index token in each query."""
        tokens = self.query_tokens(queries)
        rows = np.repeat(np.arange(len(tokens)), [len(t) for t in tokens])
        cols = np.fromiter((self.vocab[t] for q in tokens for t in q), dtype=np.int64, count=len(rows))
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(tokens), self._by_token.shape[0]))
        m.sum_duplicates()
        return m

    def _offset(self, qm: sp.csr_matrix) -> np.ndarray:
        """``[Q]`` the score every product gets from the query's tokens at tf = 0 (bm25l / bm25+)."""
        if self._nonoccurrence is None:
            return np.zeros(qm.shape[0], np.float32)
        return np.asarray(qm @ self._nonoccurrence, dtype=np.float32).reshape(-1)

    def score_all(self, queries: Sequence[str]) -> torch.Tensor:
        """``FloatTensor [Q, P]``: every product's score for each query (dense; small Q)."""
        qm = self._query_matrix(queries)
        dense = np.asarray((qm @ self._by_token).toarray(), dtype=np.float32) + self._offset(qm)[:, None]
        return torch.from_numpy(dense)

    def score_candidates(self, queries: Sequence[str], candidates: torch.Tensor) -> torch.Tensor:
        """Scores of given candidate products.

        Args:
            queries: ``Q`` query texts.
            candidates: ``LongTensor [Q, J]`` product indices, -1 = padding.

        Returns:
            ``FloatTensor [Q, J]``; ``-inf`` at padding.
        """
        queries = list(queries)
        if candidates.dim() != 2 or candidates.shape[0] != len(queries):
            raise ValueError(f"candidates must be [Q={len(queries)}, J], got {tuple(candidates.shape)}")
        cand = candidates.detach().cpu().long().numpy()
        if cand.size and (cand.min() < -1 or cand.max() >= self.num_products):
            raise ValueError(f"candidates: product indices must be in [0, {self.num_products}) or -1 for padding")
        qm = self._query_matrix(queries)
        q_rows = np.repeat(np.arange(cand.shape[0]), cand.shape[1])
        flat = cand.reshape(-1)
        real = flat >= 0
        products = self._by_product[np.where(real, flat, 0)]  # [Q*J, V]
        per_pair = np.asarray(products.multiply(qm[q_rows]).sum(1), dtype=np.float32).reshape(-1)
        per_pair += self._offset(qm)[q_rows]
        per_pair[~real] = -np.inf
        return torch.from_numpy(per_pair.reshape(cand.shape).astype(np.float32))

    @torch.no_grad()
    def top_k(self, queries: Sequence[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` best products of the whole catalogue for each query.

        Ranked by score, highest first; equal scores by product index, lowest first. So a
        query with no token in the index (all scores 0) gets products ``0, 1, ..., k - 1``
        with score 0, and the list is the same on every run.

        Args:
            queries: ``Q`` query texts.
            k: list length (>= 1); when ``k`` exceeds the catalogue size ``P`` the last
                ``k - P`` entries are padding (index -1, score ``-inf``).

        Returns:
            ``(LongTensor [Q, k] product indices, FloatTensor [Q, k] scores)``.
        """
        if k < 1:
            raise ValueError(f"top_k: k must be >= 1, got {k}")
        queries = list(queries)
        kk = min(int(k), self.num_products)
        out_idx = torch.full((len(queries), int(k)), -1, dtype=torch.long)
        out_val = torch.full((len(queries), int(k)), float("-inf"), dtype=torch.float32)
        for start in range(0, len(queries), self.batch_size):
            scores = self.score_all(queries[start:start + self.batch_size])  # [B, P]
            idx, val = _top_k_ties_by_index(scores, kk)
            out_idx[start:start + len(idx), :kk] = idx
            out_val[start:start + len(idx), :kk] = val
        return out_idx, out_val


def _top_k_ties_by_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row of ``scores [B, P]`` (finite), ordered by (score desc, index asc).

    The k-th largest value ``t`` splits the row: every entry above ``t`` is taken, then the
    lowest-index entries equal to ``t`` until there are ``k``.
    """
    b = scores.shape[0]
    if b == 0:
        return torch.empty((0, k), dtype=torch.long), torch.empty((0, k), dtype=scores.dtype)
    t = torch.topk(scores, k, dim=1).values[:, -1:]  # [B, 1]
    above = scores > t
    tie = scores == t
    need = k - above.sum(1, keepdim=True)
    take = above | (tie & (torch.cumsum(tie, 1, dtype=torch.int32) <= need))
    idx = take.nonzero()[:, 1].view(b, k)  # row-major: ascending index within a row
    val = scores.gather(1, idx)
    order = torch.sort(val, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), val.gather(1, order)
