"""Train the fused model and the baselines on whatever a store holds and evaluate them side by side.

One run, one split, one report: recommendation (full ranking, seen products excluded, leave-one-out
or temporal) when the store has interactions; search (full catalogue and judged pool, graded gains)
with BM25 and the hybrid when it has judgements; both when it has both — then the fused family is
trained multi-task, one scorer for both. Every model sees the same split; significance: paired tests
against the reference model (recommendation) and against BM25 (search).
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kgrec.evaluation.protocols import evaluate_sampled, leakage_counts, split_summary
from kgrec.evaluation.recommendation import DetailedEvalResult, evaluate, evaluate_detailed
from kgrec.evaluation.report import CURVE_DEPTH, ReportRun, save_run, write_report
from kgrec.evaluation.results import ModelResult, SearchResult
from kgrec.evaluation.search import ScoreFn, model_scores, search_metrics_per_query
from kgrec.evaluation.search_metrics import mean_search_metrics
from kgrec.evaluation.significance import paired_test
from kgrec.fusion.registry import MODELS, spec
from kgrec.kg.store import GraphStore
from kgrec.search.bm25 import BM25Ranker
from kgrec.search.hybrid import HybridSearch, choose_lexical_weight, mix
from kgrec.workflow.data import TASKS, Dataset, SplitConfig, load_dataset
from kgrec.workflow.features import TextFeatures, encode_text, load_text_encoder
from kgrec.workflow.models import ModelSettings, TrainedModel, model_tasks, search_examples, train_model
from kgrec.workflow.store import WorkflowError

#: Search rankers that are not registered models: the floor and the lexical baseline.
SEARCH_BASELINES = ("random", "bm25")
#: Protocols of the search comparison: rank the whole catalogue / order each query's judged products.
SEARCH_PROTOCOLS = ("full", "rerank")


@dataclass
class EvaluateConfig:
    """What :func:`evaluate_store` compares and how.

    Attributes:
        models: registered models and search baselines to run (None = every one that fits the
            tasks, in registry order: popularity, mf-bpr, lightgcn, text-zero-shot, text-only,
            graph-only, fused; plus random and bm25 for search).
        tasks: ``("rec",)``, ``("search",)`` or both; None = what the store supports.
        settings: model configs and trainer settings (:class:`~kgrec.workflow.models.ModelSettings`).
        split: how supervision is split (:class:`~kgrec.workflow.data.SplitConfig`).
        rec_ks, search_ks: metric cut-offs.
        hybrid: add the fused model mixed with BM25, the weight chosen on validation queries.
        sampled_negatives: also report the sampled recommendation protocol with this many
            negatives (0 = off; full ranking is always reported).
        reference: the model every other is tested against (recommendation).
        bootstrap: resamples for intervals and paired tests.
        text_model: a local BERT-family folder (None = the packaged all-MiniLM-L6-v2).
        cache_dir: text-vector cache (None = no cache).
    """

    models: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    split: SplitConfig = field(default_factory=SplitConfig)
    rec_ks: tuple[int, ...] = (10, 20)
    search_ks: tuple[int, ...] = (3, 10)
    hybrid: bool = True
    sampled_negatives: int = 0
    reference: str = "fused"
    bootstrap: int = 2000
    text_model: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        known = set(MODELS) | set(SEARCH_BASELINES)
        unknown = [m for m in (self.models or ()) if m not in known]
        if unknown:
            raise WorkflowError(f"unknown models {unknown}; choose from {[*MODELS, *SEARCH_BASELINES]}")
        bad = [t for t in (self.tasks or ()) if t not in TASKS]
        if bad:
            raise WorkflowError(f"unknown tasks {bad}; choose from {list(TASKS)}")
        if self.sampled_negatives < 0 or self.bootstrap < 1:
            raise WorkflowError("sampled negatives must be >= 0 and bootstrap resamples >= 1")


@dataclass
class Evaluation:
    """What :func:`evaluate_store` produced.

    Attributes:
        tasks: the tasks evaluated. skipped: task -> why it was not evaluated.
        rec: recommendation rows (test means). search: search rows (test means per protocol).
        files: the written files (``results``, ``per_user``, ``search_per_query``, ``markdown``, ``html`` ...).
        facts: split sizes and data facts.
    """

    tasks: tuple[str, ...]
    skipped: dict[str, str]
    rec: list[ModelResult]
    search: list[SearchResult]
    files: dict[str, Path]
    facts: dict[str, Any]
    seconds: float


def resolve_tasks(dataset: Dataset, wanted: tuple[str, ...] | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(tasks to run, task -> why not for the others). Asked-for tasks the data cannot support raise
    :class:`WorkflowError`; with none asked, a store that supports no task raises too."""
    if wanted:
        dataset.require(wanted)
        return tuple(t for t in TASKS if t in wanted), {}
    skipped = {t: r for t in TASKS if (r := dataset.why_not(t)) is not None}
    if not dataset.tasks:
        raise WorkflowError("nothing to evaluate: " + "; ".join(f"{t}: {r}" for t, r in skipped.items()))
    return dataset.tasks, skipped


def resolve_models(models: tuple[str, ...] | None, tasks: tuple[str, ...]) -> list[str]:
    """The models to run for ``tasks`` (registry order, then the search baselines)."""
    if models is None:
        names = [m for m in MODELS if model_tasks(m, tasks)]
        return ([m for m in SEARCH_BASELINES] if "search" in tasks else []) + names
    fit = [m for m in models if (m in SEARCH_BASELINES and "search" in tasks) or (m in MODELS and model_tasks(m, tasks))]
    if not fit:
        raise WorkflowError(f"none of the models {list(models)} can be evaluated for {list(tasks)}")
    return fit


@dataclass
class ScoredRanker:
    """A search ranker scored by :class:`SearchBench`: its row, how it scores a batch, its test scores.

    Attributes:
        row: the :class:`~kgrec.evaluation.results.SearchResult` (test means per protocol, paired test).
        scores: ``batch -> [B, P]`` scores (a model's ``search_logits``, or the hybrid mix); a later
            stage (the hybrid, a cross-encoder) scores other queries with it.
        test: ``[Q_test, P]`` scores of the test queries.
    """

    row: SearchResult
    scores: ScoreFn
    test: torch.Tensor


class SearchBench:
    """The search side of a comparison on one query-disjoint split, shared by every search table
    (:func:`evaluate_store`, the Home Depot benchmark :mod:`kgrec.workflow.search_benchmark`).

    Holds the valid/test judged queries, BM25 over the titles, and scores every row the same way:
    per-query metrics under both protocols (``full``: the whole catalogue; ``rerank``: each query's
    judged products), their test means, and a paired test of NDCG@10 (full) against BM25 on the
    same queries. The hybrid's lexical weight is chosen on the validation queries only.

    Args:
        dataset: the split data; ``features``: its text vectors (the queries' rows).
        ks: metric cut-offs (the paired test needs 10 among them).
        seed, bootstrap: seed and resamples of the paired tests and of the ``random`` floor.
    """

    def __init__(self, dataset: Dataset, features: TextFeatures, ks: tuple[int, ...], seed: int, bootstrap: int) -> None:
        self.snapshot = dataset.snapshot
        self.valid = search_examples(dataset, features, "valid")
        self.test = search_examples(dataset, features, "test")
        self.query_ids = list(dataset.judgements[dataset.judgements["split"] == "test"]["query_id"].drop_duplicates().sort_values())
        self.ks, self.seed, self.bootstrap = ks, seed, bootstrap
        self.num_products = dataset.snapshot.num_products
        start = time.perf_counter()
        self.bm25 = BM25Ranker(dataset.titles)
        self.bm25_test = self.bm25.score_all(list(self.test.texts or []))
        self.bm25_seconds = time.perf_counter() - start
        self._bm25_valid: torch.Tensor | None = None
        self.per_query: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # model -> protocol -> metric -> [Q]
        self.reference = self._per_query(self.bm25_test)["full"]["ndcg@10"] if 10 in ks else None

    @property
    def bm25_valid(self) -> torch.Tensor:
        """``[Q_valid, P]`` BM25 scores of the validation queries (computed once, when first needed)."""
        if self._bm25_valid is None:
            self._bm25_valid = self.bm25.score_all(list(self.valid.texts or []))
        return self._bm25_valid

    def _per_query(self, scores: torch.Tensor, rerank_scores: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        return {p: search_metrics_per_query(rerank_scores if p == "rerank" and rerank_scores is not None else scores,
                                            self.test, ks=self.ks, protocol=p) for p in SEARCH_PROTOCOLS}

    def row(self, name: str, mode: str, scores: torch.Tensor, valid_ndcg: float | None, seconds: float,
            parameters: int, epochs: int, extra: dict | None = None, rerank_scores: torch.Tensor | None = None) -> SearchResult:
        """The row of a ranker from its ``[Q_test, P]`` test ``scores`` (``rerank_scores``: ``[Q_test, J]``
        scores of each query's judged products for the ``rerank`` protocol, when they differ)."""
        per_query = self._per_query(scores, rerank_scores)
        self.per_query[name] = per_query
        extra = dict(extra or {})
        if self.reference is not None and name != "bm25":
            extra["vs_bm25_ndcg@10"] = paired_test(per_query["full"]["ndcg@10"], self.reference, n_boot=self.bootstrap,
                                                   seed=self.seed).as_dict()
        test = {p: mean_search_metrics(v) for p, v in per_query.items()}
        return SearchResult(name, mode, test, valid_ndcg, round(seconds, 1), parameters, epochs, extra)

    def baseline_row(self, name: str) -> SearchResult:
        """The row of a search baseline: ``"random"`` (the floor: seeded uniform scores) or ``"bm25"``."""
        if name == "random":
            scores = torch.rand(len(self.test), self.num_products, generator=torch.Generator().manual_seed(self.seed))
            return self.row("random", "-", scores, None, 0.0, 0, 0)
        if name == "bm25":
            return self.row("bm25", "-", self.bm25_test, None, self.bm25_seconds, 0, 0)
        raise WorkflowError(f"unknown search baseline {name!r}; choose from {list(SEARCH_BASELINES)}")

    def model_row(self, trained: TrainedModel, name: str | None = None, extra: dict | None = None) -> ScoredRanker:
        """Score a trained model on the test queries over the test-time graph (``name``: its row's
        name, default the model's; ``extra``: more facts for the row)."""
        model, history = trained.model, trained.history
        model.set_graph(self.snapshot.message_passing("test"))
        scores_of = model_scores(model)
        test_scores = scores_of(self.test)
        row = self.row(name or trained.name, model_mode(model), test_scores, history.best("search"), history.seconds,
                       trained.trainable_parameters, len(history.losses),
                       {"tasks": list(trained.tasks), "valid_curve": history.valid_search_ndcg, **(extra or {})})
        return ScoredRanker(row, scores_of, test_scores)

    def hybrid_row(self, dense: ScoredRanker) -> ScoredRanker:
        """``dense`` mixed with BM25 (:mod:`kgrec.search.hybrid`), the lexical weight chosen on the
        validation queries; the row is named ``"<dense> + bm25"``."""
        start = time.perf_counter()
        choice = choose_lexical_weight(dense.scores(self.valid), self.bm25_valid, self.valid)
        mixed = mix(dense.test, self.bm25_test, choice.weight)
        row = self.row(f"{dense.row.model} + bm25", dense.row.mode, mixed, choice.best, time.perf_counter() - start, 0, 0,
                       {"lexical_weight": choice.weight, "valid_curve": {str(w): v for w, v in choice.curve.items()}})
        return ScoredRanker(row, HybridSearch(dense.scores, self.bm25, choice.weight), mixed)

    def frame(self) -> pd.DataFrame:
        """One row per (model, protocol, test query) with every metric (for later recomputation)."""
        frames = []
        for model, protocols in self.per_query.items():
            for protocol, metrics in protocols.items():
                frames.append(pd.DataFrame({"model": model, "protocol": protocol, "query_id": self.query_ids,
                                            **{m: v.numpy() for m, v in metrics.items()}}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def model_mode(model: torch.nn.Module) -> str:
    """How a model's BERT was trained: its text tower's tuning mode, or ``"frozen"`` (cached vectors)."""
    tower = getattr(model, "text_tower", None)
    return str(tower.mode) if tower is not None else "frozen"


def evaluate_store(
    store: GraphStore,
    config: EvaluateConfig,
    out: str | os.PathLike[str],
    progress: bool = False,
    command: str = "kgrec evaluate",
    log: Any = None,
) -> Evaluation:
    """Train and evaluate ``config``'s models on ``store`` and write the report into ``out``.

    Writes ``results.json`` (every row, histories, split facts, the configs), ``per_user.parquet``
    (recommendation: one row per model and test example), ``search_per_query.parquet`` (search: one
    row per model, protocol and test query) and ``report.md`` / ``report.html`` with figures.

    Args:
        log: called with one line of progress text per step (e.g. ``print``); None = silent.

    Raises:
        WorkflowError: data too small for the asked tasks, unknown models, a bad text model.
    """
    start = time.perf_counter()
    say = log or (lambda line: None)
    out = Path(out)
    dataset = load_dataset(store, config.split)
    tasks, skipped = resolve_tasks(dataset, config.tasks)
    names = resolve_models(config.models, tasks)
    say(f"data: {dataset.snapshot.num_products:,} products, {dataset.snapshot.num_users:,} users; "
        f"interactions per split {dataset.counts['interactions']}; judged queries per split {dataset.counts['queries']}")
    for task, reason in skipped.items():
        say(f"not evaluating {task}: {reason}")
    say(f"tasks: {', '.join(tasks)}; models: {', '.join(names)}")

    features = None
    if "search" in tasks or any(m in MODELS and spec(m).reads_text for m in names):
        encoder = load_text_encoder(config.text_model)
        say(f"encoding text with {encoder.model_path.name} ({encoder.fingerprint})")
        features = encode_text(dataset, encoder, config.cache_dir, progress=progress)

    seed = config.settings.seed if config.settings.seed is not None else 0
    bench = SearchBench(dataset, features, config.search_ks, seed, config.bootstrap) if "search" in tasks and features else None
    rec_rows: list[ModelResult] = []
    search_rows: list[SearchResult] = []
    histories: dict = {}
    evals: dict[str, DetailedEvalResult] = {}
    sampled: dict = {}
    snapshot = dataset.snapshot
    depth = min(CURVE_DEPTH, snapshot.num_products)
    for name in names:
        if name in SEARCH_BASELINES:
            assert bench is not None
            search_rows.append(bench.baseline_row(name))
            if name == "bm25":
                say(f"bm25: search test ndcg@10 {search_rows[-1].test['full'].get('ndcg@10', float('nan')):.4f}")
            continue
        trained = train_model(name, dataset, features, model_tasks(name, tasks), config.settings, progress=progress)
        model, history, train_cfg = trained.model, trained.history, trained.train_config
        max_history = train_cfg.max_history if train_cfg is not None else 50
        parameters = trained.trainable_parameters
        mode = model_mode(model)
        line = [f"{name}:"]
        if "rec" in trained.tasks:
            ks = tuple(sorted(set(config.rec_ks) | {depth}))
            detailed = evaluate_detailed(model, snapshot, "test", ks, max_history,
                                         coverage_ks=tuple(k for k in (10, 20) if k <= depth) or (depth,))
            valid = evaluate(model, snapshot, "valid", config.rec_ks, max_history).metrics
            evals[name] = detailed
            histories[name] = history
            rec_rows.append(ModelResult(
                model=name, valid=valid, test={**detailed.metrics, **detailed.aggregate},
                train_seconds=round(history.seconds, 1), epochs=len(history.losses), best_epoch=history.best_epoch,
                parameters=parameters,
                config={"model": model.config_dict(), "train": asdict(train_cfg) if train_cfg else None,
                        "tasks": list(trained.tasks), "text_tuning": mode,
                        **({"text_prior_valid_curve": {str(w): v for w, v in trained.text_prior_curve.items()}}
                           if trained.text_prior_curve else {})}))
            if config.sampled_negatives:
                sampled[name] = evaluate_sampled(model, snapshot, "test", config.sampled_negatives, ks=(1, 5, 10), seed=seed,
                                                 max_history=max_history)
            line.append(f"rec test ndcg@10 {detailed.metrics.get('ndcg@10', float('nan')):.4f}")
        if "search" in trained.tasks and bench is not None:
            scored = bench.model_row(trained)
            search_rows.append(scored.row)
            line.append(f"search test ndcg@10 {scored.row.test['full'].get('ndcg@10', float('nan')):.4f}")
            if config.hybrid and name == "fused":
                hybrid = bench.hybrid_row(scored)
                search_rows.append(hybrid.row)
                line.append(f"hybrid (w={hybrid.row.extra['lexical_weight']}) "
                            f"{hybrid.row.test['full'].get('ndcg@10', float('nan')):.4f}")
        say(" ".join(line) + f" ({history.seconds:.0f} s)")
        del model, trained
        gc.collect()

    facts = {"num_users": snapshot.num_users, "num_products": snapshot.num_products, "data_fingerprint": snapshot.fingerprint(),
             "tasks": list(tasks), "skipped": skipped, "search_queries": dataset.counts["queries"]}
    if "rec" in tasks:
        facts.update({"split": split_summary(snapshot), "leakage": leakage_counts(snapshot)})
    extra: dict[str, Any] = {
        "command": command,
        "data_fingerprint": snapshot.fingerprint(),
        "text_model": features.encoder.fingerprint if features is not None else None,
        "device": config.settings.device or "auto",
        "protocol": {"name": config.split.protocol, "ranking": "full", "sampled_negatives": config.sampled_negatives,
                     "search": {"split": "query-disjoint", "fractions": list(config.split.search_fractions),
                                "protocols": list(SEARCH_PROTOCOLS), "min_grade": config.split.min_grade}},
        "search": [asdict(r) for r in search_rows],
        "evaluate_config": _jsonable(asdict(config)),
    }
    out.mkdir(parents=True, exist_ok=True)
    files = save_run(ReportRun(rec_rows, histories, evals, sampled, facts), snapshot, out, None, extra)
    if bench is not None:
        bench.frame().to_parquet(out / "search_per_query.parquet", index=False)
        files["search_per_query"] = out / "search_per_query.parquet"
    files.update(write_report(out, out, reference=config.reference, n_boot=config.bootstrap, seed=seed))
    return Evaluation(tasks, skipped, rec_rows, search_rows, files, facts, time.perf_counter() - start)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
