"""Search judgements as tensors, query normalisation and the query-disjoint split.

A search data set is a list of *judgements* ``(query, product, label)``: how relevant a
product is to a query (graded: Home Depot's mean rater score on 1..3; or a click count).
For training and evaluation they are packed per query into :class:`SearchJudgements`:

* ``products[q, j]`` the ``j``-th judged product of query ``q`` (-1 = padding),
* ``grades[q, j]`` its grade, ``>= 0``, 0 = not relevant (padding 0).

Queries are identified by :func:`normalise_query` of their text, so spelling variants
that differ only in case, Unicode form or spacing are one query. Search is evaluated on
queries never seen in training: :func:`query_disjoint_split` puts every judgement of one
query in the same split, decided by a keyed hash of the query id (stable across runs,
machines and data updates: adding queries never moves an existing one).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from kgrec.kg.export import GraphSnapshot
from kgrec.kg.schema import normalise_queries, normalise_query  # the query-id rule

__all__ = ["SPLITS", "SearchJudgements", "judgements_from_frame", "normalise_queries", "normalise_query",
           "query_disjoint_split"]

SPLITS = ("train", "valid", "test")


def _hash_unit(key: str, seed: int) -> float:
    """A number in [0, 1) from blake2b of ``key`` keyed by ``seed`` (platform independent)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(int(seed)).encode("ascii")).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def query_disjoint_split(
    query_ids: Sequence[str] | np.ndarray | pd.Series,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> np.ndarray:
    """Assign ``"train"`` / ``"valid"`` / ``"test"`` to every element by its query id.

    Each distinct query id is hashed (blake2b keyed by ``seed``) to a number ``u`` in
    ``[0, 1)``; it goes to train when ``u < f_train``, valid when ``u < f_train + f_valid``,
    else test. All elements with the same query id get the same split, the result is the
    same on every run and machine, and a query's split does not depend on which other
    queries are present. The fractions are of distinct queries and hold approximately
    (binomially: on 11,795 queries to within about ±0.5 percentage points).

    Args:
        query_ids: ``[N]`` query ids (normalised query texts, see :func:`normalise_query`).
        fractions: ``(train, valid, test)``, non-negative, summing to 1 (default 0.8/0.1/0.1).
        seed: selects another split of the same queries (default 0).

    Returns:
        ``[N]`` array of ``"train"``/``"valid"``/``"test"`` (dtype ``<U5``).
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"fractions must be three non-negative numbers (train, valid, test), got {fractions!r}")
    if abs(f.sum() - 1.0) > 1e-9:
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {f.sum():g})")
    values = pd.Series(np.asarray(query_ids, dtype=object))
    if values.isna().any():
        raise ValueError(f"query_ids: missing value at position {int(np.flatnonzero(values.isna())[0])}")
    codes, uniques = pd.factorize(values.astype(str))
    u = np.fromiter((_hash_unit(q, seed) for q in uniques), dtype=np.float64, count=len(uniques))
    cut = np.cumsum(f)
    split_of_unique = np.where(u < cut[0], 0, np.where(u < cut[1], 1, 2))
    return np.asarray(SPLITS, dtype="<U5")[split_of_unique[codes]]


@dataclass
class SearchJudgements:
    """Judged products of ``Q`` queries, padded to ``J`` per query.

    Attributes:
        query_ids: ``Q`` query ids (normalised texts, sorted when built by
            :func:`judgements_from_frame`).
        queries: ``Q`` query texts (the first raw spelling of each query).
        products: ``LongTensor [Q, J]`` product indices (into the snapshot's product
            id map), -1 = padding; a product appears at most once per row.
        grades: ``FloatTensor [Q, J]`` graded relevance ``>= 0`` (0 = not relevant); 0 at padding.
        users: ``LongTensor [Q]`` user index of each query for personalised search
            (-1 = unknown user), or None for anonymous search.
    """

    query_ids: list[str]
    queries: list[str]
    products: torch.Tensor
    grades: torch.Tensor
    users: torch.Tensor | None = None

    def __post_init__(self) -> None:
        q = len(self.query_ids)
        if len(self.queries) != q:
            raise ValueError(f"SearchJudgements: {q} query_ids but {len(self.queries)} queries")
        if self.products.dim() != 2 or self.products.shape[0] != q:
            raise ValueError(f"SearchJudgements: products must be [Q={q}, J], got {tuple(self.products.shape)}")
        if self.grades.shape != self.products.shape:
            raise ValueError(f"SearchJudgements: grades {tuple(self.grades.shape)} != products {tuple(self.products.shape)}")
        if self.products.dtype != torch.long:
            raise ValueError(f"SearchJudgements: products must be int64, got {self.products.dtype}")
        if not self.grades.is_floating_point():
            raise ValueError(f"SearchJudgements: grades must be floating point, got {self.grades.dtype}")
        if self.grades.numel() and not bool((self.grades >= 0).all()):
            raise ValueError("SearchJudgements: grades must be >= 0 (0 = not relevant) and not NaN")
        if self.users is not None and (self.users.dtype != torch.long or tuple(self.users.shape) != (q,)):
            raise ValueError(f"SearchJudgements: users must be an int64 [Q={q}] tensor, got "
                             f"{self.users.dtype} {tuple(self.users.shape)}")

    def __len__(self) -> int:
        return len(self.query_ids)

    def __getitem__(self, index: slice | torch.Tensor | list[int] | np.ndarray) -> SearchJudgements:
        """The judgements of the selected queries (``J`` unchanged)."""
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            rows = [int(i) for i in index.flatten().tolist()]
        else:
            arr = np.asarray(index).reshape(-1)
            rows = [int(i) for i in (np.flatnonzero(arr) if arr.dtype == bool else arr).tolist()]
        n = len(self)
        rows = [r + n if r < 0 else r for r in rows]
        if any(r < 0 or r >= n for r in rows):
            raise IndexError(f"SearchJudgements index out of range for {n} queries")
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.products.device)
        return SearchJudgements(
            query_ids=[self.query_ids[r] for r in rows],
            queries=[self.queries[r] for r in rows],
            products=self.products.index_select(0, idx),
            grades=self.grades.index_select(0, idx),
            users=None if self.users is None else self.users.index_select(0, idx.to(self.users.device)),
        )

    def to(self, device: str | torch.device) -> SearchJudgements:
        """The same judgements with every tensor on ``device``."""
        return SearchJudgements(
            query_ids=self.query_ids,
            queries=self.queries,
            products=self.products.to(device),
            grades=self.grades.to(device),
            users=None if self.users is None else self.users.to(device),
        )

    def num_judged(self) -> torch.Tensor:
        """``LongTensor [Q]``: judged (non-padding) products per query."""
        return (self.products >= 0).sum(1)

    def num_relevant(self, relevant_threshold: float = 1.0) -> torch.Tensor:
        """``LongTensor [Q]``: judged products with ``grade >= relevant_threshold`` per query."""
        return ((self.products >= 0) & (self.grades >= relevant_threshold)).sum(1)


def judgements_from_frame(
    frame: pd.DataFrame,
    grade_offset: float = 0.0,
    user_column: str | None = None,
) -> SearchJudgements:
    """Pack a judgement table into :class:`SearchJudgements`.

    Args:
        frame: one row per judgement with columns ``query_id``, ``query`` (text),
            ``product`` (int product index) and ``label`` (e.g. from
            :func:`kgrec.kg.export.export_judgements`); plus ``user_column`` when given.
            Each ``(query_id, product)`` pair must occur once.
        grade_offset: subtracted from every label (default 0.0). Home Depot uses 1.0,
            so its 1..3 scale becomes grades 0..2 and "irrelevant" has gain 0. A label
            below the offset is an error.
        user_column: column with the user index of each query (int, -1 or missing =
            unknown); all rows of one query must agree. None: anonymous search (``users=None``).

    Returns:
        Queries sorted by ``query_id``; each query's products in ascending index order;
        ``J`` = the most judgements of any query (at least 1).
    """
    needed = ["query_id", "query", "product", "label"] + ([user_column] if user_column else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"judgement frame lacks columns {missing}; it has {list(frame.columns)}")
    for column in ("query_id", "product", "label"):
        bad = frame[column].isna().to_numpy()
        if bad.any():
            raise ValueError(f"judgement frame row {int(np.flatnonzero(bad)[0])}: missing {column}")
    products = pd.to_numeric(frame["product"], errors="coerce")
    bad = products.isna().to_numpy() | (products.to_numpy(dtype=float, na_value=np.nan) < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"judgement frame row {i}: product must be a non-negative integer index, "
                         f"got {frame['product'].iloc[i]!r}")
    grade = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=float) - float(grade_offset)
    bad = ~np.isfinite(grade) | (grade < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"judgement frame row {i} (query {frame['query_id'].iloc[i]!r}): label {frame['label'].iloc[i]!r} "
                         f"is not a number >= grade_offset {grade_offset}")
    work = pd.DataFrame({
        "query_id": frame["query_id"].astype(str).to_numpy(),
        "query": frame["query"].astype(object).where(frame["query"].notna(), "").astype(str).to_numpy(),
        "product": products.to_numpy().astype(np.int64),
        "grade": grade,
        "row": np.arange(len(frame)),
    })
    if user_column:
        work["user"] = pd.to_numeric(frame[user_column], errors="coerce").fillna(-1).to_numpy().astype(np.int64)
    dup = work.duplicated(["query_id", "product"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"judgement frame row {i}: query {work['query_id'].iloc[i]!r} judges product "
                         f"{int(work['product'].iloc[i])} more than once")
    text_of = dict(zip(*work.drop_duplicates("query_id")[["query_id", "query"]].to_numpy().T))  # first spelling
    work = work.sort_values(["query_id", "product"], kind="stable", ignore_index=True)
    codes, uniques = pd.factorize(work["query_id"], sort=True)
    q = len(uniques)
    pos = work.groupby(codes, sort=False).cumcount().to_numpy()
    j = max(int(pos.max()) + 1 if len(pos) else 1, 1)
    prod = torch.full((q, j), -1, dtype=torch.long)
    grades = torch.zeros((q, j), dtype=torch.float32)
    rows_t, pos_t = torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(pos.astype(np.int64))
    prod[rows_t, pos_t] = torch.tensor(work["product"].to_numpy(), dtype=torch.long)
    grades[rows_t, pos_t] = torch.tensor(work["grade"].to_numpy(), dtype=torch.float32)
    first = work.groupby(codes, sort=True).head(1)
    users = None
    if user_column:
        per_query = work.groupby(codes)["user"].nunique()
        if (per_query > 1).any():
            qi = int(per_query.index[(per_query > 1).to_numpy()][0])
            raise ValueError(f"judgement frame: query {uniques[qi]!r} has several users in column {user_column!r}")
        users = torch.from_numpy(first["user"].to_numpy().astype(np.int64))
    return SearchJudgements(
        query_ids=[str(x) for x in uniques],
        queries=[text_of[str(x)] for x in uniques],
        products=prod,
        grades=grades,
        users=users,
    )


#: Node type of the train queries in a snapshot, and their edges to the products they judged relevant.
QUERY_NODE_TYPE = "query"
QUERY_EDGE_TYPE = ("query", "judged", "product")


def with_query_nodes(snapshot: GraphSnapshot, judgements: pd.DataFrame, min_grade: float = 1.0) -> GraphSnapshot:
    """``snapshot`` plus the *train* queries as ``query`` nodes linked to the products they judged
    with ``grade >= min_grade`` (``('query', 'judged', 'product')``, reversed in message passing).

    A product's graph vector then carries the text of the queries it is known to answer; valid
    and test queries never become nodes. ``judgements`` needs ``query_id``, ``product`` (index),
    ``grade`` and ``split`` columns. Query node ids are the sorted train query ids.
    """
    train = judgements[judgements["split"] == "train"]
    ids = sorted(train["query_id"].astype(str).unique())
    index = {q: i for i, q in enumerate(ids)}
    keep = train[train["grade"] >= min_grade]
    edges = torch.as_tensor(
        np.stack([keep["query_id"].astype(str).map(index).to_numpy(dtype=np.int64),
                  keep["product"].to_numpy(dtype=np.int64)]).reshape(2, -1), dtype=torch.long)
    return replace(snapshot, id_maps={**snapshot.id_maps, QUERY_NODE_TYPE: ids},
                   structure={**snapshot.structure, QUERY_EDGE_TYPE: edges})
