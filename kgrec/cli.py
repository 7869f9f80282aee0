"""The ``kgrec`` command line. It only maps flags onto the packages' configs."""
from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Knowledge-graph-augmented recommendation and search.")
console = Console()

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "amazon-scientific"


@app.command()
def convert_unisrec(
    source: Path = typer.Argument(..., help="Directory with Scientific.text, *.inter, *2index."),
    target: Path = typer.Argument(..., help="Directory to write products.jsonl, users.csv, interactions.csv."),
    name: str = typer.Option("Scientific", help="File name prefix of the UniSRec data set."),
) -> None:
    """Convert raw Amazon/UniSRec files into kgrec's catalogue tables."""
    from kgrec.ingest.tables import write_tables
    from kgrec.ingest.unisrec import read_unisrec

    tables = read_unisrec(source, name)
    write_tables(tables, target)
    console.print(f"wrote {len(tables.products):,} products, {len(tables.users):,} users, "
                  f"{len(tables.interactions):,} interactions to {target}")


@app.command()
def convert_homedepot(
    source: Path = typer.Argument(..., help="Home Depot train.csv or train.csv.zip (Kaggle, latin-1)."),
    target: Path = typer.Argument(..., help="Directory to write products.jsonl and judgements.csv."),
) -> None:
    """Convert the Home Depot search-relevance file into kgrec tables (then `kgrec ingest TARGET`)."""
    from kgrec.ingest.homedepot import read_homedepot, write_homedepot_tables

    if not source.exists():
        raise typer.BadParameter(f"{source} does not exist", param_hint="SOURCE")
    data = read_homedepot(source)
    write_homedepot_tables(data, target)
    if len(data.rejects):
        data.rejects.to_csv(target / "rejects.csv", index=False)
    console.print(f"read {data.rows_read:,} rows: {len(data.judgements):,} judgements "
                  f"({data.judgements['query_id'].nunique():,} queries) and {len(data.products):,} products to {target}; "
                  f"{len(data.rejects):,} rejected" + (f" (listed in {target / 'rejects.csv'})" if len(data.rejects) else ""))


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Few epochs, for a first look in a few minutes."),
    data: Path = typer.Option(DEFAULT_DATA, help="Catalogue tables directory."),
    out: Path = typer.Option(Path("runs/demo"), help="Where the store, the results JSON and the table go."),
    text_model: Path | None = typer.Option(None, help="Local BERT-family model directory (default: packaged all-MiniLM-L6-v2)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    models: str | None = typer.Option(None, help="Comma-separated subset of models to run."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Ingest the demo data, train the fused model and the baselines, print the comparison."""
    from dataclasses import replace

    from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot
    from kgrec.workflow.rec_benchmark import MODEL_NAMES, BenchmarkConfig, results_markdown, run_benchmark, write_results

    start = time.perf_counter()
    console.rule("1/4 ingest")
    store = EmbeddedStore(out / "store")
    summary = load_tables(read_tables(data), store)
    console.print(f"{summary.rows_read:,} rows in {summary.seconds:.2f} s")

    console.rule("2/4 export to PyG")
    snapshot = export_snapshot(store)
    counts = snapshot.interactions["split"].value_counts().to_dict()
    console.print(f"nodes {snapshot.num_nodes}; interactions {counts}")

    console.rule("3/4 encode product text")
    encoder = TextEncoder(TextEncoderConfig(model_path=str(text_model) if text_model else None))
    text = encoder.encode(snapshot.product_text, cache=EmbeddingCache(out / "text-cache"), progress=True)
    console.print(f"{tuple(text.shape)} text vectors from {encoder.model_path.name} ({encoder.fingerprint})")

    console.rule("4/4 train and evaluate")
    config = BenchmarkConfig(models=tuple(models.split(",")) if models else MODEL_NAMES)
    config.train = replace(config.train, device=device, seed=seed)
    config.bpr_train = replace(config.bpr_train, device=device, seed=seed)
    if quick:
        config.train = replace(config.train, epochs=2)
        config.bpr_train = replace(config.bpr_train, epochs=10)
    results = run_benchmark(snapshot, text, config, progress=True)
    write_results(results, out / "results.json", {"command": "kgrec demo" + (" --quick" if quick else ""),
                                                   "data_fingerprint": snapshot.fingerprint(),
                                                   "text_model": encoder.fingerprint})
    table_md = results_markdown(results, "test", config.ks)
    (out / "results.md").write_text(table_md + "\n")

    table = Table(title="test split, full ranking over all products, training items excluded")
    columns = [f"{m}@{k}" for k in config.ks for m in ("recall", "ndcg")] + [f"mrr@{max(config.ks)}"]
    for c in ["model", *columns, "valid ndcg@10", "train s"]:
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in results:
        table.add_row(r.model, *(f"{r.test[c]:.4f}" for c in columns), f"{r.valid['ndcg@10']:.4f}", f"{r.train_seconds:.0f}")
    console.print(table)
    console.print(f"results: {out / 'results.json'}, {out / 'results.md'}; total {time.perf_counter() - start:.0f} s")


from kgrec.cli_serving import register as register_serving  # noqa: E402

register_serving(app)

from kgrec.cli_ingest import register as register_ingest  # noqa: E402

register_ingest(app)

from kgrec.cli_evaluate import register as register_evaluate  # noqa: E402

register_evaluate(app)

if __name__ == "__main__":  # pragma: no cover
    app()
