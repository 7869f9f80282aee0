"""Knowledge that travels: does a scorer trained on one catalogue start another one better, and with less data?

Usage (repository root, kgrec's venv; Home Depot and ml-100k from ../shared/data, never committed)::

    nice -n 10 python benchmarks/transfer.py --workdir /tmp/kgrec-transfer-bench

Every model goes through the workflow's own path (:func:`kgrec.workflow.models.train_model`, with
:class:`kgrec.workflow.transfer.TransferInit` for the transferred rows: the code behind
``kgrec train --init-from``). In one run, per target catalogue, on one split, the same test queries /
users for every row:

* **search**, Home Depot judgements <-> Amazon-Scientific category-path queries. Rows: BM25, the
  untrained MiniLM (cosine), the fused search model from scratch on 10% / 100% of the target's train
  queries, and the other catalogue's search artifact zero-shot (no judgement of the target at all: no
  query nodes, nothing trained) and fine-tuned on 10% / 100%. Metrics: NDCG@10 / MRR@10 over the whole
  catalogue (graded gains), and on Home Depot also re-ranking each query's judged pool.
* **recommendation**, Amazon-Scientific <-> ml-100k (with its Freebase KG). Rows: popularity, the
  untrained MiniLM (a user is the recency-weighted mean of their history's text vectors), the fused
  model from scratch on 10% / 100% of the target's train interactions, and the other catalogue's
  artifact zero-shot (the user is the transferred user tower over the history's transferred product
  vectors) and fine-tuned on 10% / 100%. Full ranking, seen items excluded, leave-one-out.
* **multi-catalogue pre-training**: one model trained on Home Depot and Amazon-Scientific together
  (one store, one graph: Home Depot's judged queries for search, Amazon's interactions for
  recommendation) transferred to the held-out catalogue ml-100k, beside the Amazon-only and the Home
  Depot-only sources.
* **the source's text towers alone** (``adapter_scale``): on each search target, zero-shot NDCG@10 of the
  source's query and product adapters scaled from 0 (the untrained MiniLM) to 1, validation and test:
  whether what the source learned about text points towards the target's relevance or away from it.
* **the zero-shot BM25 weight**: hybrid curves of the zero-shot scorers on each search catalogue's
  validation queries; the weight with the best worst case (relative to no BM25) is the fallback of a
  search artifact that has no judgements (``kgrec.workflow.train.FALLBACK_LEXICAL_WEIGHT``).

The Amazon-Scientific judged search set (HEM's queries, Ai et al. 2017, as in
``benchmarks/personal_search.py``): every purchase in ``data/amazon-scientific/interactions.csv`` is a
query, ``query_id = "<user_id>/<order>"``, text = the purchased product's category path without its
root level (:func:`kgrec.search.examples.category_query`), the purchased product judged relevant
(grade 1); purchases of products without a category are left out. Unlike HEM the query carries no user
and the user's history is not excluded (anonymous search), and the split is the workflow's
query-disjoint hash split (80/10/10 of the queries), not leave-one-out.

Fractions: "10%" keeps the train queries / train interactions a seeded draw selects (queries by a
hash of their id, interactions uniformly); valid and test are the same for every row, and for
recommendation every model is tested on the full data's histories and graph (what serving sees).
Paired tests (:func:`kgrec.evaluation.significance.paired_test`) compare rows on the same test
queries / users. Writes ``benchmarks/results/transfer.json`` and prints the markdown table.

CPU budget: MiniLM encodes each catalogue once into ``WORKDIR/text-cache``; source artifacts, stores
and each row's per-example results are kept in the workdir, so a rerun resumes (the workdir's
``manifest.json`` records the code version and caps, and another one is refused). A whole run took
73 minutes on 2 cores (``kgrec train``'s defaults: 8 epochs, patience 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
#: Where the shared data sets live (read, never copied into the repository).
SHARED = ROOT.parent / "shared" / "data"
FRACTIONS = (0.1, 1.0)


@dataclass
class Caps:
    """What bounds the CPU time (recorded in the JSON). The defaults are ``kgrec train``'s: 8 epochs,
    patience 2 (``SOFTMAX_TRAINING``), 512 judged queries per search step (``ModelSettings``)."""

    search_epochs: int = 8
    rec_epochs: int = 8
    multi_epochs: int = 8
    patience: int = 2
    search_batch_size: int = 512
    bootstrap: int = 2000
    seed: int = 0
    device: str = "cpu"


# --------------------------------------------------------------------------- data


def prepare_stores(work: Path, amazon: Path, homedepot: Path | None, ml100k: Path | None) -> dict[str, Path]:
    """Ingest every catalogue into an embedded store under ``work/stores`` (once)."""
    from kgrec.ingest.homedepot import convert_homedepot
    from kgrec.search.examples import category_query
    from kgrec.workflow.ingest import ingest_files

    stores: dict[str, Path] = {}

    def ingest(name: str, paths: list[Path]) -> None:
        target = work / "stores" / name
        if not (target / ".ingested").is_file():
            outcome = ingest_files([str(p) for p in paths], str(target))
            if outcome.report.errors:
                raise SystemExit(f"{name}: ingest rejected rows ({outcome.report.errors}); see {target}/_ingest")
            (target / ".ingested").write_text("ok\n")
        stores[name] = target

    tables = work / "tables"
    search_tables = tables / "amazon-search"
    if not (search_tables / "judgements.csv").is_file():
        search_tables.mkdir(parents=True, exist_ok=True)
        products = pd.read_json(amazon / "products.jsonl", lines=True, dtype={"product_id": str})
        inter = pd.read_csv(amazon / "interactions.csv", dtype={"user_id": str, "product_id": str})
        query = dict(zip(products["product_id"], (category_query(p if isinstance(p, list) else []) for p in products["category_path"])))
        judged = pd.DataFrame({"query_id": inter["user_id"] + "/" + inter["order"].astype(str),
                               "query": inter["product_id"].map(query).fillna(""), "product_id": inter["product_id"], "label": 1.0})
        judged[judged["query"] != ""].to_csv(search_tables / "judgements.csv", index=False)
        products.to_json(search_tables / "products.jsonl", orient="records", lines=True)
    ingest("amazon-search", [search_tables])
    ingest("amazon-rec", [amazon])
    if homedepot is not None:
        if not (tables / "homedepot" / "judgements.csv").is_file():
            convert_homedepot(homedepot / "train.csv.zip", tables / "homedepot")
        ingest("homedepot", [tables / "homedepot"])
        ingest("multi", [tables / "homedepot", amazon])
    if ml100k is not None:
        ingest("ml-100k", [ml100k])
    return stores


def search_fraction(dataset, fraction: float, seed: int):
    """``dataset`` with a ``fraction`` of its train queries (a seeded hash of the query id; 0 = no
    judgements at all: no query nodes either). Valid and test queries stay."""
    from kgrec.kg.judgements import QUERY_EDGE_TYPE, QUERY_NODE_TYPE, query_disjoint_split, with_query_nodes

    if fraction >= 1.0:
        return dataset
    if fraction <= 0.0:
        snapshot = replace(dataset.snapshot, id_maps={k: v for k, v in dataset.snapshot.id_maps.items() if k != QUERY_NODE_TYPE},
                           structure={k: v for k, v in dataset.snapshot.structure.items() if k != QUERY_EDGE_TYPE})
        return replace(dataset, snapshot=snapshot, judgements=dataset.judgements.iloc[0:0], queries=dataset.queries.iloc[0:0])
    j = dataset.judgements
    chosen = query_disjoint_split(j["query_id"], (fraction, 0.0, 1.0 - fraction), seed + 101) == "train"
    judgements = j[(j["split"] != "train") | chosen].reset_index(drop=True)
    queries = judgements.drop_duplicates("query_id")[["query_id", "query", "split"]].reset_index(drop=True)
    return replace(dataset, snapshot=with_query_nodes(dataset.snapshot, judgements, dataset.split.min_grade),
                   judgements=judgements, queries=queries)


def rec_fraction(dataset, fraction: float, seed: int):
    """``dataset`` with a seeded ``fraction`` of its train interactions (valid and test targets stay)."""
    if fraction >= 1.0:
        return dataset
    inter = dataset.snapshot.interactions
    train = np.flatnonzero((inter["split"] == "train").to_numpy())
    keep = np.random.default_rng(seed + 202).choice(train, size=int(round(fraction * len(train))), replace=False)
    mask = (inter["split"] != "train").to_numpy().copy()
    mask[keep] = True
    return replace(dataset, snapshot=replace(dataset.snapshot, interactions=inter[mask].reset_index(drop=True)))


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One model on one target: mean metrics and the per-example values of the primary metric."""

    name: str
    kind: str  # baseline | scratch | transfer | ablation (a transfer row with one thing changed)
    fraction: float | None = None
    source: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    per_example: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Shared state of one run: the workdir, caps, encoder and cached rows."""

    def __init__(self, work: Path, caps: Caps, log=print) -> None:
        from kgrec.workflow.features import load_text_encoder

        self.work, self.caps, self.log = work, caps, log
        self.encoder = load_text_encoder(None)
        self.cache = work / "text-cache"

    def features(self, dataset):
        from kgrec.workflow.features import encode_text

        return encode_text(dataset, self.encoder, self.cache)

    def settings(self, epochs: int):
        from kgrec.fusion.registry import SOFTMAX_TRAINING
        from kgrec.workflow.models import ModelSettings

        train = replace(SOFTMAX_TRAINING, epochs=epochs, patience=self.caps.patience)
        return ModelSettings(train=train, seed=self.caps.seed, device=self.caps.device,
                             search_batch_size=self.caps.search_batch_size)

    def cached(self, part: str, target: str, key: str, compute) -> Row:
        file = self.work / "rows" / part / target / f"{key}.json"
        if file.is_file():
            return Row(**json.loads(file.read_text()))
        start = time.perf_counter()
        row = compute()
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(asdict(row)))
        self.log(f"  {part}/{target}: {row.name:<34} {_primary(row):.4f}  ({time.perf_counter() - start:.0f} s)")
        return row

    def train(self, name: str, dataset, tasks: tuple[str, ...], epochs: int, source: Path | None = None,
              zero_fresh_ids: bool = True):
        from kgrec.workflow.models import train_model
        from kgrec.workflow.transfer import TransferInit, load_source

        features = self.features(dataset)
        init = TransferInit(load_source(source), self.encoder, zero_fresh_ids) if source is not None else None
        trained = train_model(name, dataset, features, tasks, self.settings(epochs), init=init)
        return trained, features, init

    def source_artifact(self, label: str, dataset, tasks: tuple[str, ...], epochs: int, own_row=None) -> Path:
        """Train (once) and save the artifact other catalogues start from.

        The source is trained exactly as its own catalogue's from-scratch row on 100% of the data (same
        data, tasks, epochs and seed), so ``own_row = (part, store, row_of)`` writes that row from the same
        model instead of training it twice; ``row_of(trained)`` makes the :class:`Row`."""
        from kgrec.serving.artifact import save_artifact

        path = self.work / "artifacts" / label
        if not (path / "config.json").is_file():
            start = time.perf_counter()
            trained, features, _ = self.train("fused", dataset, tasks, epochs)
            save_artifact(trained.model, dataset.snapshot, path, text_encoder=features.encoder,
                          metrics={"epochs": len(trained.history.losses), "best_epoch": trained.history.best_epoch},
                          overwrite=True)
            self.log(f"  source {label}: trained in {time.perf_counter() - start:.0f} s")
            if own_row is not None:
                part, store, row_of = own_row
                self.cached(part, store, "scratch-1", lambda: row_of(trained))
        return path

    def check_manifest(self) -> None:
        """Refuse a workdir whose rows came from other code or other caps: cached rows and source artifacts
        would be silently mixed with new ones."""
        manifest = {"code": _code_version(), "caps": asdict(self.caps)}
        file = self.work / "manifest.json"
        if file.is_file():
            old = json.loads(file.read_text())
            if old != manifest:
                raise SystemExit(f"{self.work} holds rows of another code version or caps ({old}); "
                                 f"pass a fresh --workdir (now: {manifest})")
        else:
            file.write_text(json.dumps(manifest, indent=2) + "\n")


def _code_version() -> str:
    """The git commit of the model code (kgrec/, fusion/, encoders/, kg/), with ``+dirty`` for uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "kgrec", "fusion", "encoders", "kg")
    return commit + ("+dirty" if dirty else "")


def _primary(row: Row) -> float:
    return row.metrics.get("ndcg@10", float("nan"))


def _search_row(name: str, kind: str, scores_of, test, fraction=None, source=None, history=None,
                extra=None, pool: bool = False) -> Row:
    from kgrec.evaluation.search import search_metrics_per_query

    per = search_metrics_per_query(scores_of, test, ks=(10,), protocol="full")
    metrics = {m: float(v.float().mean()) for m, v in per.items() if m in ("ndcg@10", "mrr@10", "recall@10")}
    if pool:
        rerank = search_metrics_per_query(scores_of, test, ks=(10,), protocol="rerank")
        metrics["rerank ndcg@10"] = float(rerank["ndcg@10"].float().mean())
        extra = {**(extra or {}), "rerank_per_example": rerank["ndcg@10"].float().tolist()}
    return Row(name, kind, fraction, source, metrics, per["ndcg@10"].float().tolist(),
               round(history.seconds, 1) if history else 0.0, len(history.losses) if history else 0, extra or {})


def run_search_target(bench: Bench, target: str, stores: dict[str, Path], source: Path, source_name: str) -> list[Row]:
    """Every search row on ``target`` (see the module docstring)."""
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.search.bm25 import BM25Ranker
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.models import search_examples

    caps = bench.caps
    dataset = load_dataset(EmbeddedStore(stores[target]))
    features = bench.features(dataset)
    test = search_examples(dataset, features, "test")
    pool = target == "homedepot"
    rows = [
        bench.cached("search", target, "bm25", lambda: _search_row(
            "BM25", "baseline", BM25Ranker(dataset.titles).score_all(list(test.texts or [])), test, pool=pool)),
        bench.cached("search", target, "minilm", lambda: _search_row(
            "MiniLM, untrained", "baseline",
            torch.nn.functional.normalize(test.queries, dim=-1) @ torch.nn.functional.normalize(features.products, dim=-1).T,
            test, pool=pool)),
    ]

    def fused(fraction: float, init: Path | None, zero_fresh_ids: bool = True):
        def compute() -> Row:
            data = search_fraction(dataset, fraction, caps.seed)
            epochs = caps.search_epochs if fraction > 0 else 0
            trained, _, transfer = bench.train("fused", data, ("search",), epochs, init, zero_fresh_ids)
            row = search_model_row(target, data, test, trained, fraction, source_name if init else None, pool, transfer)
            if not zero_fresh_ids:
                row.name += " (random fresh ids)"
                row.kind = "ablation"
            return row
        return compute

    for fraction in FRACTIONS:
        rows.append(bench.cached("search", target, f"scratch-{fraction:g}", fused(fraction, None)))
    for fraction in (0.0, *FRACTIONS):
        rows.append(bench.cached("search", target, f"transfer-{fraction:g}", fused(fraction, source)))
    # why the fresh ids start at zero: the same zero-shot model with a fresh model's random id vectors
    rows.append(bench.cached("search", target, "transfer-0-random-ids", fused(0.0, source, zero_fresh_ids=False)))
    return rows


def search_model_row(target: str, data, test, trained, fraction: float, source_name: str | None, pool: bool,
                     transfer=None) -> Row:
    """The row of a trained fused search model on ``target``'s test queries (its graph: ``data``'s)."""
    from kgrec.evaluation.search import model_scores

    model = trained.model
    model.set_graph(data.snapshot.message_passing("test"))
    label = (f"{source_name} -> {target}, " if source_name else "from scratch, ") + (
        "zero-shot" if fraction == 0 else f"{fraction:.0%} of the target's train queries")
    extra = {"train_queries": int((data.queries["split"] == "train").sum())}
    if transfer is not None:
        extra["copied"], extra["fresh"] = len(transfer.report["copied"]), len(transfer.report["fresh"])
    return _search_row(label, "transfer" if source_name else "scratch", model_scores(model), test, fraction,
                       source_name, trained.history, extra, pool)


def search_own_row(bench: Bench, store: str, dataset):
    """``own_row`` of :meth:`Bench.source_artifact` for a search source: its catalogue's scratch-100% row."""
    from kgrec.workflow.models import search_examples

    test = search_examples(dataset, bench.features(dataset), "test")
    return "search", store, lambda trained: search_model_row(store, dataset, test, trained, 1.0, None, store == "homedepot")


def rec_model_row(target: str, full, data, trained, fraction: float, source_name: str | None, transfer=None) -> Row:
    """The row of a trained fused recommender on ``target`` (tested on the full data's histories)."""
    name = (f"{source_name} -> {target}, " if source_name else "from scratch, ") + (
        "zero-shot" if fraction == 0 else f"{fraction:.0%} of the target's train interactions")
    extra = {"train_interactions": int((data.snapshot.interactions["split"] == "train").sum())}
    if transfer is not None:
        extra["copied"], extra["fresh"] = len(transfer.report["copied"]), len(transfer.report["fresh"])
    return rec_row(name, "transfer" if source_name else "scratch", trained.model, full, fraction, source_name,
                   trained.history, extra)


def rec_own_row(store: str, dataset):
    """``own_row`` of :meth:`Bench.source_artifact` for a recommendation source."""
    return "rec", store, lambda trained: rec_model_row(store, dataset, dataset, trained, 1.0, None)


def rec_row(name: str, kind: str, model, full, fraction=None, source=None, history=None, extra=None) -> Row:
    from kgrec.evaluation.recommendation import evaluate

    result = evaluate(model, full.snapshot, "test", (10, 20), 50)
    metrics = {m: float(v) for m, v in result.metrics.items() if m in ("ndcg@10", "recall@10", "ndcg@20", "recall@20")}
    return Row(name, kind, fraction, source, metrics, result.per_user["ndcg@10"].float().tolist(),
               round(history.seconds, 1) if history else 0.0, len(history.losses) if history else 0, extra or {})


def run_rec_target(bench: Bench, target: str, stores: dict[str, Path], sources: dict[str, Path], part: str = "rec",
                   fractions: tuple[float, ...] = (0.0, *FRACTIONS), baselines: bool = True) -> list[Row]:
    """The recommendation rows on ``target``: baselines, from scratch, and from each of ``sources``."""
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.workflow.data import load_dataset

    caps = bench.caps
    dataset = load_dataset(EmbeddedStore(stores[target]))
    rows: list[Row] = []
    if baselines:
        for key, name in (("popularity", "popularity"), ("minilm", "MiniLM, untrained")):
            model_name = "popularity" if key == "popularity" else "text-zero-shot"

            def baseline(model_name=model_name, name=name) -> Row:
                trained, _, _ = bench.train(model_name, dataset, ("rec",), 0)
                return rec_row(name, "baseline", trained.model, dataset)

            rows.append(bench.cached(part, target, key, baseline))

    def fused(fraction: float, label: str | None, init: Path | None):
        def compute() -> Row:
            data = rec_fraction(dataset, fraction, caps.seed) if fraction > 0 else dataset  # zero-shot serves the full data
            epochs = caps.rec_epochs if fraction > 0 else 0
            trained, _, transfer = bench.train("fused", data, ("rec",), epochs, init)
            return rec_model_row(target, dataset, data, trained, fraction, label if init else None, transfer)
        return compute

    if baselines:
        for fraction in FRACTIONS:
            rows.append(bench.cached(part, target, f"scratch-{fraction:g}", fused(fraction, None, None)))
    for label, path in sources.items():
        for fraction in fractions:
            rows.append(bench.cached(part, target, f"{label}-{fraction:g}", fused(fraction, label, path)))
    return rows


# --------------------------------------------------------------------------- lexical weight


def lexical_curves(bench: Bench, target: str, stores: dict[str, Path], sources: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """Validation NDCG@10 of each zero-shot scorer mixed with BM25 over the weight grid (full catalogue; on
    Home Depot also the judged pool), and the test values at every weight."""
    from kgrec.evaluation.search import evaluate_search, model_scores
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.search.bm25 import BM25Ranker
    from kgrec.search.hybrid import DEFAULT_GRID, mix
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.models import search_examples

    file = bench.work / "rows" / "lexical" / f"{target}.json"
    if file.is_file():
        return json.loads(file.read_text())
    dataset = load_dataset(EmbeddedStore(stores[target]))
    features = bench.features(dataset)
    batches = {s: search_examples(dataset, features, s) for s in ("valid", "test")}
    bm25 = BM25Ranker(dataset.titles)
    scorers = {"MiniLM, untrained": lambda b: torch.nn.functional.normalize(b.queries, dim=-1)
               @ torch.nn.functional.normalize(features.products, dim=-1).T}
    for label, path in sources.items():
        trained, _, _ = bench.train("fused", search_fraction(dataset, 0.0, 0), ("search",), 0, path)
        trained.model.set_graph(search_fraction(dataset, 0.0, 0).snapshot.message_passing("test"))
        scorers[f"{label} zero-shot"] = model_scores(trained.model)
    protocols = ("full", "rerank") if target == "homedepot" else ("full",)
    out: dict[str, dict[str, dict]] = {}
    for name, scores_of in scorers.items():
        for split, batch in batches.items():
            dense, lexical = scores_of(batch).float(), bm25.score_all(list(batch.texts or [])).float()
            for protocol in protocols:
                curve = {str(w): evaluate_search(mix(dense, lexical, w), batch, ks=(10,), protocol=protocol)["ndcg@10"]
                         for w in DEFAULT_GRID}
                out.setdefault(f"{target} | {name} | {protocol}", {})[split] = curve
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(out))
    return out


def safest_weight(curves: dict[str, dict[str, dict]]) -> tuple[float, dict[str, float]]:
    """The grid weight whose worst relative change against no BM25 (validation, over every case) is best;
    ties go to the smaller weight. Returns it and that worst case per weight."""
    weights = sorted(float(w) for w in next(iter(curves.values()))["valid"])
    worst = {}
    for w in weights:
        worst[w] = min((c["valid"][str(w)] - c["valid"]["0.0"]) / c["valid"]["0.0"] for c in curves.values() if c["valid"]["0.0"] > 0)
    best = max(worst, key=lambda w: (round(worst[w], 6), -w))
    return best, worst


def adapter_curves(bench: Bench, target: str, stores: dict[str, Path], source: Path) -> dict[str, dict[str, float]]:
    """Why a zero-shot search transfer helps or not: NDCG@10 (full catalogue) of the source's text towers
    alone (no graph, no gate), their residual adapters scaled by ``alpha`` (0 = the untrained MiniLM,
    1 = the source's towers), on the target's validation and test queries."""
    from kgrec.evaluation.search import search_metrics_per_query
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.models import search_examples

    file = bench.work / "rows" / "adapters" / f"{target}.json"
    if file.is_file():
        return json.loads(file.read_text())
    dataset = load_dataset(EmbeddedStore(stores[target]))
    features = bench.features(dataset)
    model = bench.train("fused", search_fraction(dataset, 0.0, 0), ("search",), 0, source)[0].model
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.text, dim=-1)
        for split in ("valid", "test"):
            batch = search_examples(dataset, features, split)
            query = torch.nn.functional.normalize(batch.queries, dim=-1)
            for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
                products = text + alpha * model.text_adapter(text)
                queries = query + alpha * (model.text_adapter(query) + model.query_adapter(query))
                scores = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(products, dim=-1).T
                ndcg = search_metrics_per_query(scores, batch, ks=(10,), protocol="full")["ndcg@10"].float().mean()
                out.setdefault(split, {})[str(alpha)] = float(ndcg)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(out))
    return out


# --------------------------------------------------------------------------- report


def compare(a: Row, b: Row, caps: Caps) -> dict[str, float]:
    from kgrec.evaluation.significance import paired_test

    test = paired_test(a.per_example, b.per_example, n_boot=caps.bootstrap, seed=caps.seed)
    return {"diff": test.diff, "relative": test.relative, "p": test.p_bootstrap, "ci": [test.ci_low, test.ci_high], "n": test.n}


def annotate(rows: list[Row], caps: Caps) -> list[dict[str, Any]]:
    """Each row as a dict with paired tests against the untrained MiniLM, the from-scratch model on 100%
    and the from-scratch model on the same fraction, and its ratio to the 100% from-scratch model."""
    by_name = {r.name: r for r in rows}
    minilm = by_name.get("MiniLM, untrained")
    scratch = {r.fraction: r for r in rows if r.kind == "scratch"}
    out = []
    for row in rows:
        item = {k: v for k, v in asdict(row).items() if k != "per_example"}
        item["extra"] = {k: v for k, v in row.extra.items() if not k.endswith("_per_example")}
        if row.kind != "baseline" and minilm is not None:
            item["vs_minilm"] = compare(row, minilm, caps)
            if "rerank_per_example" in row.extra and "rerank_per_example" in minilm.extra:
                pool = compare(Row(row.name, row.kind, per_example=row.extra["rerank_per_example"]),
                               Row(minilm.name, minilm.kind, per_example=minilm.extra["rerank_per_example"]), caps)
                item["vs_minilm_rerank"] = pool
        full = scratch.get(1.0)
        if full is not None and row is not full and row.kind != "baseline":
            item["vs_scratch_100"] = compare(row, full, caps)
            item["ratio_to_scratch_100"] = _primary(row) / _primary(full) if _primary(full) else None
        same = scratch.get(row.fraction)
        if row.kind == "transfer" and same is not None:
            item["vs_scratch_same_fraction"] = compare(row, same, caps)
        twin = by_name.get(row.name.split(" (")[0]) if row.kind == "ablation" else None
        if twin is not None:
            item["vs_transfer_row"] = compare(row, twin, caps)
        out.append(item)
    return out


def _p(comp: dict | None) -> str:
    if not comp:
        return ""
    return f"{100 * comp['relative']:+.1f}% (p={comp['p']:.2g})"


def markdown(section: str, target: str, rows: list[dict], metric_names: tuple[str, ...]) -> str:
    head = "| " + " | ".join(["model", *metric_names, "vs MiniLM", "vs scratch 100%", "of scratch 100%", "epochs", "train s"]) + " |"
    unit, one = ("queries", "query") if section == "search" else ("users", "user")
    lines = [f"**{section}: {target}** (test {unit}; paired tests on ndcg@10 per {one})", "",
             head, "|" + "---|" * (len(metric_names) + 6)]
    for r in rows:
        ratio = r.get("ratio_to_scratch_100")
        lines.append("| " + " | ".join([r["name"], *(f"{r['metrics'].get(m, float('nan')):.4f}" for m in metric_names),
                                        _p(r.get("vs_minilm")), _p(r.get("vs_scratch_100")),
                                        f"{100 * ratio:.0f}%" if ratio is not None else "", str(r["epochs"] or ""),
                                        f"{r['train_seconds']:.0f}" if r["train_seconds"] else ""]) + " |")
    return "\n".join(lines)


def goals(search: dict[str, list[dict]], rec: dict[str, list[dict]]) -> dict[str, Any]:
    """The issue's goals, read off the rows."""
    out: dict[str, Any] = {"zero_shot_above_minilm": {}, "ten_percent_reaches_90_percent": {}}
    for part, targets in (("search", search), ("rec", rec)):
        for target, rows in targets.items():
            for r in rows:
                if r["kind"] != "transfer":
                    continue
                if r["fraction"] == 0.0 and part == "search":
                    v = r["vs_minilm"]
                    out["zero_shot_above_minilm"][f"{r['source']} -> {target}"] = {
                        "met": v["diff"] > 0 and v["p"] < 0.05, "relative": v["relative"], "p": v["p"]}
                if r["fraction"] == 0.1:
                    out["ten_percent_reaches_90_percent"][f"{part}: {r['source']} -> {target}"] = {
                        "met": (r.get("ratio_to_scratch_100") or 0) >= 0.9, "ratio": r.get("ratio_to_scratch_100")}
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kgrec-transfer-bench",
                        help="stores, text cache, source artifacts and per-row results (outside the repository; reused)")
    parser.add_argument("--amazon", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--homedepot", type=Path, default=SHARED / "homedepot-search")
    parser.add_argument("--ml100k", type=Path, default=SHARED / "ml-100k-kg")
    parser.add_argument("--parts", default="search,rec,multi,adapters", help="comma-separated: search, rec, multi, adapters")
    parser.add_argument("--search-epochs", type=int, default=Caps.search_epochs)
    parser.add_argument("--rec-epochs", type=int, default=Caps.rec_epochs)
    parser.add_argument("--multi-epochs", type=int, default=Caps.multi_epochs)
    parser.add_argument("--search-batch-size", type=int, default=Caps.search_batch_size,
                        help="judged queries per search training step")
    parser.add_argument("--bootstrap", type=int, default=Caps.bootstrap)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.workflow.data import load_dataset

    start = time.perf_counter()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    caps = Caps(search_epochs=args.search_epochs, rec_epochs=args.rec_epochs, multi_epochs=args.multi_epochs,
                bootstrap=args.bootstrap, seed=args.seed, device=args.device, search_batch_size=args.search_batch_size)
    homedepot = args.homedepot if (args.homedepot / "train.csv.zip").is_file() else None
    ml100k = args.ml100k if (args.ml100k / "ml-100k.inter").is_file() else None
    args.workdir.mkdir(parents=True, exist_ok=True)
    stores = prepare_stores(args.workdir, args.amazon, homedepot, ml100k)
    bench = Bench(args.workdir, caps)
    bench.check_manifest()
    data = {name: {"products": load_dataset(EmbeddedStore(path)).snapshot.num_products} for name, path in stores.items()}

    def dataset(name: str):
        return load_dataset(EmbeddedStore(stores[name]))

    search: dict[str, list[dict]] = {}
    rec: dict[str, list[dict]] = {}
    multi: dict[str, list[dict]] = {}
    tables: list[str] = []
    lexical: dict[str, Any] = {}
    adapters: dict[str, Any] = {}
    if "search" in parts and homedepot is not None:
        sources = {}
        for label, store in (("homedepot", "homedepot"), ("amazon", "amazon-search")):
            data_of = dataset(store)
            sources[label] = bench.source_artifact(f"search-{label}", data_of, ("search",), caps.search_epochs,
                                                   own_row=search_own_row(bench, store, data_of))
        for target, store, other in (("amazon", "amazon-search", "homedepot"), ("homedepot", "homedepot", "amazon")):
            bench.log(f"search -> {target}")
            rows = run_search_target(bench, store, stores, sources[other], other)
            search[target] = annotate(rows, caps)
            metrics = ("ndcg@10", "mrr@10", "rerank ndcg@10") if target == "homedepot" else ("ndcg@10", "mrr@10")
            tables.append(markdown("search", target, search[target], metrics))
        curves: dict[str, dict] = {}
        for store, other in (("amazon-search", "homedepot"), ("homedepot", "amazon")):
            curves.update(lexical_curves(bench, store, stores, {other: sources[other]}))
        weight, worst = safest_weight(curves)
        lexical = {"grid_worst_relative_change_valid": worst, "chosen": weight, "curves": curves,
                   "rule": "the grid weight whose worst relative change in validation NDCG@10 against no BM25, over every "
                           "(catalogue, zero-shot scorer, protocol), is best; ties to the smaller weight"}
    if "adapters" in parts and homedepot is not None:
        for store, other in (("amazon-search", "homedepot"), ("homedepot", "amazon")):
            source = bench.source_artifact(f"search-{other}", dataset("homedepot" if other == "homedepot" else "amazon-search"),
                                           ("search",), caps.search_epochs)
            adapters[f"{other} -> {store}"] = adapter_curves(bench, store, stores, source)
        bench.log(json.dumps(adapters, indent=1))
    if "rec" in parts and ml100k is not None:
        sources = {}
        for label, store in (("amazon", "amazon-rec"), ("ml-100k", "ml-100k")):
            data_of = dataset(store)
            sources[label] = bench.source_artifact(f"rec-{label}", data_of, ("rec",), caps.rec_epochs,
                                                   own_row=rec_own_row(store, data_of))
        for target, store, other in (("ml-100k", "ml-100k", "amazon"), ("amazon", "amazon-rec", "ml-100k")):
            bench.log(f"rec -> {target}")
            rows = run_rec_target(bench, store, stores, {other: sources[other]})
            rec[target] = annotate(rows, caps)
            tables.append(markdown("recommendation", target, rec[target], ("ndcg@10", "recall@10")))
    if "multi" in parts and ml100k is not None and homedepot is not None:
        sources = {"homedepot + amazon": bench.source_artifact("multi", dataset("multi"), ("rec", "search"), caps.multi_epochs),
                   "amazon": bench.source_artifact("rec-amazon", dataset("amazon-rec"), ("rec",), caps.rec_epochs),
                   "homedepot": bench.source_artifact("search-homedepot", dataset("homedepot"), ("search",), caps.search_epochs)}
        bench.log("multi-catalogue -> ml-100k")
        rows = run_rec_target(bench, "ml-100k", stores, sources, part="rec", fractions=(0.0, 0.1), baselines=True)
        annotated = annotate(rows, caps)
        by = {r.name: r for r in rows}
        for item in annotated:
            if item["source"] == "homedepot + amazon":
                for other in ("amazon", "homedepot"):
                    twin = by.get(item["name"].replace("homedepot + amazon ->", f"{other} ->"))
                    if twin is not None:
                        item[f"vs_{other}_only"] = compare(by[item["name"]], twin, caps)
        multi["ml-100k"] = annotated
        tables.append(markdown("multi-catalogue pre-training, recommendation", "ml-100k", annotated, ("ndcg@10", "recall@10")))

    table = "\n\n".join(tables)
    print(table)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "caps": asdict(caps),
        "data": data, "search": search, "rec": rec, "multi": multi, "lexical_weight": lexical,
        "adapter_scale": adapters,
        "goals": goals(search, rec), "table": table, "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
