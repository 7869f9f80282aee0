"""``kgrec ingest`` and the converters: files -> the knowledge graph, every row loaded or reported.

Exit status of ``ingest``: 0 every row loaded; 1 rows were rejected (see the report; ``--allow-rejects``
exits 0 anyway); 2 a file could not be read, or bad usage.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kgrec.cli.app import command, show_progress
from kgrec.cli.output import console, safe, table, warn
from kgrec.workflow.ingest import DEMO_DATA, IngestOptions, IngestOutcome, ingest_files
from kgrec.workflow.store import STORE_HELP


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=what)
        key, value = item.rsplit("=", 1) if what == "--kind" else item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _name(file: str) -> str:
    """A file as shown in tables: relative to the working directory when below it."""
    try:
        return safe(Path(file).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return safe(file)


class ProgressBars:
    """Rich progress bars, one per source (bytes for files, rows for frames)."""

    def __init__(self, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rows]}"),
            TimeElapsedColumn(), console=console, disable=not enabled, transient=False,
        )
        self.tasks: dict[int, Any] = {}

    def __call__(self, event: str, fr: Any, position: int, total: int | None) -> None:
        key = id(fr)
        if event == "start":
            self.tasks[key] = self.progress.add_task(f"{fr.kind:<11} {safe(Path(fr.file).name)}", total=None, rows="")
        elif event == "chunk":
            self.progress.update(self.tasks[key], completed=position, total=total,
                                 rows=f"{fr.read:,} rows, {fr.rejected:,} rejected")
        elif event == "end":
            task = self.progress.tasks[self.tasks[key]]
            self.progress.update(self.tasks[key], completed=task.total or task.completed,
                                 rows=f"{fr.read:,} rows, {fr.rejected:,} rejected" + (" [red]error[/red]" if fr.error else ""))


def print_ingest_report(outcome: IngestOutcome, show_rejects: int = 10) -> None:
    """The per-file table, the graph's counts, a sample of rejected rows and the totals line."""
    report = outcome.report
    for line in outcome.skipped:
        console.print(f"[yellow]skipped[/yellow] {safe(line)}", soft_wrap=True)
    files = []
    for f in report.files:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(f.reasons.items(), key=lambda kv: -kv[1]))
        if f.error:
            reasons = f"[red]{safe(f.error)}[/red]" + (f"; {reasons}" if reasons else "")
        files.append([_name(f.file), f.kind, f"{f.read:,}", f"{f.loaded:,}", f"[red]{f.rejected:,}[/red]" if f.rejected else "0",
                      reasons])
    files.append(["[b]total[/b]", "", f"[b]{report.read:,}[/b]", f"[b]{report.loaded:,}[/b]", f"[b]{report.rejected:,}[/b]", ""])
    console.print(table("input rows: every row loaded or rejected",
                        [("file", "left"), ("kind", "left"), ("read", "right"), ("loaded", "right"), ("rejected", "right"),
                         ("reasons", "left")], files))
    graph = []
    for name, added in report.added().items():
        before, after = report.counts_before.get(name, 0), report.counts_after.get(name, 0)
        if before or after:
            graph.append([name, f"{before:,}", f"{after:,}", f"{added:+,}" if added else "0"])
    console.print(table("knowledge graph", [("label / type", "left"), ("before", "right"), ("after", "right"),
                                            ("added", "right")], graph))
    if show_rejects and report.rejects:
        sample = [[safe(Path(r["file"]).name), str(r["row"]), safe(r["field"] or ""), safe(r["reason"]), safe(r["message"]),
                   "" if r["value"] is None else safe(repr(r["value"])[1:-1])] for r in report.rejects[:show_rejects]]
        console.print(table(f"rejected rows (first {len(sample)} of {report.rejected:,})",
                            [(c, "left") for c in ("file", "row", "field", "reason", "message", "value")], sample))
    for f in report.files:
        for w in f.warnings:
            warn(f"{f.file}: {w}")
    resumed = f", resumed: skipped {report.resumed_flushes} finished write(s)" if report.resumed_flushes else ""
    console.print(f"{report.read:,} rows read = {report.loaded:,} loaded + {report.rejected:,} rejected "
                  f"in {report.seconds:.2f} s ({report.rows_per_second:,.0f} rows/s){resumed}")
    console.print(f"report: {safe(report.report_path)}; rejected rows: {safe(report.rejects_path)}", soft_wrap=True)


@command("ingest")
def ingest(
    paths: list[Path] | None = typer.Argument(
        None, help="Files or folders (kgrec tables, CSV/TSV/JSONL/Parquet, RecBole atomic files, UniSRec). Default: the demo data."),
    store: str = typer.Option("runs/store", "--store", "-s", help=STORE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help="Column-mapping config (.toml/.json/.yaml)."),
    map_: list[str] = typer.Option([], "--map", "-m", help="FIELD=COLUMN or KIND.FIELD=COLUMN (repeatable)."),
    kind: list[str] = typer.Option([], "--kind", "-k", help="FILE=KIND for a file whose name says nothing."),
    dangling: list[str] = typer.Option([], "--dangling", help="KIND=reject|create for unknown references."),
    duplicates: str | None = typer.Option(None, "--duplicates", help="reject (default) | last"),
    link_by_id: bool | None = typer.Option(None, "--link-by-id/--no-link-by-id",
                                           help="Triples: an entity whose id is a product id DESCRIBES it."),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Checkpoint and reports (default STORE/_ingest)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an interrupted identical run."),
    chunk_mb: float = typer.Option(16.0, "--chunk-mb", help="Block size for CSV/JSONL files, in MiB."),
    flush_rows: int | None = typer.Option(None, "--flush-rows", min=1, help="Input rows between store writes."),
    lock_timeout: float = typer.Option(60.0, "--lock-timeout", min=0.0,
                                       help="Seconds to wait while another process writes the same store."),
    allow_rejects: bool = typer.Option(False, "--allow-rejects", help="Exit 0 even if rows were rejected."),
    show_rejects: int = typer.Option(10, "--show-rejects", min=0, help="Print this many rejected rows."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
) -> None:
    """Load files into the knowledge graph: every row is loaded or reported (file, row, field, reason)."""
    options = IngestOptions(config=config, maps=list(map_), kinds=_pairs(list(kind), "--kind"),
                            dangling=_pairs(list(dangling), "--dangling"), duplicates=duplicates, link_by_id=link_by_id,
                            state_dir=state_dir, resume=resume, chunk_mb=chunk_mb, flush_rows=flush_rows,
                            lock_timeout=lock_timeout)
    bars = ProgressBars(show_progress(progress))
    with bars.progress:
        outcome = ingest_files(list(paths or [DEMO_DATA]), store, options, bars)
    print_ingest_report(outcome, show_rejects)
    if outcome.report.errors:
        raise typer.Exit(2)
    if outcome.report.rejected and not allow_rejects:
        raise typer.Exit(1)


@command("convert-unisrec")
def convert_unisrec(
    source: Path = typer.Argument(..., help="Directory with Scientific.text, *.inter, *2index."),
    target: Path = typer.Argument(..., help="Directory to write products.jsonl, users.csv, interactions.csv."),
    name: str = typer.Option("Scientific", help="File name prefix of the UniSRec data set."),
) -> None:
    """Convert raw Amazon/UniSRec files into kgrec's catalogue tables (then `kgrec ingest TARGET`)."""
    from kgrec.ingest.tables import write_tables
    from kgrec.ingest.unisrec import read_unisrec

    tables = read_unisrec(source, name)
    write_tables(tables, target)
    console.print(f"wrote {len(tables.products):,} products, {len(tables.users):,} users, "
                  f"{len(tables.interactions):,} interactions to {safe(target)}")


@command("convert-homedepot")
def convert_homedepot(
    source: Path = typer.Argument(..., help="Home Depot train.csv or train.csv.zip (Kaggle, latin-1)."),
    target: Path = typer.Argument(..., help="Directory to write products.jsonl and judgements.csv."),
) -> None:
    """Convert the Home Depot search-relevance file into kgrec tables (labels = grades 0..2; then `kgrec ingest TARGET`)."""
    from kgrec.ingest.homedepot import read_homedepot, write_homedepot_tables

    if not source.exists():
        raise typer.BadParameter(f"{source} does not exist", param_hint="SOURCE")
    data = read_homedepot(source)
    write_homedepot_tables(data, target)
    if len(data.rejects):
        data.rejects.to_csv(target / "rejects.csv", index=False)
    console.print(f"read {data.rows_read:,} rows: {len(data.judgements):,} judgements "
                  f"({data.judgements['query_id'].nunique():,} queries) and {len(data.products):,} products to {safe(target)}; "
                  f"{len(data.rejects):,} rejected" + (f" (listed in {safe(target / 'rejects.csv')})" if len(data.rejects) else ""))
