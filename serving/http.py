"""The scoring API over HTTP: a FastAPI app around :class:`~kgrec.serving.api.Scorer`, and its page.

Run it::

    python -m kgrec.serving.http --artifact runs/artifact [--host 127.0.0.1 --port 8000]

or from Python: :func:`serve` (blocking) or :func:`create_app` (an ASGI app for any server).

Routes (JSON; every response names the ``model_version`` that produced it):

* ``POST /v1/recommend`` ``{"user_ids": [...], "k": 10, "session": [...], "filters": {...}}``
* ``POST /v1/search`` ``{"queries": [...], "k": 10, "user_id": null, "lexical_weight": null}``
* ``POST /v1/similar`` ``{"product_ids": [...], "k": 10, "filters": {...}}``
* ``POST /v1/score`` ``{"user_ids": [...], "product_ids": [...]}``
* ``POST /v1/explain`` ``{"user_id": "...", "product_ids": [...], "max_paths": 5}``
* ``GET /v1/model``; ``GET /healthz`` (the process answers), ``GET /readyz`` (a model is
  loaded), ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``GET /`` (the page)
* ``POST /admin/reload`` ``{"artifact": null | "DIR"}``: load an artifact beside the current one
  and swap when it is ready.

Each answers a list, one entry per user, query or product of the request. Recommend, search
and similar requests that arrive together are scored in one batch (:mod:`kgrec.serving.batching`)
on one scoring thread, off the event loop. A reload loads and warms the new scorer on another
thread and then replaces one reference: a batch reads the reference once, so no response mixes
versions and no request waits for the load.

Bad input answers a JSON 4xx body ``{"error", "status", "fields": [{"field", "message"}]}``;
a server fault answers 500 with no traceback (it is logged). With the environment variable named
by ``api_key_env`` (default ``KGREC_API_KEY``) set, the ``/v1`` and ``/admin`` routes need the
header ``X-API-Key``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from kgrec.serving.api import SESSION_USER, Scorer
from kgrec.serving.batching import BatchStats, MicroBatcher

log = logging.getLogger("kgrec.serving.http")

PAGE = Path(__file__).resolve().parent / "page"
API_KEY_HEADER = "X-API-Key"

# Request bounds (part of the OpenAPI schema, so they are fixed here rather than per server).
MAX_K = 1000
MAX_IDS = 1000
MAX_SESSION = 200
MAX_QUERIES = 64
MAX_QUERY_CHARS = 512
MAX_ID_CHARS = 256
MAX_PATHS = 20
MAX_FILTER_VALUES = 100


@dataclass
class ServeConfig:
    """Settings of the HTTP service.

    Attributes:
        artifact: the artifact folder to serve (and to reload from by default).
        host, port: where :func:`serve` binds (default 127.0.0.1:8000: loopback only).
        device: the scorer's device (default ``cpu``).
        text_model: the text encoder's folder if it moved since the artifact was saved.
        max_wait_ms: how long a batch waits for more requests after its first (default 2 ms; no wait
            when no other request of its kind is in the server).
        max_batch_rows: a batch closes early at this many rows (users, queries, products; default 256).
        max_body_bytes: larger request bodies answer 413 (default 1 MiB).
        api_key_env: the environment variable holding the API key (unset or empty: no key needed).
        watch_seconds: poll the artifact's ``config.json`` this often and reload when its checksum
            changes (0 = off; ``POST /admin/reload`` always works).
        allow_reload: whether ``POST /admin/reload`` is served.
        threads: torch threads of the scoring thread (None: torch's default).
        access_log: uvicorn's access log (default off).
        log_level: uvicorn's log level.
    """

    artifact: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    text_model: str | None = None
    max_wait_ms: float = 2.0
    max_batch_rows: int = 256
    max_body_bytes: int = 2**20
    api_key_env: str = "KGREC_API_KEY"
    watch_seconds: float = 0.0
    allow_reload: bool = True
    threads: int | None = None
    access_log: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.max_wait_ms <= 1000 or not math.isfinite(self.max_wait_ms):
            raise ValueError(f"max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.watch_seconds < 0:
            raise ValueError(f"watch_seconds must be >= 0, got {self.watch_seconds}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")


# --------------------------------------------------------------------------- request / response models

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Query = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]
FilterValue = Id | Annotated[list[Id], Field(min_length=1, max_length=MAX_FILTER_VALUES)]
Session = Annotated[list[Id], Field(max_length=MAX_SESSION)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    """Candidates: products in the category (or below it) and/or of the brand; a list ORs its values."""

    category: FilterValue | None = None
    brand: FilterValue | None = None

    def as_dict(self) -> dict[str, Any] | None:
        out = {k: v for k, v in (("category", self.category), ("brand", self.brand)) if v is not None}
        return out or None


class RecommendRequest(_Strict):
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_IDS)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    session: Session | dict[Id, Session] | None = Field(
        None, description="product ids seen in this session: for every user of the request, or per user id")
    filters: Filters | None = None
    exclude_seen: bool = True
    include_history: bool = Field(False, description="also return each user's most recent history (at most 10)")

    @field_validator("session")
    @classmethod
    def _session_users(cls, value, info):
        if isinstance(value, dict):
            unknown = set(value) - set(info.data.get("user_ids") or [])
            if unknown:
                raise ValueError(f"session given for user {sorted(unknown)[0]!r}, who is not in user_ids")
        return value


class SearchRequest(_Strict):
    queries: Annotated[list[Query], Field(min_length=1, max_length=MAX_QUERIES)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    user_id: Id | None = Field(None, description="personalise the queries towards this user")
    session: Session | None = Field(None, description="or towards a visitor with these products")
    filters: Filters | None = None
    user_weight: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] | None = Field(
        None, description="how far the query leans towards the user (null: the model's learned weight)")
    lexical_weight: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = Field(
        None, description="BM25 weight of hybrid search (null: the weight saved in the artifact)")


class SimilarRequest(_Strict):
    product_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_IDS)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    filters: Filters | None = None


class ScoreRequest(_Strict):
    user_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_IDS)]
    product_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_IDS)]


class ExplainRequest(_Strict):
    user_id: Id
    product_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_IDS)]
    max_paths: Annotated[int, Field(ge=1, le=MAX_PATHS)] = 5
    session: Session | None = Field(None, description="products of a visitor the artifact does not hold")


class ReloadRequest(_Strict):
    artifact: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = Field(
        None, description="the artifact folder to load (null: the folder the service was started with)")


class Item(BaseModel):
    product_id: str
    title: str
    score: float


class HistoryItem(BaseModel):
    product_id: str
    title: str


class UserRecommendations(BaseModel):
    user_id: str
    source: Literal["history", "session", "popularity"]
    items: list[Item]
    history: list[HistoryItem] | None = None


class RecommendResponse(BaseModel):
    model_version: str
    results: list[UserRecommendations]


class QueryResults(BaseModel):
    query: str
    items: list[Item]


class SearchResponse(BaseModel):
    model_version: str
    lexical_weight: float
    user_weight: float
    results: list[QueryResults]


class SimilarProducts(BaseModel):
    product_id: str
    title: str
    items: list[Item]


class SimilarResponse(BaseModel):
    model_version: str
    results: list[SimilarProducts]


class UserScores(BaseModel):
    user_id: str
    items: list[Item] = Field(description="the request's products in the request's order")


class ScoreResponse(BaseModel):
    model_version: str
    results: list[UserScores]


class PathNode(BaseModel):
    label: str
    id: str


class PathRel(BaseModel):
    type: str
    direction: Literal["->", "<-"]


class GraphPath(BaseModel):
    kind: str
    via: str
    nodes: list[PathNode]
    rels: list[PathRel]
    score: float
    support: int
    text: str
    cypher: str
    params: dict[str, str | int | float]
    browser_params: str


class ProductExplanation(BaseModel):
    user_id: str
    product_id: str
    title: str
    source: Literal["history", "session", "popularity"]
    model_score: float
    paths: list[GraphPath]


class ExplainResponse(BaseModel):
    model_version: str
    results: list[ProductExplanation]


class ModelInfo(BaseModel):
    model_version: str
    model: str
    created: str
    data_fingerprint: str
    artifact: str
    products: int
    users: int
    can_search: bool
    lexical_weight: float
    user_weight: float
    example_users: list[str]
    loaded_at: float


class Health(BaseModel):
    status: Literal["ok", "loading"]
    model_version: str | None = None


class ReloadResponse(BaseModel):
    model_version: str
    previous: str
    artifact: str
    seconds: float


class FieldError(BaseModel):
    field: str | None
    message: str


class ErrorBody(BaseModel):
    error: str
    status: int
    fields: list[FieldError] = []


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((401, "missing or wrong API key"), (413, "request body too large"),
                       (422, "invalid request (the fields say which)"), (503, "no model loaded yet"))
}


# --------------------------------------------------------------------------- errors


class RequestError(Exception):
    """An invalid request: ``status`` and a message per field (``field`` None: the request as a whole)."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


def _error(status: int, message: str, fields: Sequence[tuple[str | None, str]] = (), headers=None) -> JSONResponse:
    body = {"error": message, "status": status, "fields": [{"field": f, "message": m} for f, m in fields]}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


# --------------------------------------------------------------------------- the model slot


class ModelSlot:
    """The scorer being served and how to replace it.

    ``scorer`` is one reference: readers take it once per batch or request; :meth:`reload`
    builds and warms the new scorer first and then assigns it.
    """

    def __init__(self, config: ServeConfig, scorer: Scorer | None = None) -> None:
        self.config = config
        self.scorer: Scorer | None = scorer
        self.path = Path(config.artifact)
        self.loaded_at = time.time() if scorer is not None else 0.0
        self.reload_lock = asyncio.Lock()

    def load(self, path: Path) -> Scorer:
        """Load and warm a scorer (on a worker thread): the lazily built parts are built here,
        not in the first request after a swap."""
        scorer = Scorer.load(path, device=self.config.device, text_model=self.config.text_model)
        scorer.warm_up()
        return scorer


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kgrec_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("kgrec_http_request_seconds", "HTTP request latency by route", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_rows = Histogram("kgrec_batch_rows", "rows (users, queries, products) scored in one call",
                                    ["kind"], registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_requests = Histogram("kgrec_batch_requests", "requests scored in one call", ["kind"],
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_seconds = Histogram("kgrec_batch_seconds", "seconds of one scoring call", ["kind"],
                                       registry=self.registry,
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
        self.model = Gauge("kgrec_model_info", "the model being served (value 1)",
                           ["model_version", "model", "created"], registry=self.registry)
        self.reloads = Counter("kgrec_reloads", "artifact reloads by outcome", ["outcome"], registry=self.registry)
        self._model_labels: tuple[str, str, str] | None = None

    def batch(self, stats: BatchStats) -> None:
        self.batch_rows.labels(stats.kind).observe(stats.rows)
        self.batch_requests.labels(stats.kind).observe(stats.jobs)
        self.batch_seconds.labels(stats.kind).observe(stats.seconds)

    def serving(self, scorer: Scorer) -> None:
        if self._model_labels is not None:
            self.model.remove(*self._model_labels)
        self._model_labels = (scorer.model_version, scorer.model.name, str(scorer.artifact.config.get("created", "")))
        self.model.labels(*self._model_labels).set(1)


class _Limits:
    """ASGI middleware: body size limit (413) and per-route request metrics."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, in_flight: dict[str, int]) -> None:
        self.app, self.metrics, self.max_body_bytes, self.in_flight = app, metrics, max_body_bytes, in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}
        path = scope.get("path", "")
        counted = path in self.in_flight
        if counted:
            self.in_flight[path] += 1

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                response = _error(413, f"request body larger than {self.max_body_bytes} bytes", [("body", "too large")])
                return await response(scope, receive, sending)
            received = 0

            async def receiving():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise StarletteHTTPException(413, f"request body larger than {self.max_body_bytes} bytes")
                return message

            await self.app(scope, receiving, sending)
        finally:
            if counted:
                self.in_flight[path] -= 1
            route = scope.get("route")
            name = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(name, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)


# --------------------------------------------------------------------------- batched calls


# The scoring thread renders the JSON of each answer (a JSONResponse renders when built), so the event
# loop only writes bytes; the response models document the shape (OpenAPI) and the tests hold the
# answers to them (schemathesis).


def _items(scorer: Scorer, pairs: Sequence[tuple[str, float]]) -> list[dict]:
    return [{"product_id": p, "title": scorer.title(p), "score": s} for p, s in pairs]


def _recommend_batch(scorer: Scorer, payloads: Sequence[tuple]) -> list[JSONResponse]:
    """payloads: ``(user_ids, per-row sessions, include_history, k, exclude_seen, filters)``; one call,
    one rendered answer per payload."""
    _, _, _, k, exclude_seen, filters = payloads[0]
    users = [u for p in payloads for u in p[0]]
    sessions = [s for p in payloads for s in p[1]]
    recs = scorer.recommend_rows(users, sessions, k, exclude_seen, filters)
    out, at = [], 0
    for user_ids, _, history, *_ in payloads:
        results = []
        for rec in recs[at : at + len(user_ids)]:
            entry = {"user_id": rec.user_id, "source": rec.source, "items": _items(scorer, rec.items)}
            if history:
                entry["history"] = [{"product_id": p, "title": scorer.title(p)} for p in scorer.user_history(rec.user_id)[-10:]]
            results.append(entry)
        at += len(user_ids)
        out.append(JSONResponse({"model_version": scorer.model_version, "results": results}))
    return out


def _search_batch(scorer: Scorer, payloads: Sequence[tuple]) -> list[JSONResponse]:
    """payloads: ``(queries, user_id, session, k, filters, user_weight, lexical_weight)``; one call."""
    _, _, _, k, filters, user_weight, lexical_weight = payloads[0]
    queries = [q for p in payloads for q in p[0]]
    users = [p[1] for p in payloads for _ in p[0]]
    sessions = [p[2] or [] for p in payloads for _ in p[0]]
    found = scorer.search_rows(queries, k, users, sessions, filters, user_weight, lexical_weight)
    weights = {
        "lexical_weight": scorer.lexical_weight if lexical_weight is None else lexical_weight,
        "user_weight": scorer.default_user_weight if user_weight is None else user_weight,
    }
    out, at = [], 0
    for p in payloads:
        results = [{"query": q, "items": _items(scorer, found[at + i])} for i, q in enumerate(p[0])]
        at += len(p[0])
        out.append(JSONResponse({"model_version": scorer.model_version, **weights, "results": results}))
    return out


def _similar_batch(scorer: Scorer, payloads: Sequence[tuple]) -> list[JSONResponse]:
    """payloads: ``(product_ids, k, filters)``; one call."""
    _, k, filters = payloads[0]
    products = [p for payload in payloads for p in payload[0]]
    found = scorer.similar(products, k, filters)
    out, at = [], 0
    for product_ids, *_ in payloads:
        results = [{"product_id": p, "title": scorer.title(p), "items": _items(scorer, found[at + i])}
                   for i, p in enumerate(product_ids)]
        at += len(product_ids)
        out.append(JSONResponse({"model_version": scorer.model_version, "results": results}))
    return out


def _score(scorer: Scorer, user_ids: list[str], product_ids: list[str]) -> JSONResponse:
    scores = scorer.score([(u, p) for u in user_ids for p in product_ids])
    n = len(product_ids)
    results = [{"user_id": u, "items": _items(scorer, list(zip(product_ids, scores[i * n : (i + 1) * n])))}
               for i, u in enumerate(user_ids)]
    return JSONResponse({"model_version": scorer.model_version, "results": results})


def _explain(scorer: Scorer, request: ExplainRequest) -> JSONResponse:
    results = []
    for product_id in request.product_ids:
        explanation = scorer.explain(request.user_id, product_id, request.max_paths, request.session)
        entry = explanation.to_dict()
        entry["title"] = scorer.title(product_id)
        entry["paths"] = [
            {**path, "nodes": [{"label": label, "id": node} for label, node in path["nodes"]],
             "rels": [{"type": t, "direction": d} for t, d in path["rels"]]}
            for path in entry["paths"]
        ]
        results.append(entry)
    return JSONResponse({"model_version": scorer.model_version, "results": results})


def _counter(counts: dict[str, int], key: str) -> Callable[[], int]:
    return lambda: counts[key]


def _filters_key(filters: dict | None) -> str:
    return json.dumps(filters, sort_keys=True)


# --------------------------------------------------------------------------- the app


def create_app(artifact: str | os.PathLike[str] | Scorer | ServeConfig, **settings: Any) -> FastAPI:
    """The ASGI app serving ``artifact`` (a folder, a loaded :class:`Scorer`, or a :class:`ServeConfig`;
    ``settings`` are :class:`ServeConfig` fields). A folder is loaded in the background once the
    app starts: ``/readyz`` answers 503 until then."""
    scorer = None
    if isinstance(artifact, ServeConfig):
        config = artifact
    elif isinstance(artifact, Scorer):
        scorer = artifact
        config = ServeConfig(artifact=artifact.artifact.path, **settings)
    else:
        config = ServeConfig(artifact=artifact, **settings)
    slot = ModelSlot(config, scorer)
    metrics = Metrics()
    scoring = ThreadPoolExecutor(1, thread_name_prefix="kgrec-score")
    loading = ThreadPoolExecutor(1, thread_name_prefix="kgrec-load")
    api_key = os.environ.get(config.api_key_env) or None
    batchers: dict[str, MicroBatcher] = {}

    def current() -> Scorer:
        if slot.scorer is None:
            raise RequestError("the model is still loading", status=503)
        return slot.scorer

    in_flight = {f"/v1/{kind}": 0 for kind in ("recommend", "search", "similar")}
    for kind, run in (("recommend", _recommend_batch), ("search", _search_batch), ("similar", _similar_batch)):
        batchers[kind] = MicroBatcher(kind, run, current, scoring, config.max_wait_ms / 1000, config.max_batch_rows,
                                      metrics.batch, in_flight=_counter(in_flight, f"/v1/{kind}"))

    async def reload(path: Path, first: bool = False) -> dict:
        """Load ``path`` beside the current scorer, then swap (``first``: the start-up load, not counted)."""
        async with slot.reload_lock:
            start = time.perf_counter()
            previous = slot.scorer.model_version if slot.scorer is not None else ""
            try:
                scorer = await asyncio.get_running_loop().run_in_executor(loading, slot.load, path)
            except Exception:
                if not first:
                    metrics.reloads.labels("failed").inc()
                raise
            slot.scorer, slot.path, slot.loaded_at = scorer, path, time.time()
            del scorer
            metrics.serving(slot.scorer)
            # The loaded model is millions of long-lived objects: keep them out of the collector's full
            # passes, which would otherwise stall requests for a good part of a second. First let the
            # batches that read the old scorer finish (the scoring thread runs in order), then collect
            # what is left of it and freeze the rest.
            await asyncio.get_running_loop().run_in_executor(scoring, gc.collect, 0)
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            if not first:
                metrics.reloads.labels("ok").inc()
            seconds = time.perf_counter() - start
            version = slot.scorer.model_version
            log.info("serving %s (%s), loaded in %.2f s", version, path, seconds)
            return {"model_version": version, "previous": previous, "artifact": str(path), "seconds": seconds}

    async def watch() -> None:
        while True:
            await asyncio.sleep(config.watch_seconds)
            try:
                saved = json.loads((slot.path / "config.json").read_text())["checksum"]
            except (OSError, ValueError, KeyError):
                continue  # mid-write or gone: look again later
            if slot.scorer is not None and saved != slot.scorer.artifact.config["checksum"]:
                try:
                    await reload(slot.path)
                except Exception as error:
                    log.warning("reload of %s failed: %s", slot.path, error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.threads:
            scoring.submit(torch.set_num_threads, config.threads).result()
        for batcher in batchers.values():
            batcher.start()
        tasks = []
        if slot.scorer is None:
            async def first_load():
                try:
                    await reload(Path(config.artifact), first=True)
                except Exception:
                    log.exception("cannot load %s", config.artifact)
            tasks.append(asyncio.create_task(first_load()))
        else:
            metrics.serving(slot.scorer)
        if config.watch_seconds > 0:
            tasks.append(asyncio.create_task(watch()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for batcher in batchers.values():
                await batcher.stop()
            scoring.shutdown(wait=False, cancel_futures=True)
            loading.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="kgrec scoring API",
        version="1",
        description="Recommendations, search, similar products, scores and knowledge-graph explanations from a kgrec artifact.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.slot, app.state.metrics, app.state.config = slot, metrics, config
    app.add_middleware(_Limits, metrics=metrics, max_body_bytes=config.max_body_bytes, in_flight=in_flight)

    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="needed when the server has an API key")

    async def check_key(key: str | None = Depends(header)) -> None:
        if api_key is not None and (key is None or not secrets.compare_digest(key.encode(), api_key.encode())):
            raise RequestError(f"missing or wrong API key (header {API_KEY_HEADER})", API_KEY_HEADER, status=401)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if error.status == 401 else None
        return _error(error.status, error.message, [(error.field, error.message)], headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = [("body" if e.get("type") == "json_invalid" else _field_name(e.get("loc", ())), str(e.get("msg", "invalid")))
                  for e in error.errors()]
        names = ", ".join(dict.fromkeys(f for f, _ in fields))
        return _error(422, f"invalid request: {names}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400:  # a body FastAPI could not decode (e.g. not UTF-8): invalid like bad JSON
            return _error(422, "invalid request: body", [("body", "the body is not UTF-8 JSON")])
        field = "body" if error.status_code == 413 else None
        return _error(error.status_code, str(error.detail), [(field, "too large")] if field else [], error.headers)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, error: ValueError) -> JSONResponse:  # the scorer's own checks
        return _error(422, str(error), [(None, str(error))])

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return _error(500, "internal server error (logged on the server)")

    keyed = [Depends(check_key)]

    def check_products(scorer: Scorer, ids: Sequence[str] | None, field: str) -> None:
        for i, p in enumerate(ids or []):
            if not scorer.knows_product(p):
                raise RequestError(f"unknown product id {p!r}", f"{field}[{i}]")

    def check_filters(scorer: Scorer, filters: Filters | None) -> dict | None:
        as_dict = filters.as_dict() if filters is not None else None
        try:
            scorer.check_filters(as_dict)
        except ValueError as error:
            raise RequestError(str(error), "filters") from None
        return as_dict

    @app.post("/v1/recommend", response_model=RecommendResponse, tags=["scoring"], dependencies=keyed, responses=ERRORS)
    async def recommend(request: RecommendRequest) -> Any:
        """Top-k products per user (unknown users: their session, else the most popular products)."""
        scorer = current()
        if isinstance(request.session, dict):
            for user, items in request.session.items():
                check_products(scorer, items, f"session.{user}")
            sessions = [request.session.get(u, []) for u in request.user_ids]
        else:
            check_products(scorer, request.session, "session")
            sessions = [request.session or [] for _ in request.user_ids]
        filters = check_filters(scorer, request.filters)
        payload = (request.user_ids, sessions, request.include_history, request.k, request.exclude_seen, filters)
        key = (request.k, request.exclude_seen, _filters_key(filters))
        return await batchers["recommend"].submit(payload, len(request.user_ids), key)

    @app.post("/v1/search", response_model=SearchResponse, tags=["scoring"], dependencies=keyed, responses=ERRORS)
    async def search(request: SearchRequest) -> Any:
        """Products for text queries (optionally personalised; hybrid with BM25 per ``lexical_weight``)."""
        scorer = current()
        if not scorer.can_search:
            raise RequestError(f"model {scorer.model.name!r} has no text tower: it cannot search by text", "queries")
        check_products(scorer, request.session, "session")
        filters = check_filters(scorer, request.filters)
        user = request.user_id if request.user_id is not None else (SESSION_USER if request.session else None)
        payload = (request.queries, user, request.session, request.k, filters, request.user_weight, request.lexical_weight)
        key = (request.k, _filters_key(filters), request.user_weight, request.lexical_weight)
        return await batchers["search"].submit(payload, len(request.queries), key)

    @app.post("/v1/similar", response_model=SimilarResponse, tags=["scoring"], dependencies=keyed, responses=ERRORS)
    async def similar(request: SimilarRequest) -> Any:
        """The nearest other products of each product (cosine of the model's product vectors)."""
        scorer = current()
        if scorer.model.name == "popularity":
            raise RequestError("the popularity model has no product vectors: it cannot find similar products", "product_ids")
        check_products(scorer, request.product_ids, "product_ids")
        filters = check_filters(scorer, request.filters)
        key = (request.k, _filters_key(filters))
        return await batchers["similar"].submit((request.product_ids, request.k, filters), len(request.product_ids), key)

    @app.post("/v1/score", response_model=ScoreResponse, tags=["scoring"], dependencies=keyed, responses=ERRORS)
    async def score(request: ScoreRequest) -> Any:
        """The model's score of each product for each (known) user, in the request's order."""
        scorer = current()
        for i, u in enumerate(request.user_ids):
            if not scorer.knows_user(u):
                raise RequestError(f"unknown user id {u!r}", f"user_ids[{i}]")
        check_products(scorer, request.product_ids, "product_ids")
        if len(request.user_ids) * len(request.product_ids) > MAX_IDS * 10:
            raise RequestError(f"at most {MAX_IDS * 10} user-product pairs per request", "product_ids")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(scoring, _score, scorer, request.user_ids, request.product_ids)

    @app.post("/v1/explain", response_model=ExplainResponse, tags=["scoring"], dependencies=keyed, responses=ERRORS)
    async def explain(request: ExplainRequest) -> Any:
        """Knowledge-graph paths from the user's history (or session) to each product, with Cypher."""
        scorer = current()
        if not scorer.knows_user(request.user_id) and not request.session:
            raise RequestError(f"unknown user id {request.user_id!r} (pass session for a new user)", "user_id")
        check_products(scorer, request.session, "session")
        check_products(scorer, request.product_ids, "product_ids")
        if len(request.product_ids) > 100:
            raise RequestError("at most 100 products per explain request", "product_ids")
        return await asyncio.get_running_loop().run_in_executor(scoring, _explain, scorer, request)

    @app.get("/v1/model", response_model=ModelInfo, tags=["service"], dependencies=keyed, responses=ERRORS)
    async def model_info() -> Any:
        """The model being served."""
        scorer = current()
        config_ = scorer.artifact.config
        with_history = [u for u in scorer.user_ids[:2000] if scorer.user_history(u)]
        return {
            "model_version": scorer.model_version, "model": scorer.model.name, "created": str(config_.get("created", "")),
            "data_fingerprint": scorer.artifact.fingerprint, "artifact": str(slot.path),
            "products": scorer.num_products, "users": len(scorer.user_ids), "can_search": scorer.can_search,
            "lexical_weight": scorer.lexical_weight, "user_weight": scorer.default_user_weight,
            "example_users": sorted(with_history, key=lambda u: -len(scorer.user_history(u)))[:12],
            "loaded_at": slot.loaded_at,
        }

    if config.allow_reload:
        @app.post("/admin/reload", response_model=ReloadResponse, tags=["service"], dependencies=keyed, responses=ERRORS)
        async def admin_reload(request: ReloadRequest | None = None) -> Any:
            """Load an artifact beside the current one and swap to it once it is ready."""
            path = Path(request.artifact) if request is not None and request.artifact else slot.path
            if not (path / "config.json").is_file():
                raise RequestError(f"{path} is not an artifact folder (no config.json)", "artifact")
            try:
                return await reload(path)
            except ValueError as error:  # ArtifactError and the scorer's checks
                raise RequestError(str(error), "artifact") from None

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Any:
        """The process answers (a model may still be loading)."""
        scorer = slot.scorer
        return {"status": "ok" if scorer is not None else "loading", "model_version": scorer.model_version if scorer else None}

    @app.get("/readyz", response_model=Health, tags=["service"], responses={503: ERRORS[503]})
    async def readyz() -> Any:
        """200 once a model is loaded, 503 before."""
        scorer = current()
        return {"status": "ok", "model_version": scorer.model_version}

    @app.get("/metrics", tags=["service"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus metrics"}})
    async def prometheus() -> Response:
        """Prometheus metrics: requests, latency, batch sizes, the model version."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", media_type="text/html")

    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    return app


# --------------------------------------------------------------------------- running it


def serve(artifact: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, **settings: Any) -> None:
    """Serve ``artifact`` with uvicorn until interrupted (``settings``: :class:`ServeConfig` fields)."""
    import uvicorn

    config = ServeConfig(artifact=artifact, host=host, port=port, **settings)
    if not (Path(config.artifact) / "config.json").is_file():
        raise FileNotFoundError(f"{config.artifact}: not an artifact folder (no config.json)")
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, access_log=config.access_log,
                server_header=False, proxy_headers=False, timeout_graceful_shutdown=5)


def main(argv: list[str] | None = None) -> int:
    """``python -m kgrec.serving.http --artifact DIR [--host --port ...]`` (the flags of ``kgrec serve``)."""
    defaults = ServeConfig(artifact="")
    parser = argparse.ArgumentParser(prog="python -m kgrec.serving.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="artifact folder (from `kgrec train`)")
    parser.add_argument("--host", default=defaults.host, help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--device", default=defaults.device, help="cpu | cuda")
    parser.add_argument("--text-model", default=None, help="text encoder folder, if it moved since training")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms, help="batching window after the first request")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch_rows, help="rows that close a batch early")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--api-key-env", default=defaults.api_key_env, help="environment variable holding the API key")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="reload when the artifact's config.json changes (poll interval; 0 = off)")
    parser.add_argument("--no-reload", action="store_true", help="do not serve POST /admin/reload")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for scoring")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default=defaults.log_level)
    args = parser.parse_args(argv)
    try:
        serve(args.artifact, args.host, args.port, device=args.device, text_model=args.text_model,
              max_wait_ms=args.max_wait_ms, max_batch_rows=args.max_batch, max_body_bytes=args.max_body_bytes,
              api_key_env=args.api_key_env, watch_seconds=args.watch, allow_reload=not args.no_reload,
              threads=args.threads, access_log=args.access_log, log_level=args.log_level)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
