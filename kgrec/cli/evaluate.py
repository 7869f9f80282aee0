"""``kgrec evaluate``, ``kgrec demo`` and ``kgrec train``: flags -> :mod:`kgrec.workflow` configs."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer

from kgrec.cli.app import command, quiet_transformers, show_progress, split_list, tasks_option
from kgrec.cli.ingest import ProgressBars, print_ingest_report
from kgrec.cli.output import console, number, print_json, safe, table
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import BPR_TRAINING, MODEL_NAMES, SOFTMAX_TRAINING
from kgrec.workflow.data import SplitConfig
from kgrec.workflow.evaluate import SEARCH_BASELINES, EvaluateConfig, Evaluation, evaluate_store
from kgrec.workflow.ingest import DEMO_DATA, ingest_files
from kgrec.workflow.models import ModelSettings, fused_config_for
from kgrec.workflow.store import STORE_HELP, open_store
from kgrec.workflow.train import TrainJob, train_artifact

TEXT_MODEL = typer.Option(None, "--text-model", help="Local BERT-family model folder (default: packaged all-MiniLM-L6-v2).")
DEVICE = typer.Option("auto", help="auto | cpu | cuda")
TEXT_TUNING = typer.Option("frozen", "--text-tuning", help="How BERT trains: frozen (cached vectors) | full | lora | ia3 | prompt.")
GRAPH_ENCODER = typer.Option("auto", "--graph-encoder", help="The fused family's GNN: sage | rgcn | auto (rgcn when the "
                             "graph holds knowledge-graph triples, else sage).")
TEXT_PRIOR = typer.Option("auto", "--text-prior", help="Weight of the untrained text score added to the fused family's "
                          "recommendation scores: auto (chosen on the validation users) or a number (0 = off).")
COLD_BOOST = typer.Option(0.0, "--cold-boost", min=0.0, help="Extra weight of the untrained text score for cold products "
                          "(fewer than 5 interactions; new ones at serving): trades warm targets for cold ones, see "
                          "benchmarks/cold_frontier.py. Default 0 (off).")
TASKS = typer.Option(None, "--tasks", help="rec | search | rec,search | auto (default: what the store holds).")
MODELS_HELP = f"Comma-separated models (default: all that fit the tasks): {', '.join([*MODEL_NAMES, *SEARCH_BASELINES])}."


def text_prior_option(value: str) -> float | None:
    """``--text-prior``: None for ``auto``, else a finite number >= 0."""
    if value.strip().lower() == "auto":
        return None
    try:
        weight = float(value)
    except ValueError:
        weight = float("nan")
    if not 0 <= weight < float("inf"):
        raise typer.BadParameter(f"must be auto or a finite number >= 0, got {value!r}", param_hint="--text-prior")
    return weight


def _settings(quick: bool, epochs: int | None, bpr_epochs: int | None, device: str, seed: int, text_tuning: str,
              graph_encoder: str = "auto", text_prior: str = "auto", cold_boost: float = 0.0) -> ModelSettings:
    train, bpr = replace(SOFTMAX_TRAINING), replace(BPR_TRAINING)
    if quick:
        train, bpr = replace(train, epochs=2), replace(bpr, epochs=10)
    if epochs is not None:
        train = replace(train, epochs=epochs)
    if bpr_epochs is not None:
        bpr = replace(bpr, epochs=bpr_epochs)
    return ModelSettings(train=train, bpr_train=bpr, seed=seed, device=device, text_tuning=text_tuning,
                         graph_encoder=graph_encoder, text_prior=text_prior_option(text_prior), cold_boost=cold_boost)


def print_evaluation(evaluation: Evaluation) -> None:
    """The test tables of a run (recommendation and/or search) and where the report is."""
    if evaluation.rec:
        columns = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20"]
        rows = [[safe(r.model), *(number(r.test.get(c)) for c in columns), number(r.valid.get("ndcg@10")),
                 f"{r.epochs} ({r.best_epoch})", f"{r.train_seconds:.0f}"] for r in evaluation.rec]
        console.print(table("recommendation: test split, full ranking over all products, seen products excluded",
                            [("model", "left")] + [(c, "right") for c in [*columns, "valid ndcg@10", "epochs (best)", "train s"]],
                            rows))
    if evaluation.search:
        rows = []
        for r in evaluation.search:
            versus = r.extra.get("vs_bm25_ndcg@10")
            rows.append([safe(r.model), number(r.test["full"].get("ndcg@10")), number(r.test["full"].get("mrr@10")),
                         number(r.test["rerank"].get("ndcg@10")),
                         f"{100 * versus['relative']:+.1f}% (p={versus['p_bootstrap']:.2g})" if versus else "",
                         f"{r.train_seconds:.0f}"])
        console.print(table("search: test queries, graded gains",
                            [("model", "left"), ("ndcg@10 (full)", "right"), ("mrr@10 (full)", "right"),
                             ("ndcg@10 (judged pool)", "right"), ("vs BM25", "right"), ("train s", "right")], rows))
    for task, reason in evaluation.skipped.items():
        console.print(f"[yellow]not evaluated[/yellow] {task}: {safe(reason)}")
    files = evaluation.files
    console.print(f"report: {safe(files['markdown'])}, {safe(files['html'])}; results: {safe(files['results'])}; "
                  f"{evaluation.seconds:.0f} s")


@command("evaluate")
def evaluate(
    store: str = typer.Option("runs/store", "--store", "-s", help=STORE_HELP),
    out: Path = typer.Option(Path("runs/report"), help="Folder for report.md, report.html, figures, results.json, per-example results."),
    tasks: str | None = TASKS,
    models: str | None = typer.Option(None, help=MODELS_HELP),
    quick: bool = typer.Option(False, "--quick", help="Few epochs (2, BPR baselines 10), for a first look."),
    epochs: int | None = typer.Option(None, min=0, help="Max epochs of the softmax models (text-only, graph-only, fused)."),
    bpr_epochs: int | None = typer.Option(None, min=0, help="Max epochs of the BPR baselines (mf-bpr, lightgcn)."),
    text_model: Path | None = TEXT_MODEL,
    text_tuning: str = TEXT_TUNING,
    graph_encoder: str = GRAPH_ENCODER,
    text_prior: str = TEXT_PRIOR,
    cold_boost: float = COLD_BOOST,
    cache: Path | None = typer.Option(None, help="Text-vector cache folder (default: OUT/text-cache)."),
    device: str = DEVICE,
    seed: int = typer.Option(0, help="Training seed; also seeds the bootstrap and sampled negatives."),
    protocol: str = typer.Option("leave-one-out", help="Recommendation split: leave-one-out | temporal (needs timestamps)."),
    temporal_quantile: float = typer.Option(0.8, help="temporal: cut at this quantile of the timestamps."),
    sampled: int = typer.Option(0, min=0, help="Also report the sampled protocol with this many negatives (0 = off)."),
    hybrid: bool = typer.Option(True, "--hybrid/--no-hybrid", help="Search: add the fused model mixed with BM25."),
    reference: str = typer.Option("fused", help="Model every other model is tested against (recommendation)."),
    bootstrap: int = typer.Option(2000, min=1, help="Bootstrap resamples for intervals and paired tests."),
    from_run: Path | None = typer.Option(None, "--from-run", help="Re-write the report of an earlier run folder; trains nothing."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
) -> None:
    """Train and evaluate the fused model and the baselines on what the store holds; write one report."""
    from kgrec.evaluation.report import write_report

    if from_run is not None:
        if not (from_run / "results.json").is_file():
            raise typer.BadParameter(f"{from_run} holds no results.json", param_hint="--from-run")
        written = write_report(from_run, out, reference=reference, n_boot=bootstrap, seed=seed)
        console.print(f"report: {safe(written['markdown'])}, {safe(written['html'])}")
        return
    quiet_transformers()
    config = EvaluateConfig(
        models=tuple(split_list(models, "--models")) or None, tasks=tasks_option(tasks),
        settings=_settings(quick, epochs, bpr_epochs, device, seed, text_tuning, graph_encoder, text_prior, cold_boost),
        split=SplitConfig(protocol=protocol, temporal_quantile=temporal_quantile), sampled_negatives=sampled, hybrid=hybrid,
        reference=reference, bootstrap=bootstrap, text_model=str(text_model) if text_model else None,
        cache_dir=str(cache or out / "text-cache"))
    with open_store(store) as graph:
        evaluation = evaluate_store(graph, config, out, progress=show_progress(progress), log=console.print,
                                    command=_command("kgrec evaluate", store=store, tasks=tasks, models=models, quick=quick,
                                                     protocol=None if protocol == "leave-one-out" else protocol, sampled=sampled or None))
    print_evaluation(evaluation)


@command("demo")
def demo(
    quick: bool = typer.Option(False, "--quick", help="Few epochs, for a first look in a few minutes."),
    data: Path = typer.Option(DEMO_DATA, help="Catalogue files to ingest (default: the Amazon Scientific demo tables)."),
    out: Path = typer.Option(Path("runs/demo"), help="Where the store, the report and the results go."),
    models: str | None = typer.Option(None, help=MODELS_HELP),
    text_model: Path | None = TEXT_MODEL,
    device: str = DEVICE,
    seed: int = typer.Option(0, help="Random seed."),
    bootstrap: int = typer.Option(2000, min=1, help="Bootstrap resamples for intervals and paired tests."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
) -> None:
    """Ingest the demo data into a store (the real pipeline, reject report shown), then `kgrec evaluate` on it."""
    start = time.perf_counter()
    store = out / "store"
    console.rule("1/2 ingest")
    bars = ProgressBars(show_progress(progress))
    with bars.progress:
        outcome = ingest_files([data], store, None, bars)
    print_ingest_report(outcome)
    if outcome.report.errors:
        raise typer.Exit(2)
    console.rule("2/2 train and evaluate")
    quiet_transformers()
    config = EvaluateConfig(models=tuple(split_list(models, "--models")) or None,
                            settings=_settings(quick, None, None, device, seed, "frozen"), bootstrap=bootstrap,
                            text_model=str(text_model) if text_model else None, cache_dir=str(out / "text-cache"))
    with open_store(store) as graph:
        evaluation = evaluate_store(graph, config, out, progress=show_progress(progress), log=console.print,
                                    command=_command("kgrec demo", quick=quick, models=models))
    print_evaluation(evaluation)
    console.print(f"total {time.perf_counter() - start:.0f} s")


@command("train")
def train(
    store: str = typer.Option("runs/store", "--store", "-s", help=STORE_HELP),
    out: Path = typer.Option(Path("runs/artifact"), "--out", help="Artifact folder to write."),
    model: str | None = typer.Option(None, help=f"Model to train: {', '.join(MODEL_NAMES)} (default: fused, or the "
                                                 "--init-from artifact's model)."),
    tasks: str | None = TASKS,
    text_tuning: str = typer.Option("frozen", "--text-tuning", help="How BERT trains: frozen (cached vectors) | full | lora | "
                                    "ia3 | prompt. A fine-tuned tower taken over with --init-from keeps its own mode."),
    init_from: Path | None = typer.Option(None, "--init-from", help="Start from another catalogue's artifact: its text and "
                                          "query towers (with a fine-tuned BERT or adapter), gate, user tower and the "
                                          "relations both graphs share; id embeddings start fresh. Search then needs no "
                                          "judgements (zero-shot with --epochs 0 or a store without them)."),
    epochs: int | None = typer.Option(None, min=0, help="Maximum epochs (default 8; BPR models 40; 0 = untrained)."),
    lr: float | None = typer.Option(None, min=0.0, help="Learning rate (default 3e-3; BPR models 1e-2)."),
    batch_size: int | None = typer.Option(None, min=1, help="Examples per step (default 2048; BPR models 4096)."),
    patience: int | None = typer.Option(None, min=1, help="Early-stopping patience in epochs (default 2)."),
    graph_dim: int | None = typer.Option(None, min=1, help="Graph encoder size (default 64)."),
    graph_encoder: str = GRAPH_ENCODER,
    text_prior: str = TEXT_PRIOR,
    cold_boost: float = COLD_BOOST,
    text_model: Path | None = TEXT_MODEL,
    cache: Path | None = typer.Option(None, help="Text-vector cache folder (default: OUT/../text-cache)."),
    device: str = DEVICE,
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact folder."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Train one scorer on what the store holds (recommendation, search, or both multi-task) and save an artifact.

    Under ``torchrun --nproc-per-node N -m kgrec.cli train ...`` the N processes train one model with
    DistributedDataParallel; rank 0 writes the artifact.
    """
    quiet_transformers()
    wanted = tasks_option(tasks)
    fused: FusedConfig | None = None
    if graph_dim is not None:
        fused = replace(fused_config_for(wanted or ("rec",)), graph_dim=graph_dim)
    settings = ModelSettings(fused=fused, seed=seed, device=device, epochs=epochs, lr=lr, batch_size=batch_size,
                             patience=patience, text_tuning=text_tuning, graph_encoder=graph_encoder,
                             text_prior=text_prior_option(text_prior), cold_boost=cold_boost)
    job = TrainJob(model=model if model is not None or init_from is not None else "fused", tasks=wanted, settings=settings,
                   text_model=str(text_model) if text_model else None, cache_dir=str(cache or out.parent / "text-cache"),
                   init_from=str(init_from) if init_from is not None else None)
    with open_store(store) as graph:
        result = train_artifact(graph, job, out, overwrite=overwrite, progress=show_progress(progress) and not as_json,
                                store_name=str(store), log=None if as_json else console.print)
    if result is None:  # a torchrun rank other than 0
        return
    if as_json:
        print_json({"artifact": str(result.path), "model": result.model, **result.metrics, "serving": result.serving})
        return
    rows = []
    for task, key in (("rec", "ndcg@10"), ("search", "ndcg@10")):
        for split in ("valid", "test"):
            if task in result.metrics:
                m = result.metrics[task][split]
                rows.append([task, split, number(m.get(key)), number(m.get("recall@10")), number(m.get("mrr@10"))])
    if rows:
        console.print(table(f"{safe(result.model)} -> {safe(result.path)}",
                            [("task", "left"), ("split", "left"), ("ndcg@10", "right"), ("recall@10", "right"), ("mrr@10", "right")],
                            rows))
    serving = result.serving
    console.print(f"tasks: {', '.join(result.tasks) or 'none (zero-shot search)'}; lexical weight {serving['lexical_weight']} "
                  f"({safe(serving.get('lexical_weight_source', 'none'))}); "
                  + (f"text prior {serving['text_prior']} ({safe(serving['text_prior_source'])}); " if "text_prior" in serving else "")
                  + (f"cold boost {serving['cold_boost']}; " if serving.get("cold_boost") else "")
                  + f"{result.metrics['epochs']} epochs "
                  f"(best {result.metrics['best_epoch']}); total {result.seconds:.0f} s")
    if "init_from" in result.metrics:
        console.print(f"started from {safe(result.metrics['init_from']['path'])} ({safe(result.metrics['init_from']['model'])}); "
                      "what was copied and what started fresh: extra.init_from in config.json")


def _command(name: str, **flags: object) -> str:
    """The command line a run records (only the flags that were set)."""
    parts = [name]
    for flag, value in flags.items():
        if value in (None, False, ""):
            continue
        parts.append(f"--{flag.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return " ".join(parts)
