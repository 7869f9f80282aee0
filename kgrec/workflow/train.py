"""Train one scorer on what a store holds and save it as an artifact that serves with no raw data.

Recommendation when the store has interactions, search when it has judgements, one multi-task
scorer when it has both (or the tasks asked for). A catalogue with neither still gets a search
artifact: the untrained fused model ranks like its text encoder (its graph branch starts at zero)
and is served hybrid with BM25 at :data:`FALLBACK_LEXICAL_WEIGHT`. Search artifacts save the BM25
weight chosen on the validation queries.

Under ``torchrun --nproc-per-node N -m kgrec.cli train ...`` the N processes train one model with
DistributedDataParallel (NCCL on GPUs, gloo on CPU); rank 0 encodes the text first and writes the artifact.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kgrec.evaluation.recommendation import evaluate
from kgrec.evaluation.search import evaluate_search, model_scores
from kgrec.fusion.distributed import barrier, init_distributed, shutdown
from kgrec.fusion.registry import spec
from kgrec.kg.store import GraphStore
from kgrec.search.bm25 import BM25Ranker
from kgrec.search.hybrid import choose_lexical_weight
from kgrec.serving.artifact import save_artifact
from kgrec.workflow.data import TASKS, SplitConfig, load_dataset
from kgrec.workflow.features import TextFeatures, encode_text, load_text_encoder
from kgrec.workflow.models import ModelSettings, model_tasks, search_examples, train_model
from kgrec.workflow.store import WorkflowError

#: The BM25 weight of a search artifact with no validation queries to choose one on.
FALLBACK_LEXICAL_WEIGHT = 0.1


@dataclass
class TrainJob:
    """What :func:`train_artifact` trains.

    Attributes:
        model: a registered model name (default ``fused``).
        tasks: ``("rec",)``, ``("search",)`` or both; None = every task the store supports that
            the model can learn.
        settings: configs and trainer settings (:class:`~kgrec.workflow.models.ModelSettings`).
        split: how supervision is split (validation picks the epoch and the lexical weight).
        text_model: a local BERT-family folder (None = the packaged all-MiniLM-L6-v2).
        cache_dir: text-vector cache (None = no cache).
    """

    model: str = "fused"
    tasks: tuple[str, ...] | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    split: SplitConfig = field(default_factory=SplitConfig)
    text_model: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        spec(self.model) if self.model else None  # unknown names raise ValueError listing the known ones
        bad = [t for t in (self.tasks or ()) if t not in TASKS]
        if bad:
            raise WorkflowError(f"unknown tasks {bad}; choose from {list(TASKS)}")


@dataclass
class TrainedArtifact:
    """What :func:`train_artifact` wrote: the folder, the tasks, the metrics and serving settings."""

    path: Path
    model: str
    tasks: tuple[str, ...]
    metrics: dict[str, Any]
    serving: dict[str, Any]
    seconds: float


def _tasks_for(job: TrainJob, available: tuple[str, ...], reasons: dict[str, str]) -> tuple[str, ...]:
    entry = spec(job.model)
    if job.tasks:
        missing = [t for t in job.tasks if t not in entry.tasks]
        if missing:
            raise WorkflowError(f"model {job.model!r} cannot be trained for {missing} (it does {sorted(entry.tasks)})")
        return tuple(t for t in TASKS if t in job.tasks)
    tasks = model_tasks(job.model, available)
    if tasks:
        return tasks
    if entry.searches and not available:
        return ()  # a catalogue with no supervision: a zero-shot search artifact
    raise WorkflowError(f"model {job.model!r} learns {sorted(entry.tasks)}, and " + "; ".join(reasons.values()))


def train_artifact(
    store: GraphStore,
    job: TrainJob,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    store_name: str = "",
    log: Any = None,
) -> TrainedArtifact | None:
    """Train ``job.model`` on ``store`` and write the artifact folder ``out``.

    Returns None on every rank but 0 under torchrun.

    Raises:
        WorkflowError: ``out`` exists (without ``overwrite``), the model cannot learn what the
            store holds, the data is too small for the asked tasks, a bad text model.
    """
    start = time.perf_counter()
    say = log or (lambda line: None)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise WorkflowError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    entry = spec(job.model)
    dataset = load_dataset(store, job.split)
    reasons = {t: r for t in TASKS if (r := dataset.why_not(t)) is not None}
    tasks = _tasks_for(job, dataset.tasks, reasons)
    dataset.require(tasks)
    rank, world = init_distributed()
    features: TextFeatures | None = None
    if entry.reads_text or "search" in tasks or not tasks:
        encoder = load_text_encoder(job.text_model)
        for turn in (0, 1):  # rank 0 fills the cache, then the others read it
            if (rank == 0) == (turn == 0):
                features = encode_text(dataset, encoder, job.cache_dir, progress=progress and rank == 0)
            barrier()
    settings = job.settings if tasks else replace(job.settings, epochs=0)
    say(f"training {job.model} for {', '.join(tasks) or 'zero-shot search (no interactions, no judgements)'}")
    trained = train_model(job.model, dataset, features, tasks or ("search",), settings, progress=progress and rank == 0)
    if rank != 0:
        shutdown()
        return None
    model, history = trained.model, trained.history
    max_history = trained.train_config.max_history if trained.train_config is not None else 50
    metrics: dict[str, Any] = {"tasks": list(tasks), "train_seconds": round(history.seconds, 2), "epochs": len(history.losses),
                               "best_epoch": history.best_epoch, "world_size": world}
    serving: dict[str, Any] = {"tasks": list(tasks) or ["search"], "lexical_weight": 0.0}
    if "rec" in tasks:
        metrics["rec"] = {s: evaluate(model, dataset.snapshot, s, (10, 20), max_history).metrics for s in ("valid", "test")}
    if entry.searches and features is not None:
        model.set_graph(dataset.snapshot.message_passing("test"))
        if "search" in tasks:
            scores_of = model_scores(model)
            valid, test = search_examples(dataset, features, "valid"), search_examples(dataset, features, "test")
            bm25 = BM25Ranker(dataset.titles)
            choice = choose_lexical_weight(scores_of(valid), bm25.score_all(list(valid.texts or [])), valid)
            metrics["search"] = {"valid": evaluate_search(scores_of, valid, ks=(3, 10)),
                                 "test": evaluate_search(scores_of, test, ks=(3, 10))}
            serving.update(lexical_weight=choice.weight, lexical_weight_source="validation",
                           lexical_weight_valid_curve={str(w): v for w, v in choice.curve.items()})
        else:
            serving.update(lexical_weight=FALLBACK_LEXICAL_WEIGHT, lexical_weight_source="default (no judgements)")
    model.cpu()
    shutdown()
    try:
        save_artifact(model, dataset.snapshot, out, text_encoder=features.encoder if features is not None else None,
                      max_history=max_history, products=store.nodes("Product"), metrics=metrics,
                      extra={"train": asdict(trained.train_config) if trained.train_config else None, "store": store_name,
                             "settings": _settings_dict(settings)},
                      serving=serving, overwrite=True)
    except FileExistsError as exc:
        raise WorkflowError(str(exc)) from None
    return TrainedArtifact(out, job.model, tasks, metrics, serving, time.perf_counter() - start)


def _settings_dict(settings: ModelSettings) -> dict[str, Any]:
    values = asdict(settings)
    return {k: v for k, v in values.items() if v is not None}
