"""The scoring API over an artifact: recommend, similar, score, search, explain, add_products.

>>> from kgrec.serving.api import Scorer                                    # doctest: +SKIP
>>> scorer = Scorer.load("runs/artifact")                            # doctest: +SKIP
>>> scorer.recommend(["A2HK2Z2LQ3RTTG"], k=5)[0].items               # doctest: +SKIP
>>> scorer.recommend(["new-visitor"], session=["B0000223SI"])        # doctest: +SKIP
>>> scorer.similar(["B0000223SI"], k=5)                              # doctest: +SKIP
>>> scorer.search("nitrile gloves", k=5)                             # doctest: +SKIP
>>> scorer.explain("A2HK2Z2LQ3RTTG", "B0000223SK").paths[0].cypher    # doctest: +SKIP

Every batched method does one matrix product and one ``torch.topk`` for the whole
batch; Python loops only build inputs and unpack results.

Users. A known user's vector comes from their visible history (``source="history"``);
session items, if given, are appended to it. A user the artifact does not know, with
``session=[product ids]``, is scored from the session as if it were a history
(``"session"``); with neither, the user gets the most popular products
(``"popularity"``: visible interaction counts). Models whose users are ID embeddings
(MF, LightGCN) fold a session user in as the mean of the session's product vectors.

Scores are the model's own (the fused model: cosine / temperature; popularity: counts);
compare them within one request, not across models.

New products. :meth:`Scorer.add_products` scores products the model never saw, without
retraining: the text tower reads their text (encoded with the artifact's text encoder),
the graph part is the mean graph vector of the products in the same leaf category
(or the nearest ancestor category that has products) averaged with the mean of the
same brand's products, fused by the trained gate. That is an approximation: the GNN
never ran on the new product and its interactions.

Search. The query is encoded by the artifact's text encoder (its tuned tower when the
model fine-tuned BERT), passed through the model's query tower (``T(q) = q + adapter(q) +
query_adapter(q)``) and ranked by cosine against the fused product vectors. With
``user_id`` the query becomes ``normalize(T(q) + w * u)``, ``u`` the user's unit vector and
``w = user_weight`` (default: the weight learned in search training, 0.3 for a model never
trained to search). With ``lexical_weight > 0`` the search is hybrid (:mod:`kgrec.search.hybrid`):
each query's cosines and its BM25 scores over the product titles are standardised over the
candidates and mixed, ``(1 - w) z(cosine) + w z(bm25)``; the returned scores are then those
mixed z-scores. Choose the weight on validation queries (``benchmarks/search.py`` prints
the one it chose for its data).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kgrec.fusion.data import RecBatch
from kgrec.fusion.models import FusedRecommender, Popularity, TextZeroShot
from kgrec.kg.schema import CATEGORY_SEPARATOR
from kgrec.serving.artifact import Artifact, ArtifactError, category_ancestors, load_artifact
from kgrec.serving.explain import SESSION, Explanation, find_paths

SOURCES = ("history", "session", "popularity")
#: The user id a search personalised by a session alone is scored as (a visitor no artifact holds).
SESSION_USER = "\x00session"
FILTER_KEYS = ("category", "brand")


@dataclass
class Recommendation:
    """Recommendations for one user: ``items`` = ``[(product_id, score), ...]`` best first;
    ``source`` = what the user vector came from: ``history``, ``session`` or ``popularity``."""

    user_id: str
    items: list[tuple[str, float]]
    source: str

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "source": self.source,
                "items": [{"product_id": p, "score": s} for p, s in self.items]}


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_weight(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float (in ``[low, high]`` when given), else ValueError naming ``what``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{what} must be in [{low}, {high}], got {value!r}")
    return number


#: Known users' vectors are computed once at load when they take at most this many bytes.
USER_CACHE_BYTES = 256 * 2**20


@dataclass
class UserRows:
    """What the scorer knows of a batch of ``B`` request rows (users).

    Attributes:
        vectors: ``[B, d]`` user vectors (rows of ``popular`` users are zeros unless asked for).
        popular: ``[B]`` bool, rows scored by popularity.
        sources: per row ``history``, ``session`` or ``popularity``.
        seen_rows, seen_cols: coordinates of the products each row has seen (stored history,
            then the session): ``(row, product index)`` pairs, as int64 arrays.
    """

    vectors: torch.Tensor
    popular: torch.Tensor
    sources: list[str]
    seen_rows: np.ndarray
    seen_cols: np.ndarray


def _id_list(values: Any, what: str) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a list of ids, got a single string {values!r}; wrap it in a list")
    out = [str(v) for v in values]
    if not out:
        raise ValueError(f"{what} is empty")
    return out


class Scorer:
    """Serving over a loaded :class:`~kgrec.serving.artifact.Artifact` (see the module docstring).

    Args:
        artifact: a loaded artifact.
        text_model: directory of the text encoder if it moved since the artifact was
            saved (its fingerprint must match the artifact's).
        cache_user_vectors: compute every known user's vector (from their stored history) once
            here, so a request for a known user without a session skips the user tower. None
            (default) caches when the ``[users, d]`` matrix takes at most :data:`USER_CACHE_BYTES`.
    """

    def __init__(
        self,
        artifact: Artifact,
        text_model: str | os.PathLike[str] | None = None,
        cache_user_vectors: bool | None = None,
    ) -> None:
        self.artifact = artifact
        self.model = artifact.model.eval()
        self.state = dict(artifact.state)
        self.max_history = artifact.max_history
        self._text_model = text_model
        self._encoder = None
        self.user_ids: list[str] = list(artifact.id_maps["user"])
        self.product_ids: list[str] = list(artifact.id_maps["product"])
        self._uid = {u: i for i, u in enumerate(self.user_ids)}
        self._pid = {p: i for i, p in enumerate(self.product_ids)}
        products = artifact.products
        self.titles: list[str] = products["title"].astype(str).tolist()
        self.brand = products["brand"].fillna("").astype(str).to_numpy(dtype=object)
        self.category = products["category"].fillna("").astype(str).to_numpy(dtype=object)
        self._index_attributes(0)

        inter = artifact.interactions.sort_values(["user", "order"], kind="stable")
        users = inter["user"].to_numpy(np.int64)
        self._hist_products = inter["product"].to_numpy(np.int64)
        self._hist_rels = inter["rel"].astype(str).to_numpy(dtype=object)
        counts = np.bincount(users, minlength=len(self.user_ids))
        self._indptr = np.concatenate([[0], np.cumsum(counts)])
        pop = np.bincount(self._hist_products, minlength=len(self.product_ids)).astype(np.float32)
        self.popularity = torch.as_tensor(pop)
        self._buyers: dict[int, dict[int, str]] | None = None
        self._unit: torch.Tensor | None = None
        self._bm25 = None
        self._ids = np.asarray(self.product_ids, dtype=object)
        with torch.no_grad():
            probe = self.model.serving_users(self.state, self._history_batch(np.full(1, -1, np.int64), [[]]))
        self._user_dim = int(probe.shape[1])
        self._user_cache = self._known_user_vectors(cache_user_vectors)

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        text_model: str | os.PathLike[str] | None = None,
        verify: bool = True,
        cache_user_vectors: bool | None = None,
    ) -> Scorer:
        """Load the artifact at ``path`` (see :func:`kgrec.serving.artifact.load_artifact`)."""
        return cls(load_artifact(path, device=device, verify=verify), text_model=text_model,
                   cache_user_vectors=cache_user_vectors)

    @property
    def model_version(self) -> str:
        """A short id of the artifact: the first 16 hex digits of its ``config.json`` checksum (a
        sha256 over the data fingerprint, the creation time, the model config and every file's sha256)."""
        return str(self.artifact.config["checksum"])[:16]

    @property
    def serving_settings(self) -> dict[str, Any]:
        """The settings saved with the artifact (``config.json``'s ``serving``)."""
        return dict(self.artifact.config.get("serving", {}))

    @property
    def lexical_weight(self) -> float:
        """The default BM25 weight of :meth:`search` (the artifact's; 0.0 when it has none)."""
        return float(self.serving_settings.get("lexical_weight", 0.0))

    @property
    def num_products(self) -> int:
        return len(self.product_ids)

    @property
    def device(self) -> torch.device:
        return self.state["products"].device

    def _index_attributes(self, start: int) -> None:
        """Brand / category (with ancestors) -> product indices, for filters and neighbours."""
        if start == 0:
            self._by_brand: dict[str, list[int]] = {}
            self._by_category: dict[str, list[int]] = {}
        for i in range(start, len(self.product_ids)):
            if self.brand[i]:
                self._by_brand.setdefault(self.brand[i], []).append(i)
            for c in category_ancestors(self.category[i]):
                self._by_category.setdefault(c, []).append(i)

    def _padded(self, users: np.ndarray) -> torch.Tensor:
        """``[len(users), max_history]`` visible histories, most recent last, -1 padded."""
        lo, hi = self._indptr[users], self._indptr[users + 1]
        lengths = np.minimum(hi - lo, self.max_history)
        rows = np.repeat(np.arange(len(users)), lengths)
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = self.max_history - np.repeat(lengths, lengths) + within
        src = np.repeat(hi - lengths, lengths) + within
        out = np.full((len(users), self.max_history), -1, dtype=np.int64)
        out[rows, cols] = self._hist_products[src]
        return torch.as_tensor(out)

    def _product_index(self, product_id: Any, what: str = "product") -> int:
        try:
            return self._pid[str(product_id)]
        except KeyError:
            raise ValueError(f"unknown {what} id {str(product_id)!r}") from None

    @property
    def can_search(self) -> bool:
        """Whether the model reads text, so :meth:`search` can encode queries."""
        return self._reads_text()

    def warm_up(self) -> None:
        """Build what the first requests would otherwise build: the text encoder (when the model
        searches), the unit product vectors (when it has product vectors) and BM25 (when the
        artifact's lexical weight uses it)."""
        if self.can_search:
            self.text_encoder().encode(["warm up"])
            if self.lexical_weight > 0:
                self.lexical_ranker()
        if not isinstance(self.model, Popularity):
            self._unit_products()
        if self.user_ids:
            self.recommend(self.user_ids[:1], k=1)

    def knows_user(self, user_id: str) -> bool:
        """Whether the artifact holds ``user_id``."""
        return str(user_id) in self._uid

    def knows_product(self, product_id: str) -> bool:
        """Whether ``product_id`` is in the catalogue (the artifact's or added)."""
        return str(product_id) in self._pid

    def title(self, product_id: str) -> str:
        """The product's title (ValueError for an unknown id)."""
        return self.titles[self._product_index(product_id)]

    def check_filters(self, filters: Mapping[str, Any] | None) -> None:
        """Raise ValueError naming the first unknown filter key or value (see :meth:`candidates`)."""
        for key, values in (filters or {}).items():
            if key not in FILTER_KEYS:
                raise ValueError(f"unknown filter {key!r}; known: {list(FILTER_KEYS)}")
            table = self._by_category if key == "category" else self._by_brand
            for value in [values] if isinstance(values, str) else list(values):
                if str(value) not in table:
                    raise ValueError(f"unknown {key} {str(value)!r} in filters")

    def user_history(self, user_id: str) -> list[str]:
        """A known user's visible history (oldest first); [] for an unknown user."""
        u = self._uid.get(str(user_id))
        if u is None:
            return []
        return [self.product_ids[p] for p in self._hist_products[self._indptr[u] : self._indptr[u + 1]]]

    # ------------------------------------------------------------------ users

    def _known_user_vectors(self, cache: bool | None, chunk: int = 2048) -> torch.Tensor | None:
        """``[U, d]`` every known user's vector from their stored history (no session), or None."""
        n = len(self.user_ids)
        if n == 0:
            return None
        if cache is None:
            cache = n * self._user_dim * 4 <= USER_CACHE_BYTES
        if not cache:
            return None
        parts = []
        with torch.no_grad():
            for start in range(0, n, chunk):
                users = np.arange(start, min(start + chunk, n), dtype=np.int64)
                parts.append(self.model.serving_users(self.state, self._history_batch(users, [[]] * len(users))))
        return torch.cat(parts)

    def _history_batch(self, index: np.ndarray, sessions: Sequence[Sequence[int]]) -> RecBatch:
        """A :class:`RecBatch` of users ``index`` (-1 = unknown) whose history is the stored one
        followed by the row's session items, the last ``max_history`` right-aligned."""
        history = torch.full((len(index), self.max_history), -1, dtype=torch.long)
        known = index >= 0
        if known.any():
            history[torch.as_tensor(known)] = self._padded(index[known])
        for row, (u, items) in enumerate(zip(index, sessions)):
            if items:  # session items follow the stored history (most recent last)
                past = self._hist_products[self._indptr[u] : self._indptr[u + 1]] if u >= 0 else np.empty(0, np.int64)
                merged = np.concatenate([past, np.asarray(items, dtype=np.int64)])[-self.max_history :]
                history[row] = -1
                history[row, self.max_history - len(merged) :] = torch.as_tensor(merged)
        targets = torch.full((len(index),), -1, dtype=torch.long)
        return RecBatch(torch.as_tensor(index), history, targets).to(self.device)

    def _row_sessions(self, user_ids: list[str], session: Any) -> list[list[str]]:
        """``session`` of :meth:`recommend` (ids for every user, or ``{user_id: ids}``) as one list per row."""
        if session is None:
            return [[] for _ in user_ids]
        if isinstance(session, Mapping):
            unknown = set(map(str, session)) - set(user_ids)
            if unknown:
                raise ValueError(f"session given for user {sorted(unknown)[0]!r}, who is not in the request")
            return [_id_list(s, "session") if len(s) else [] for s in (session.get(u, []) for u in user_ids)]
        items = _id_list(session, "session") if len(session) else []
        return [items for _ in user_ids]

    def user_rows(
        self, user_ids: Sequence[str], sessions: Sequence[Sequence[str]] | None = None, all_vectors: bool = False
    ) -> UserRows:
        """Vectors, sources and seen products of request rows, one per user id.

        ``sessions[i]`` are row ``i``'s session product ids (None: no sessions). Known users without
        a session read the vectors cached at load; the others go through the model's user tower
        in one call. Rows scored by popularity skip the tower (zeros) unless ``all_vectors``.
        Unknown session product ids raise ValueError.
        """
        user_ids = [str(u) for u in user_ids]
        count = len(user_ids)
        items = [[] for _ in user_ids] if sessions is None else [
            [self._product_index(p, "session product") for p in s] for s in sessions
        ]
        if len(items) != count:
            raise ValueError(f"{len(items)} sessions for {count} users")
        index = np.fromiter((self._uid.get(u, -1) for u in user_ids), dtype=np.int64, count=count)
        known = index >= 0
        safe = np.where(known, index, 0)
        lo = np.where(known, self._indptr[safe], 0)
        past = np.where(known, self._indptr[safe + 1], 0) - lo
        with_session = np.fromiter((bool(s) for s in items), dtype=bool, count=count)
        if isinstance(self.model, Popularity):
            popular = np.ones(count, dtype=bool)
        else:
            popular = (past == 0) & ~with_session
        sources = np.where(popular, "popularity", np.where(past > 0, "history", "session")).tolist()

        # seen: each row's stored history, then its session
        rows = np.repeat(np.arange(count), past)
        offsets = np.arange(int(past.sum())) - np.repeat(np.cumsum(past) - past, past)
        cols = self._hist_products[np.repeat(lo, past) + offsets]
        if with_session.any():
            extra = [s for s in items if s]
            rows = np.concatenate([rows, np.repeat(np.flatnonzero(with_session), [len(s) for s in extra])])
            cols = np.concatenate([cols, np.concatenate([np.asarray(s, dtype=np.int64) for s in extra])])

        cached = known & ~with_session if self._user_cache is not None else np.zeros(count, dtype=bool)
        tower = ~cached & (~popular | all_vectors)
        if self._user_cache is not None and cached.all():
            vectors = self._user_cache[torch.as_tensor(index)]
        else:
            vectors = torch.zeros(count, self._user_dim, device=self.device)
            if tower.any():
                need = np.flatnonzero(tower)
                with torch.no_grad():
                    computed = self.model.serving_users(self.state, self._history_batch(index[need], [items[i] for i in need]))
                vectors[torch.as_tensor(tower, device=self.device)] = computed.to(vectors)
            if self._user_cache is not None and cached.any():
                vectors[torch.as_tensor(cached, device=self.device)] = self._user_cache[torch.as_tensor(index[cached])]
        return UserRows(vectors, torch.as_tensor(popular, device=self.device), sources, rows, cols.astype(np.int64))

    def _users(self, user_ids: list[str], session: Any = None):
        """``(vectors [B, d], popularity rows [B] bool, sources, seen [B] arrays)`` (see :meth:`user_rows`)."""
        user_ids = list(user_ids)
        rows = self.user_rows(user_ids, self._row_sessions(user_ids, session), all_vectors=True)
        splits = np.cumsum(np.bincount(rows.seen_rows, minlength=len(user_ids)))[:-1]
        order = np.argsort(rows.seen_rows, kind="stable")
        return rows.vectors, rows.popular, rows.sources, np.split(rows.seen_cols[order], splits)

    def user_vectors(self, user_ids: list[str]) -> torch.Tensor:
        """``[B, d]`` the model's vectors of known users (those ``recommend`` multiplies with)."""
        unknown = [u for u in user_ids if u not in self._uid]
        if unknown:
            raise ValueError(f"unknown user id {unknown[0]!r} ({len(unknown)} unknown)")
        return self.user_rows(list(user_ids), all_vectors=True).vectors

    def candidates(self, filters: Mapping[str, Any] | None) -> torch.Tensor | None:
        """``[P]`` bool of the products that pass ``filters`` (None = all).

        ``{"category": id or [ids], "brand": id or [ids]}``: a product passes a category
        filter when its leaf category is the given category or below it; values of one
        key are OR-ed, keys AND-ed. Unknown keys or values raise ValueError.
        """
        if not filters:
            return None
        keep = torch.ones(self.num_products, dtype=torch.bool)
        for key, values in filters.items():
            if key not in FILTER_KEYS:
                raise ValueError(f"unknown filter {key!r}; known: {list(FILTER_KEYS)}")
            values = [values] if isinstance(values, str) else list(values)
            table = self._by_category if key == "category" else self._by_brand
            allowed = torch.zeros(self.num_products, dtype=torch.bool)
            for value in values:
                if str(value) not in table:
                    raise ValueError(f"unknown {key} {str(value)!r} in filters")
                allowed[table[str(value)]] = True
            keep &= allowed
        return keep.to(self.device)

    def _top(
        self,
        vectors: torch.Tensor,
        products: torch.Tensor,
        k: int,
        filters: Mapping[str, Any] | None = None,
        exclude: tuple[np.ndarray, np.ndarray] | None = None,
        popular: torch.Tensor | None = None,
        lexical: tuple[float, torch.Tensor] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """One matrix product and one ``torch.topk`` for the whole batch.

        Only the products that pass ``filters`` enter the product (so a narrow filter is
        cheaper, not dearer); ``exclude`` = ``(rows, product indices)`` masks products per row;
        rows flagged in ``popular`` are scored by popularity instead of the model; ``lexical`` =
        ``(weight, [B, P] scores)`` mixes those scores in (:func:`kgrec.search.hybrid.mix`, over the
        candidates that pass ``filters``).
        """
        keep = self.candidates(filters)
        cols = None if keep is None else keep.nonzero().squeeze(1)
        scores = vectors @ (products if cols is None else products[cols]).T
        if lexical is not None:
            from kgrec.search.hybrid import mix

            weight, extra = lexical
            scores = mix(scores, extra if cols is None else extra[:, cols], weight)
        if popular is not None and bool(popular.any()):
            counts = self.popularity.to(scores) if cols is None else self.popularity.to(scores)[cols]
            scores[popular] = counts
        if exclude is not None and len(exclude[0]):
            rows, masked = (torch.as_tensor(a, dtype=torch.long, device=scores.device) for a in exclude)
            if cols is not None:  # product index -> column among the candidates (-1: not a candidate)
                position = torch.full((self.num_products,), -1, dtype=torch.long, device=scores.device)
                position[cols] = torch.arange(len(cols), device=scores.device)
                masked = position[masked]
                rows, masked = rows[masked >= 0], masked[masked >= 0]
            scores[rows, masked] = float("-inf")
        k = min(k, scores.shape[1])
        if k == 0:
            return [[] for _ in range(scores.shape[0])]
        top = torch.topk(scores, k, dim=1)
        indices = top.indices if cols is None else cols[top.indices]
        ids = self._ids[indices.cpu().numpy()].tolist()
        values = top.values.cpu()
        if bool(torch.isinf(values).any()):  # fewer than k candidates left in some rows
            return [[(p, v) for p, v in zip(ps, vs) if v != float("-inf")] for ps, vs in zip(ids, values.tolist())]
        return [list(zip(ps, vs)) for ps, vs in zip(ids, values.tolist())]

    # ------------------------------------------------------------------ recommend

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        exclude_seen: bool = True,
        filters: Mapping[str, Any] | None = None,
        session: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    ) -> list[Recommendation]:
        """Top ``k`` products per user, best first (fewer when fewer candidates pass).

        Args:
            user_ids: external user ids; unknown ones are cold-start users.
            exclude_seen: drop the user's visible history and session items.
            filters: see :meth:`candidates`.
            session: product ids for every user of the request, or ``{user_id: [ids]}``.
        """
        user_ids = _id_list(user_ids, "user_ids")
        return self.recommend_rows(user_ids, self._row_sessions(user_ids, session), k, exclude_seen, filters)

    def recommend_rows(
        self,
        user_ids: Sequence[str],
        sessions: Sequence[Sequence[str]] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        filters: Mapping[str, Any] | None = None,
    ) -> list[Recommendation]:
        """:meth:`recommend` with one session per row (``sessions[i]`` for ``user_ids[i]``; a user
        id may appear in several rows with different sessions), as the HTTP service batches requests."""
        user_ids = _id_list(user_ids, "user_ids")
        k = _check_k(k)
        rows = self.user_rows(user_ids, sessions)
        exclude = (rows.seen_rows, rows.seen_cols) if exclude_seen else None
        items = self._top(rows.vectors, self.state["products"], k, filters, exclude, rows.popular)
        return [Recommendation(u, i, s) for u, i, s in zip(user_ids, items, rows.sources)]

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """The model's score of each ``(user_id, product_id)`` pair (known users only)."""
        pairs = [(str(u), str(p)) for u, p in pairs]
        if not pairs:
            return []
        for u, _ in pairs:
            if u not in self._uid:
                raise ValueError(f"unknown user id {u!r}")
        users = list(dict.fromkeys(u for u, _ in pairs))
        row = {u: i for i, u in enumerate(users)}
        rows = torch.as_tensor([row[u] for u, _ in pairs], device=self.device)
        products = torch.as_tensor([self._product_index(p) for _, p in pairs], device=self.device)
        users_ = self.user_rows(users)
        dots = (users_.vectors[rows] * self.state["products"][products]).sum(-1)
        return torch.where(users_.popular[rows], self.popularity.to(dots)[products], dots).tolist()

    # ------------------------------------------------------------------ similar / search

    def _unit_products(self) -> torch.Tensor:
        if self._unit is None:
            if isinstance(self.model, Popularity):
                raise ValueError("the popularity model has no product vectors: similar / search need one")
            self._unit = F.normalize(self.state["products"], dim=-1)
        return self._unit

    def similar(
        self, product_ids: Sequence[str], k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per product, the ``k`` nearest other products by cosine of the model's product vectors."""
        product_ids = _id_list(product_ids, "product_ids")
        index = np.asarray([self._product_index(p) for p in product_ids], dtype=np.int64)
        k = _check_k(k)
        unit = self._unit_products()
        itself = (np.arange(len(index)), index)
        return self._top(unit[torch.as_tensor(index, device=self.device)], unit, k, filters, exclude=itself)

    def text_encoder(self):
        """The artifact's text encoder (loaded on first use; fingerprint checked)."""
        if self._encoder is None:
            from kgrec.encoders.text import TextEncoder, TextEncoderConfig

            info = self.artifact.text_encoder_info
            if not info:
                raise ValueError("the artifact records no text encoder: search and add_products need one")
            config = dict(info.get("config") or {"model_path": info["path"]})
            if self._text_model is not None:
                config["model_path"] = str(self._text_model)
            encoder = TextEncoder(TextEncoderConfig(**config))
            if encoder.fingerprint != info["fingerprint"]:
                raise ArtifactError(
                    encoder.model_path,
                    f"text encoder fingerprint {encoder.fingerprint} differs from the artifact's {info['fingerprint']}",
                )
            tuning = self.artifact.config.get("text_tuning", {"mode": "frozen"})
            if tuning.get("mode", "frozen") != "frozen":  # queries and new products go through the tuned tower
                from kgrec.encoders.tuning import TunedTextEncoder

                encoder = TunedTextEncoder.load(self.artifact.path / "text_tower", encoder)
            self._encoder = encoder.to(self.device).eval()
        return self._encoder

    def _reads_text(self) -> bool:
        return isinstance(self.model, TextZeroShot) or (
            isinstance(self.model, FusedRecommender) and self.model.config.use_text
        )

    @property
    def default_user_weight(self) -> float:
        """The default ``user_weight`` of :meth:`search`: the weight learned in search training
        (``search_user_weight``), 0.3 for a model never trained to search."""
        learned = getattr(self.model, "search_user_weight", None)
        return float(learned.detach()) if learned is not None and float(learned.detach()) != 0.0 else 0.3

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        user_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
        session: Sequence[str] | None = None,
        user_weight: float | None = None,
        lexical_weight: float | None = None,
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Products for a text query (or a list of queries), best first, by cosine.

        With ``user_id`` (and/or ``session``) the query vector leans towards that user
        (see the module docstring) by ``user_weight``: default :attr:`default_user_weight`.
        ``lexical_weight`` in [0, 1] mixes in BM25 over the product titles (hybrid search in the
        module docstring; 0 = the model alone); default :attr:`lexical_weight`, the weight saved
        in the artifact (chosen on validation queries when it was trained). Both weights must be
        finite numbers (ValueError otherwise).
        Returns one list for a string, a list of lists for a list.
        """
        single = isinstance(query, str)
        queries: list[str] = [query] if isinstance(query, str) else [str(q) for q in query]
        personal = user_id is not None or bool(session)
        users = [str(user_id) if user_id is not None else SESSION_USER] * len(queries) if personal else None
        sessions = [_id_list(session, "session") if session else []] * len(queries) if personal else None
        out = self.search_rows(queries, k, users, sessions, filters, user_weight, lexical_weight)
        return out[0] if single else out

    def search_rows(
        self,
        queries: Sequence[str],
        k: int = 10,
        user_ids: Sequence[str | None] | None = None,
        sessions: Sequence[Sequence[str]] | None = None,
        filters: Mapping[str, Any] | None = None,
        user_weight: float | None = None,
        lexical_weight: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`search` with one user per row (``user_ids[i]`` and ``sessions[i]`` personalise
        ``queries[i]``; None and [] leave it alone), as the HTTP service batches requests: one
        text-encoder pass, one user-tower call and one matrix product for all rows."""
        queries = [str(q) for q in queries]
        if not queries or any(not q.strip() for q in queries):
            raise ValueError("search needs a non-empty query")
        k = _check_k(k)
        user_weight = self.default_user_weight if user_weight is None else _check_weight(user_weight, "user_weight")
        if lexical_weight is None:
            lexical_weight = self.lexical_weight
        lexical_weight = _check_weight(lexical_weight, "lexical_weight", 0.0, 1.0)
        if not self._reads_text():
            raise ValueError(f"model {self.model.name!r} has no text tower: it cannot search by text")
        user_ids = list(user_ids) if user_ids is not None else [None] * len(queries)
        sessions = [list(s) for s in sessions] if sessions is not None else [[] for _ in queries]
        if len(user_ids) != len(queries) or len(sessions) != len(queries):
            raise ValueError(f"{len(queries)} queries, {len(user_ids)} user ids and {len(sessions)} sessions")
        text = self.text_encoder().encode(queries).to(self.device)
        with torch.no_grad():
            q = self.model.serving_query(self.state, text)
        personal = [i for i, (u, s) in enumerate(zip(user_ids, sessions)) if u is not None or s]
        if personal:
            rows = self.user_rows([str(user_ids[i]) if user_ids[i] is not None else SESSION_USER for i in personal],
                                  [sessions[i] for i in personal])
            lean = [i for i, popular in zip(personal, rows.popular.tolist()) if not popular]
            if lean:
                at = torch.as_tensor(lean, device=self.device)
                vectors = rows.vectors[~rows.popular]
                q = q.clone()
                q[at] = F.normalize(q[at] + user_weight * F.normalize(vectors, dim=-1), dim=-1)
        lexical = None
        if lexical_weight > 0:
            lexical = (lexical_weight, self.lexical_ranker().score_all(queries).to(self.device))
        return self._top(q, self._unit_products(), k, filters, lexical=lexical)

    def lexical_ranker(self):
        """The :class:`~kgrec.search.bm25.BM25Ranker` over the product titles (built on first use,
        rebuilt after :meth:`add_products`)."""
        if self._bm25 is None:
            from kgrec.search.bm25 import BM25Ranker

            self._bm25 = BM25Ranker(self.titles)
        return self._bm25

    # ------------------------------------------------------------------ explain

    def _buyer_index(self) -> dict[int, dict[int, str]]:
        if self._buyers is None:
            users = np.repeat(np.arange(len(self.user_ids)), np.diff(self._indptr))
            buyers: dict[int, dict[int, str]] = {}
            for u, p, r in zip(users.tolist(), self._hist_products.tolist(), self._hist_rels.tolist()):
                buyers.setdefault(p, {})[u] = r
            self._buyers = buyers
        return self._buyers

    def explain(
        self, user_id: str, product_id: str, max_paths: int = 5, session: Sequence[str] | None = None
    ) -> Explanation:
        """The best knowledge-graph paths from the user's history to ``product_id``
        (see :mod:`kgrec.serving.explain`). An unknown user needs ``session``."""
        user_id = str(user_id)
        target = self._product_index(product_id)
        u = self._uid.get(user_id, -1)
        if u < 0 and not session:
            raise ValueError(f"unknown user id {user_id!r} (pass session=[product ids] for a new user)")
        vectors, pop, sources, _ = self._users([user_id], session)
        history = []
        if u >= 0:
            lo, hi = self._indptr[u], self._indptr[u + 1]
            history = list(zip(self._hist_products[lo:hi].tolist(), self._hist_rels[lo:hi].tolist()))
        history += [(self._product_index(p, "session product"), SESSION) for p in (session or [])]
        model_score = float(self.popularity[target]) if bool(pop[0]) else float(vectors[0] @ self.state["products"][target])
        paths = find_paths(
            user_id=user_id, user_index=u, history=history, target=target,
            product_ids=self.product_ids, titles=self.titles, brand=self.brand, category=self.category,
            buyers=self._buyer_index(), user_ids=self.user_ids,
            product_vectors=self.state["products"] if not isinstance(self.model, Popularity) else torch.ones(self.num_products, 1),
            user_vector=None if bool(pop[0]) else vectors[0],
            max_paths=max_paths,
        )
        return Explanation(user_id, str(product_id), sources[0], model_score, paths)

    # ------------------------------------------------------------------ cold-start products

    def add_products(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Add products the model never saw, scorable at once (no retraining).

        ``frame`` has ``product_id``, ``title`` and optionally ``brand`` and
        ``category_path`` (a list of levels or a ``" > "``-joined id). Returns, per new
        product, the neighbours its graph vector was averaged from (``category``,
        ``category_products``, ``brand_products``). The additions live in this Scorer
        only (the artifact on disk is unchanged).
        """
        if "product_id" not in frame.columns or "title" not in frame.columns:
            raise ValueError("add_products needs columns product_id and title")
        ids = frame["product_id"].astype(str).tolist()
        for pid in ids:
            if not pid.strip():
                raise ValueError("add_products: empty product_id")
            if pid in self._pid:
                raise ValueError(f"product id {pid!r} already exists")
        if len(set(ids)) != len(ids):
            dup = next(p for p in ids if ids.count(p) > 1)
            raise ValueError(f"product id {dup!r} appears twice")
        titles = frame["title"].fillna("").astype(str).tolist()
        brands = frame["brand"].fillna("").astype(str).tolist() if "brand" in frame.columns else [""] * len(ids)
        paths = []
        for value in frame["category_path"] if "category_path" in frame.columns else [[]] * len(ids):
            if isinstance(value, str):
                value = [v for v in value.split(CATEGORY_SEPARATOR) if v]
            paths.append(CATEGORY_SEPARATOR.join(value if value is not None else []))
        texts = [f"{t}. {c.replace(CATEGORY_SEPARATOR, ' ')}. {b}." for t, c, b in zip(titles, paths, brands)]

        existing = self.num_products
        weights = torch.zeros(len(ids), existing)
        report = []
        for row, (cat, brand) in enumerate(zip(paths, brands)):
            used = next((c for c in category_ancestors(cat) if c in self._by_category), "")
            members = [self._by_category[used]] if used else []
            if brand in self._by_brand:
                members.append(self._by_brand[brand])
            if not members:  # nothing shared: the catalogue mean
                members = [list(range(existing))]
            for group in members:
                weights[row, group] += 1.0 / (len(group) * len(members))
            report.append({"product_id": ids[row], "category": used,
                           "category_products": len(self._by_category.get(used, [])) if used else 0,
                           "brand_products": len(self._by_brand.get(brand, []))})
        text = self.text_encoder().encode(texts) if self._reads_text() else None
        self.state = self.model.serving_add_products(self.state, text, weights.to(self.device))
        self.product_ids += ids
        self._ids = np.asarray(self.product_ids, dtype=object)
        self._pid.update({p: existing + i for i, p in enumerate(ids)})
        self.titles += titles
        self.brand = np.concatenate([self.brand, np.asarray(brands, dtype=object)])
        self.category = np.concatenate([self.category, np.asarray(paths, dtype=object)])
        self._index_attributes(existing)
        self.popularity = torch.cat([self.popularity, torch.zeros(len(ids))])
        self._unit = None
        self._bm25 = None  # known users' cached vectors stay valid: their histories and products are unchanged
        return pd.DataFrame(report)
