"""Candidate generation at catalogue scale: a faiss index over product vectors.

:class:`ProductIndex` holds ``[P, d]`` product vectors (the fused model's unit vectors,
:meth:`kgrec.fusion.models.Recommender.product_embeddings`) and returns, for ``[Q, d]`` query (user)
vectors, the ``k`` products of highest inner product, optionally skipping products per query
(the user's history). Three kinds:

* ``"exact"``: ``faiss.IndexFlatIP``, brute force; the reference;
* ``"ivf"``: ``faiss.IndexIVFFlat`` (inner product), ``nlist`` k-means cells (default
  ``4 * sqrt(P)``, at most ``P // 39`` so every cell has training points), ``nprobe`` cells
  scanned per query; ``nprobe == nlist`` scans everything and equals exact;
* ``"hnsw"``: ``faiss.IndexHNSWFlat`` with the inner-product metric, ``M`` links per node,
  ``ef_construction`` / ``ef_search`` beam widths.

Exclusion is done by over-fetching: a query with ``n`` excluded products asks the index for
``k + n`` (rounded up to a power of two, so queries are searched in a few groups) and drops
the excluded ones. An exact search of ``k + n`` always leaves ``k``; an approximate one can
come back short (IVF cells hold too few vectors, or HNSW misses): those rows are searched
again exactly (``IndexFlatIP`` over the same vectors: the HNSW storage, or the IVF index with
every cell probed), so every row gets ``min(k, P - n)`` products.

Save/load: ``index.faiss`` (``faiss.write_index``) and ``index.json`` (the config and sizes);
no pickle.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import faiss

KINDS = ("exact", "ivf", "hnsw")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1



@dataclass
class CSR:
    """Per-query product lists in compressed rows: query ``q`` owns ``indices[indptr[q]:indptr[q + 1]]``.

    Attributes:
        indptr: ``[Q + 1]`` non-decreasing offsets from 0 to ``len(indices)``.
        indices: ``[nnz]`` product indices.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, rows: torch.Tensor | np.ndarray, cols: torch.Tensor | np.ndarray, num_rows: int) -> CSR:
        """From ``(row, product)`` pairs (e.g. :func:`kgrec.evaluation.recommendation.evaluation_inputs`' ``rows, cols``)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        return cls(np.searchsorted(rows[order], np.arange(num_rows + 1)).astype(np.int64), cols[order])


#: Per-query exclusions: a sequence of Q id lists / arrays / tensors, or a :class:`CSR`.
Exclude = Sequence[Sequence[int] | np.ndarray | torch.Tensor] | CSR


class RetrievalError(ValueError):
    """Bad input to :class:`ProductIndex` (shapes, sizes, non-finite values, unknown settings)."""


@dataclass
class IndexConfig:
    """Settings of a :class:`ProductIndex`.

    Attributes:
        kind: ``"exact"``, ``"ivf"`` or ``"hnsw"`` (default ``"exact"``).
        nlist: IVF cells; None = ``clip(round(4 * sqrt(P)), 1, max(1, P // 39))``.
        nprobe: IVF cells scanned per query (default 32; capped at ``nlist``).
        train_size: IVF k-means training sample; None = ``min(P, 40 * nlist)`` vectors (faiss asks for 39 per cell).
        hnsw_m: HNSW links per node (default 32).
        ef_construction: HNSW build beam (default 100).
        ef_search: HNSW search beam (default 128; raised to the fetch depth when that is larger).
        threads: faiss OpenMP threads; None = faiss' default.
        seed: IVF training sample and k-means seed (default 0).
    """

    kind: str = "exact"
    nlist: int | None = None
    nprobe: int = 32
    train_size: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RetrievalError(f"IndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RetrievalError(f"IndexConfig.{name} must be a positive int, got {value!r}")
        for name in ("nlist", "train_size", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise RetrievalError(f"IndexConfig.{name} must be a positive int or None, got {value!r}")


class ProductIndex:
    """A faiss index over ``[P, d]`` product vectors, searched by inner product.

    Args:
        config: an :class:`IndexConfig`, or just its ``kind``.
        **options: fields of :class:`IndexConfig` (override ``config``).

    Example:
        >>> index = ProductIndex("ivf", nprobe=16).build(products)      # doctest: +SKIP
        >>> ids, scores = index.search(users, k=100, exclude=histories)  # doctest: +SKIP
    """

    def __init__(self, config: IndexConfig | str = "exact", **options) -> None:
        base = IndexConfig(kind=config) if isinstance(config, str) else config
        self.config = IndexConfig(**{**asdict(base), **options})
        self.index: faiss.Index | None = None
        self.num_products = 0
        self.dim = 0
        self.nlist: int | None = None

    # -- build -----------------------------------------------------------------------------
    def build(self, vectors: torch.Tensor | np.ndarray) -> ProductIndex:
        """Index ``vectors`` ``[P, d]`` (float; unit rows for cosine). Returns self."""
        import faiss

        x = _as_matrix(vectors, "vectors")
        if len(x) == 0:
            raise RetrievalError("vectors: no products to index ([0, d])")
        cfg = self.config
        self._threads()
        P, d = x.shape
        self.num_products, self.dim = P, d
        index: faiss.Index
        if cfg.kind == "exact":
            index = faiss.IndexFlatIP(d)
        elif cfg.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = cfg.ef_construction
            graph.hnsw.efSearch = cfg.ef_search
            index = graph
        else:
            nlist = cfg.nlist if cfg.nlist is not None else int(np.clip(round(4 * math.sqrt(P)), 1, max(1, P // 39)))
            if nlist > P:
                raise RetrievalError(f"IndexConfig.nlist ({nlist}) exceeds the number of products ({P})")
            self.nlist = nlist
            quantizer = faiss.IndexFlatIP(d)
            ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.seed = cfg.seed
            n_train = min(P, cfg.train_size if cfg.train_size is not None else 40 * nlist)
            sample = x if n_train >= P else x[np.sort(np.random.default_rng(cfg.seed).choice(P, n_train, replace=False))]
            ivf.train(sample)
            ivf.nprobe = min(cfg.nprobe, nlist)
            self._quantizer = quantizer  # the IVF index borrows it
            index = ivf
        index.add(x)
        self.index = index
        return self

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int,
        exclude: Exclude | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` products of highest inner product per query, excluded products skipped.

        Args:
            queries: ``[Q, d]`` query vectors.
            k: results per query, ``1 <= k <= P``.
            exclude: per query, product indices never to return: a sequence of ``Q`` lists /
                arrays, or a :class:`CSR`; ids outside ``[0, P)`` are errors, repeats are fine.

        Returns:
            ``(ids LongTensor [Q, k], scores FloatTensor [Q, k])``, best first. A row with
            fewer than ``k`` allowed products ends with ids ``-1`` and scores ``-inf``.
        """
        if self.index is None:
            raise RetrievalError("ProductIndex.search before build (or load)")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise RetrievalError(f"queries have dimension {q.shape[1]}, the index holds dimension {self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_products:
            raise RetrievalError(f"k must be an int in [1, {self.num_products}] (the number of products), got {k!r}")
        self._threads()
        Q, P = len(q), self.num_products
        indptr, indices = _as_csr(exclude, Q, P)
        counts = np.diff(indptr)
        ids = np.full((Q, k), -1, dtype=np.int64)
        scores = np.full((Q, k), -np.inf, dtype=np.float32)
        if Q == 0:
            return torch.from_numpy(ids), torch.from_numpy(scores)
        if not counts.any():
            found_s, found_i = self._search(q, k, exact=False)
            ids[:], scores[:] = found_i, found_s
            short = np.flatnonzero((found_i < 0).any(1))
        else:
            need = np.minimum(k + counts, P)
            depth = np.minimum(P, np.power(2, np.ceil(np.log2(np.maximum(need, 1)))).astype(np.int64))
            short_rows = []
            for dd in np.unique(depth).tolist():
                rows = np.flatnonzero(depth == dd)
                found_s, found_i = self._search(q[rows], dd, exact=False)
                got = _filter(found_i, found_s, rows, indptr, indices, P, k, ids, scores)
                short_rows.append(rows[got < np.minimum(k, P - counts[rows])])
            short = np.concatenate(short_rows)
        if len(short) and self.config.kind != "exact":
            # the approximate search came back short: these rows, exactly, deep enough to leave k
            need = np.minimum(k + counts[short], P)
            for dd in np.unique(need).tolist():
                rows = short[need == dd]
                found_s, found_i = self._search(q[rows], dd, exact=True)
                _filter(found_i, found_s, rows, indptr, indices, P, k, ids, scores)
        return torch.from_numpy(ids), torch.from_numpy(scores)

    def _search(self, q: np.ndarray, depth: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        index = self.index
        assert index is not None  # search() refuses an index that was never built or loaded
        if self.config.kind == "hnsw":
            assert isinstance(index, faiss.IndexHNSW)  # build() and load() make it one for kind "hnsw"
            if exact:
                return faiss.downcast_index(index.storage).search(q, depth)
            # faiss's stubs lack SearchParametersHNSW, which the compiled module has
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, depth))  # type: ignore[attr-defined]
            return index.search(q, depth, params=params)
        if self.config.kind == "ivf":
            assert self.nlist is not None  # build() and load() set it for kind "ivf"
            ivf_params = faiss.SearchParametersIVF()
            ivf_params.nprobe = self.nlist if exact else min(self.config.nprobe, self.nlist)
            return index.search(q, depth, params=ivf_params)
        return index.search(q, depth)

    def _threads(self) -> None:
        if self.config.threads is not None:
            import faiss

            faiss.omp_set_num_threads(self.config.threads)

    # -- facts -----------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Approximate bytes the index holds: vectors ``P * d * 4`` plus the structure (IVF:
        8-byte ids per vector and the centroids; HNSW: ``2 * M`` 4-byte links per vector at level
        0 and about ``M / (M - 1)`` of that over the upper levels)."""
        base = self.num_products * self.dim * 4
        if self.config.kind == "ivf":
            return base + self.num_products * 8 + (self.nlist or 0) * self.dim * 4
        if self.config.kind == "hnsw":
            m = self.config.hnsw_m
            return base + int(self.num_products * 2 * m * 4 * (1 + 1 / max(m - 1, 1)))
        return base

    def describe(self) -> dict:
        """The config and sizes (what ``index.json`` holds)."""
        return {"format_version": FORMAT_VERSION, "config": asdict(self.config), "num_products": self.num_products,
                "dim": self.dim, "nlist": self.nlist}

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path/index.faiss`` and ``path/index.json``; returns the directory."""
        import faiss

        if self.index is None:
            raise RetrievalError("ProductIndex.save before build")
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / META_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, path: str | Path) -> ProductIndex:
        """Read an index written by :meth:`save`."""
        import faiss

        directory = Path(path)
        meta_path = directory / META_FILE
        if not meta_path.exists() or not (directory / INDEX_FILE).exists():
            raise RetrievalError(f"{directory}: expected {INDEX_FILE} and {META_FILE}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise RetrievalError(f"{meta_path}: unreadable JSON ({exc})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise RetrievalError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        out = cls(IndexConfig(**meta["config"]))
        index = faiss.read_index(str(directory / INDEX_FILE))
        if index.ntotal != meta["num_products"] or index.d != meta["dim"]:
            raise RetrievalError(f"{directory}: {INDEX_FILE} holds {index.ntotal} x {index.d}, {META_FILE} says "
                              f"{meta['num_products']} x {meta['dim']}")
        out.index, out.num_products, out.dim, out.nlist = index, meta["num_products"], meta["dim"], meta["nlist"]
        if out.config.kind == "hnsw":
            if not isinstance(index, faiss.IndexHNSW):
                raise RetrievalError(f"{directory}: {META_FILE} says kind 'hnsw', {INDEX_FILE} holds a {type(index).__name__}")
            index.hnsw.efSearch = out.config.ef_search
        return out


def recall_at_k(approx_ids: torch.Tensor | np.ndarray, exact_ids: torch.Tensor | np.ndarray, k: int) -> float:
    """Mean over queries of ``|approx[:k] ∩ exact[:k]| / |exact[:k]|`` (ids ``-1`` ignored).

    Args:
        approx_ids, exact_ids: ``[Q, >= k]`` ranked ids from the approximate and the exact search.
    """
    a = np.asarray(approx_ids)[:, :k]
    e = np.asarray(exact_ids)[:, :k]
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"approx_ids has {a.shape[0]} rows, exact_ids {e.shape[0]}")
    if a.shape[0] == 0:
        return 0.0
    found = np.empty(a.shape[0])
    for start in range(0, a.shape[0], 4096):  # [rows, k, k] comparisons, chunk by chunk
        ea, ee = a[start:start + 4096], e[start:start + 4096]
        hits = (ee[:, :, None] == ea[:, None, :]).any(2) & (ee >= 0)
        found[start:start + 4096] = hits.sum(1) / np.maximum((ee >= 0).sum(1), 1)
    return float(found.mean())


# -- helpers ---------------------------------------------------------------------------------


def _as_matrix(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] == 0:
        raise RetrievalError(f"{name}: expected a [N, d] matrix with d > 0, got shape {tuple(x.shape)}")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad.any(1))[0])
        raise RetrievalError(f"{name}: row {row} holds a non-finite value ({int(bad.sum())} in all)")
    return x


def _as_csr(exclude: Exclude | None, Q: int, P: int) -> tuple[np.ndarray, np.ndarray]:
    if exclude is None:
        return np.zeros(Q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if isinstance(exclude, CSR):
        indptr = np.asarray(exclude.indptr, dtype=np.int64)
        indices = np.asarray(exclude.indices, dtype=np.int64)
        if indptr.shape != (Q + 1,) or indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
            raise RetrievalError(f"exclude: CSR indptr must be non-decreasing, of length Q + 1 = {Q + 1}, from 0 to "
                              f"len(indices) = {len(indices)}")
    else:
        if len(exclude) != Q:
            raise RetrievalError(f"exclude: {len(exclude)} lists for {Q} queries")
        rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in exclude]
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= P):
        bad = int(np.flatnonzero((indices < 0) | (indices >= P))[0])
        row = int(np.searchsorted(indptr, bad, side="right") - 1)
        raise RetrievalError(f"exclude: query {row} names product {int(indices[bad])}, outside [0, {P})")
    # duplicates inside a row would over-count the exclusions: drop them
    row_of = np.repeat(np.arange(Q), np.diff(indptr))
    pairs = np.unique(row_of * np.int64(P) + indices)
    indices = pairs % P
    indptr = np.searchsorted(pairs // P, np.arange(Q + 1)).astype(np.int64)
    return indptr, indices


def _filter(found_i, found_s, rows, indptr, indices, P, k, ids, scores) -> np.ndarray:
    """Drop excluded (and -1) ids from the rows' results; fill ``ids``/``scores`` rows ``rows``;
    return how many each row got (at most ``k``)."""
    n = found_i.shape[0]
    keep = found_i >= 0
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    total = int(lengths.sum())
    if total:
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        excl = indices[np.repeat(starts, lengths) + within]
        excl_keys = np.sort(np.repeat(np.arange(n), lengths) * np.int64(P) + excl)
        keys = np.arange(n)[:, None] * np.int64(P) + np.where(keep, found_i, 0)
        pos = np.minimum(np.searchsorted(excl_keys, keys), total - 1)
        keep &= excl_keys[pos] != keys
    rank = np.cumsum(keep, axis=1) - 1
    take = keep & (rank < k)
    r, c = np.nonzero(take)
    ids[rows[r], rank[r, c]] = found_i[r, c]
    scores[rows[r], rank[r, c]] = found_s[r, c]
    return np.minimum(keep.sum(1), k)
