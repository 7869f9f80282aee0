"""``kgrec evaluate``: the publishable evaluation report (see docs/evaluation.md).

Registered on the main app by ``register(app)`` (kgrec/cli.py). It only maps flags onto
the packages' configs: the work is in :mod:`kgrec.evaluation.report`, :mod:`kgrec.evaluation.protocols` and
:mod:`kgrec.evaluation.significance`.
"""
from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

console = Console()
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "amazon-scientific"


def evaluate(
    out: Path = typer.Option(Path("runs/report"), help="Folder for report.md, report.html, figures, results.json, per_user.parquet."),
    quick: bool = typer.Option(False, "--quick", help="Few epochs (as `kgrec demo --quick`), for a first look."),
    models: str | None = typer.Option(None, help="Comma-separated subset of models (default: all of `kgrec demo`)."),
    data: Path = typer.Option(DEFAULT_DATA, help="Catalogue tables directory."),
    text_model: Path | None = typer.Option(None, help="Local BERT-family model directory (default: packaged all-MiniLM-L6-v2)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Training seed; also seeds the bootstrap and the sampled negatives."),
    protocol: str = typer.Option("leave-one-out", help="Split protocol: leave-one-out | temporal (needs a timestamp column in interactions.csv)."),
    temporal_quantile: float = typer.Option(0.8, help="temporal: cut at this quantile of the timestamps."),
    sampled: int = typer.Option(0, help="Also report the sampled protocol with this many negatives (e.g. 100); 0 = off."),
    reference: str = typer.Option("fused", help="Model every other model is tested against."),
    bootstrap: int = typer.Option(2000, help="Bootstrap resamples for intervals and paired tests."),
    epochs: int | None = typer.Option(None, help="Max epochs of the softmax models (text-only, graph-only, fused)."),
    bpr_epochs: int | None = typer.Option(None, help="Max epochs of the BPR baselines (mf-bpr, lightgcn)."),
    from_run: Path | None = typer.Option(None, "--from-run", help="Re-write the report from an earlier run folder (results.json + per_user.parquet); trains nothing."),
    results: Path | None = typer.Option(None, "--results", help="Write a table-only report from a bare results JSON (e.g. runs/demo/results.json); trains nothing."),
) -> None:
    """Train and evaluate the fused model and the baselines, and write the evaluation report."""
    start = time.perf_counter()
    from kgrec.evaluation.report import write_report

    if from_run is not None or results is not None:
        source = from_run if from_run is not None else results
        written = write_report(source, out, reference=reference, n_boot=bootstrap, seed=seed)
        console.print(f"report: {written['markdown']}, {written['html']} ({time.perf_counter() - start:.0f} s)")
        return

    from dataclasses import replace

    from kgrec.evaluation.protocols import SPLIT_PROTOCOLS, apply_protocol, attach_timestamps, read_timestamps
    from kgrec.evaluation.report import run_report_benchmark, save_run
    from kgrec.fusion.train import resolve_device
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot
    from kgrec.workflow.rec_benchmark import MODEL_NAMES, BenchmarkConfig

    if protocol not in SPLIT_PROTOCOLS:
        raise typer.BadParameter(f"choose one of {list(SPLIT_PROTOCOLS)}", param_hint="--protocol")
    config = BenchmarkConfig(models=tuple(m.strip() for m in models.split(",")) if models else MODEL_NAMES)
    config.train = replace(config.train, device=device, seed=seed)
    config.bpr_train = replace(config.bpr_train, device=device, seed=seed)
    if quick:
        config.train = replace(config.train, epochs=2)
        config.bpr_train = replace(config.bpr_train, epochs=10)
    if epochs is not None:
        config.train = replace(config.train, epochs=epochs)
    if bpr_epochs is not None:
        config.bpr_train = replace(config.bpr_train, epochs=bpr_epochs)

    console.rule("1/5 ingest and export")
    store = EmbeddedStore(out / "store")
    load_tables(read_tables(data), store, progress=False)
    snapshot = export_snapshot(store)
    detail = "last interaction of each user = test, second-to-last = valid, by order"
    if protocol == "temporal":
        stamps = read_timestamps(data)
        if stamps is None:
            raise typer.BadParameter(f"{data / 'interactions.csv'} has no 'timestamp' column; use --protocol leave-one-out",
                                     param_hint="--protocol")
        snapshot = apply_protocol(attach_timestamps(snapshot, stamps), "temporal", quantile=temporal_quantile)
        detail = f"global cut at the {temporal_quantile:.2f} quantile of timestamps; per user, last interaction after the cut = test, earlier ones after it = valid"
    console.print(f"nodes {snapshot.num_nodes}; interactions {snapshot.interactions['split'].value_counts().to_dict()}")

    text, text_fingerprint = None, None
    if any(m in ("text-zero-shot", "text-only", "fused") for m in config.models):
        console.rule("2/5 encode product text")
        from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig

        encoder = TextEncoder(TextEncoderConfig(model_path=str(text_model) if text_model else None))
        text = encoder.encode(snapshot.product_text, cache=EmbeddingCache(out / "text-cache"), progress=True)
        text_fingerprint = encoder.fingerprint

    console.rule("3/5 train and evaluate")
    run = run_report_benchmark(snapshot, text, config, progress=True, sampled_negatives=sampled, sampled_seed=seed)

    console.rule("4/5 save per-user results")
    command = "kgrec evaluate" + (" --quick" if quick else "") + (f" --models {models}" if models else "") \
        + (f" --protocol {protocol}" if protocol != "leave-one-out" else "") + (f" --sampled {sampled}" if sampled else "")
    save_run(run, snapshot, out, config, {
        "command": command,
        "data": str(data),
        "data_fingerprint": snapshot.fingerprint(),
        "text_model": text_fingerprint,
        "device": str(resolve_device(device)),
        "protocol": {"name": protocol, "detail": detail, "ranking": "full", "sampled_negatives": sampled},
    })

    console.rule("5/5 report")
    written = write_report(out, out, reference=reference, n_boot=bootstrap, seed=seed)
    for r in run.results:
        console.print(f"{r.model:>15}: test ndcg@10 {r.test['ndcg@10']:.4f}  recall@10 {r.test['recall@10']:.4f}  "
                      f"auc {r.test['auc']:.4f}  ({r.train_seconds:.0f} s)")
    console.print(f"report: {written['markdown']}, {written['html']}; per-user: {out / 'per_user.parquet'}; "
                  f"total {time.perf_counter() - start:.0f} s")


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the ``kgrec`` app."""
    app.command("evaluate")(evaluate)
