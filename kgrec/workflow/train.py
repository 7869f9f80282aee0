"""Train one scorer on what a store holds and save it as an artifact that serves with no raw data.

Recommendation when the store has interactions, search when it has judgements, one multi-task
scorer when it has both (or the tasks asked for). A catalogue with neither still gets a search
artifact: the untrained fused model ranks like its text encoder (its graph branch starts at zero)
and is served hybrid with BM25 at :data:`FALLBACK_LEXICAL_WEIGHT`. Search artifacts save the BM25
weight chosen on the validation queries.

``TrainJob.init_from`` starts the model from another catalogue's artifact
(:mod:`kgrec.workflow.transfer`); search asked of a store with no judgements is then served
zero-shot with the transferred towers (so is search with ``epochs=0``).

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
from kgrec.workflow.data import TASKS, Dataset, SplitConfig, load_dataset
from kgrec.workflow.features import TextFeatures, encode_text, load_text_encoder
from kgrec.workflow.models import ModelSettings, model_tasks, search_examples, train_model
from kgrec.workflow.store import WorkflowError
from kgrec.workflow.transfer import TransferInit, TransferSource, load_source

#: The BM25 weight of a search artifact with no validation queries to choose one on.
FALLBACK_LEXICAL_WEIGHT = 0.1


@dataclass
class TrainJob:
    """What :func:`train_artifact` trains.

    Attributes:
        model: a registered model name (None = the ``init_from`` artifact's model, else ``fused``).
        tasks: ``("rec",)``, ``("search",)`` or both; None = every task the store supports that
            the model can learn.
        settings: configs and trainer settings (:class:`~kgrec.workflow.models.ModelSettings`).
        split: how supervision is split (validation picks the epoch and the lexical weight).
        text_model: a local BERT-family folder (None = the packaged all-MiniLM-L6-v2).
        cache_dir: text-vector cache (None = no cache).
        init_from: an artifact of another catalogue to start from (:mod:`kgrec.workflow.transfer`);
            its model config is used, and search needs no judgements (zero-shot).
    """

    model: str | None = "fused"
    tasks: tuple[str, ...] | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    split: SplitConfig = field(default_factory=SplitConfig)
    text_model: str | None = None
    cache_dir: str | None = None
    init_from: str | None = None

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


def _tasks_for(job: TrainJob, dataset: Dataset, reasons: dict[str, str], zero_shot: bool) -> tuple[str, ...]:
    """The tasks to train; ``zero_shot``: search asked of a store with no judgements is left out
    (served zero-shot) instead of refused."""
    assert job.model is not None
    entry = spec(job.model)
    if job.tasks:
        missing = [t for t in job.tasks if t not in entry.tasks]
        if missing:
            raise WorkflowError(f"model {job.model!r} cannot be trained for {missing} (it does {sorted(entry.tasks)})")
        tasks = tuple(t for t in TASKS if t in job.tasks)
        if zero_shot and "search" in tasks and not len(dataset.judgements):
            return tuple(t for t in tasks if t != "search")
        return tasks
    tasks = model_tasks(job.model, dataset.tasks)
    if tasks:
        return tasks
    if entry.searches and not dataset.tasks:
        return ()  # a catalogue with no supervision: a zero-shot search artifact
    raise WorkflowError(f"model {job.model!r} learns {sorted(entry.tasks)}, and " + "; ".join(reasons.values()))


def _transfer_settings(job: TrainJob, source: TransferSource) -> ModelSettings:
    """``job.settings`` fitted to the source: its config wins; a fine-tuned tower keeps its mode."""
    settings = job.settings
    if settings.fused is not None and settings.fused != source.config:
        raise WorkflowError(f"--init-from {source.path}: the model is built with the artifact's config "
                            f"(graph_dim {getattr(source.config, 'graph_dim', '?')}); drop --graph-dim")
    mode = source.tuning_mode
    if mode != "frozen":
        if settings.text_tuning not in ("frozen", mode):
            raise WorkflowError(f"--init-from {source.path}: its text tower is tuned with {mode!r}; it continues in that mode "
                                f"(--text-tuning {settings.text_tuning} cannot take it over)")
        settings = replace(settings, text_tuning=mode)
    return settings


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
    source = load_source(job.init_from) if job.init_from else None
    name = job.model or (source.model if source is not None else "fused")
    if source is not None and name != source.model:
        raise WorkflowError(f"--init-from {source.path} holds a {source.model!r} model; train that model "
                            f"(--model {source.model}) or omit --model")
    job = replace(job, model=name)
    entry = spec(name)
    dataset = load_dataset(store, job.split)
    reasons = {t: r for t in TASKS if (r := dataset.why_not(t)) is not None}
    tasks = _tasks_for(job, dataset, reasons, zero_shot=source is not None or job.settings.epochs == 0)
    dataset.require(tasks)
    zero_shot_search = not tasks or ("search" in (job.tasks or ()) and "search" not in tasks)
    settings = _transfer_settings(job, source) if source is not None else job.settings
    rank, world = init_distributed()
    features: TextFeatures | None = None
    encoder = load_text_encoder(job.text_model) if entry.reads_text or "search" in tasks or zero_shot_search else None
    init = TransferInit(source, encoder) if source is not None else None  # refuses another text model before encoding
    if encoder is not None:
        for turn in (0, 1):  # rank 0 fills the cache, then the others read it
            if (rank == 0) == (turn == 0):
                features = encode_text(dataset, encoder, job.cache_dir, progress=progress and rank == 0)
            barrier()
    if not tasks:
        settings = replace(settings, epochs=0)
    what = ", ".join(tasks) + (" + " if tasks and zero_shot_search else "") + ("zero-shot search" if zero_shot_search else "")
    say(f"training {name} for {what}" + (f", starting from {source.path}" if source is not None else ""))
    built_for = tasks + (("search",) if zero_shot_search else ())  # a zero-shot search model still gets its query input
    trained = train_model(name, dataset, features, built_for, settings, progress=progress and rank == 0, init=init)
    if rank != 0:
        shutdown()
        return None
    model, history = trained.model, trained.history
    max_history = trained.train_config.max_history if trained.train_config is not None else 50
    metrics: dict[str, Any] = {"tasks": list(tasks), "train_seconds": round(history.seconds, 2), "epochs": len(history.losses),
                               "best_epoch": history.best_epoch, "world_size": world}
    serving: dict[str, Any] = {"tasks": list(tasks) + (["search"] if zero_shot_search else []), "lexical_weight": 0.0}
    if "rec" in tasks:
        metrics["rec"] = {s: evaluate(model, dataset.snapshot, s, (10, 20), max_history).metrics for s in ("valid", "test")}
    if trained.text_prior_curve:
        serving.update(text_prior=trained.text_prior, text_prior_source="validation",
                       text_prior_valid_curve={str(w): v for w, v in trained.text_prior_curve.items()})
    cold_boost = getattr(getattr(model, "config", None), "cold_text_prior", 0.0)
    if cold_boost:
        serving.update(cold_boost=cold_boost, cold_boost_source="--cold-boost")
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
    extra: dict[str, Any] = {"train": asdict(trained.train_config) if trained.train_config else None, "store": store_name,
                             "settings": _settings_dict(settings)}
    if init is not None:
        extra["init_from"] = init.provenance()
        metrics["init_from"] = {k: init.provenance()[k] for k in ("path", "model", "data_fingerprint")}
    try:
        save_artifact(model, dataset.snapshot, out, text_encoder=features.encoder if features is not None else None,
                      max_history=max_history, products=store.nodes("Product"), metrics=metrics,
                      extra=extra, serving=serving, overwrite=True)
    except FileExistsError as exc:
        raise WorkflowError(str(exc)) from None
    return TrainedArtifact(out, name, tasks, metrics, serving, time.perf_counter() - start)


def _settings_dict(settings: ModelSettings) -> dict[str, Any]:
    values = asdict(settings)
    return {k: v for k, v in values.items() if v is not None}
