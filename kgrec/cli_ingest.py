"""``kgrec ingest``: load files into the knowledge graph, every row loaded or reported.

Attach to the ``kgrec`` app with :func:`register`. The command only maps flags
onto :mod:`kgrec.ingest.sources` / :mod:`kgrec.ingest.pipeline` and prints the outcome.

Exit status: 0 every row loaded; 1 rows were rejected (see the report; use
``--allow-rejects`` to exit 0 anyway); 2 a file could not be read, or bad usage.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "amazon-scientific"


def _error(message: object) -> None:
    console.print(str(message), style="red", markup=False, soft_wrap=True)


def _name(file: str) -> str:
    """A file as shown in tables: relative to the working directory when below it."""
    try:
        return escape(str(Path(file).resolve().relative_to(Path.cwd())))
    except (ValueError, OSError):
        return escape(file)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=what)
        key, value = item.rsplit("=", 1) if what == "--kind" else item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _open_store(kind: str, store_dir: Path) -> tuple[Any, Path]:
    """(store, default state dir)."""
    if kind == "embedded":
        from kgrec.kg.embedded import EmbeddedStore

        return EmbeddedStore(store_dir), store_dir / "_ingest"
    if kind == "neo4j":
        from kgrec.kg.neo4j_store import Neo4jConfig, Neo4jConfigError, Neo4jStore

        try:
            config = Neo4jConfig.from_env()
        except Neo4jConfigError as exc:
            _error(exc)
            raise typer.Exit(2) from None
        tag = hashlib.sha256(f"{config.uri}|{config.database}".encode()).hexdigest()[:12]
        return Neo4jStore(config), Path(".kgrec-ingest") / tag
    raise typer.BadParameter(f"{kind!r}: choose embedded or neo4j", param_hint="--store")


class _Bars:
    """Rich progress bars, one per source (bytes for files, rows for frames)."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rows]}"),
            TimeElapsedColumn(), console=console, disable=not enabled, transient=False,
        )
        self.tasks: dict[int, Any] = {}

    def __call__(self, event: str, fr: Any, position: int, total: int | None) -> None:
        key = id(fr)
        if event == "start":
            self.tasks[key] = self.progress.add_task(f"{fr.kind:<11} {escape(Path(fr.file).name)}", total=None, rows="")
        elif event == "chunk":
            self.progress.update(self.tasks[key], completed=position, total=total,
                                 rows=f"{fr.read:,} rows, {fr.rejected:,} rejected")
        elif event == "end":
            task = self.progress.tasks[self.tasks[key]]
            self.progress.update(self.tasks[key], completed=task.total or task.completed,
                                 rows=f"{fr.read:,} rows, {fr.rejected:,} rejected" + (" [red]error[/red]" if fr.error else ""))


def summary_tables(report: Any, show_rejects: int = 10) -> list[Table]:
    """Rich tables: per file, per node label / relationship type, and a sample of rejects."""
    files = Table(title="input rows: every row loaded or rejected")
    for c in ("file", "kind", "read", "loaded", "rejected", "reasons"):
        files.add_column(c, justify="right" if c in ("read", "loaded", "rejected") else "left")
    for f in report.files:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(f.reasons.items(), key=lambda kv: -kv[1]))
        if f.error:
            reasons = f"[red]{escape(f.error)}[/red]" + (f"; {reasons}" if reasons else "")
        files.add_row(_name(f.file), f.kind, f"{f.read:,}", f"{f.loaded:,}",
                      f"[red]{f.rejected:,}[/red]" if f.rejected else "0", reasons)
    files.add_row("[b]total[/b]", "", f"[b]{report.read:,}[/b]", f"[b]{report.loaded:,}[/b]",
                  f"[b]{report.rejected:,}[/b]", "")
    graph = Table(title="knowledge graph")
    for c in ("label / type", "before", "after", "added"):
        graph.add_column(c, justify="left" if c == "label / type" else "right")
    for name, added in report.added().items():
        before, after = report.counts_before.get(name, 0), report.counts_after.get(name, 0)
        if before or after:
            graph.add_row(name, f"{before:,}", f"{after:,}", f"{added:+,}" if added else "0")
    tables = [files, graph]
    if show_rejects and report.rejects:
        sample = Table(title=f"rejected rows (first {min(show_rejects, len(report.rejects))} of {report.rejected:,})")
        for c in ("file", "row", "field", "reason", "message", "value"):
            sample.add_column(c)
        for r in report.rejects[:show_rejects]:
            sample.add_row(escape(Path(r["file"]).name), str(r["row"]), str(r["field"] or ""), r["reason"],
                           escape(r["message"]), "" if r["value"] is None else escape(repr(r["value"])[1:-1]))
        tables.append(sample)
    return tables


def ingest(
    paths: list[Path] | None = typer.Argument(
        None, help="Files or directories (tables, RecBole atomic files, UniSRec). Default: the demo data."),
    store: str = typer.Option("embedded", "--store", help="embedded | neo4j (KGREC_NEO4J_* environment)."),
    store_dir: Path = typer.Option(Path("runs/store"), "--store-dir", help="Embedded store directory."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Column-mapping config (.toml/.json/.yaml)."),
    map_: list[str] = typer.Option([], "--map", "-m", help="FIELD=COLUMN or KIND.FIELD=COLUMN (repeatable)."),
    kind: list[str] = typer.Option([], "--kind", "-k", help="FILE=KIND for a file whose name says nothing."),
    dangling: list[str] = typer.Option([], "--dangling", help="KIND=reject|create for unknown references."),
    duplicates: str | None = typer.Option(None, "--duplicates", help="reject (default) | last"),
    link_by_id: bool | None = typer.Option(None, "--link-by-id/--no-link-by-id",
                                              help="Triples: an entity whose id is a product id DESCRIBES it."),
    state_dir: Path | None = typer.Option(None, "--state-dir",
                                             help="Checkpoint and reports (default STORE_DIR/_ingest)."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume an interrupted identical run."),
    chunk_mb: float = typer.Option(16.0, "--chunk-mb", help="Block size for CSV/JSONL files."),
    flush_rows: int | None = typer.Option(None, "--flush-rows", help="Input rows between store writes."),
    allow_rejects: bool = typer.Option(False, "--allow-rejects", help="Exit 0 even if rows were rejected."),
    show_rejects: int = typer.Option(10, "--show-rejects", help="Print this many rejected rows."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Load files into the knowledge graph: every row is loaded or reported (file, row, field, reason)."""
    from kgrec.ingest.pipeline import IngestConfig, Ingestor
    from kgrec.ingest.readers import SourceError
    from kgrec.ingest.sources import MappingConfig, apply_map_args, discover, load_mapping

    try:
        mapping = load_mapping(config) if config is not None else MappingConfig()
        apply_map_args(mapping, list(map_))
        found = discover(list(paths or [DEFAULT_DATA]), mapping, _pairs(list(kind), "--kind"))
    except (ValueError, SourceError, OSError) as exc:
        _error(exc)
        raise typer.Exit(2) from None
    for line in found.skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(line)}", soft_wrap=True)
    if not found.sources:
        _error("no input files found")
        raise typer.Exit(2)

    settings: dict[str, Any] = dict(mapping.ingest)
    settings["dangling"] = {**found.dangling, **settings.get("dangling", {}), **_pairs(list(dangling), "--dangling")}
    if duplicates is not None:
        settings["duplicates"] = duplicates
    if link_by_id is not None:
        settings["link_by_id"] = link_by_id
    if flush_rows is not None:
        settings["flush_rows"] = flush_rows
    settings.setdefault("chunk_bytes", int(chunk_mb * (1 << 20)))

    graph_store, default_state = _open_store(store, store_dir)
    try:
        cfg = IngestConfig(state_dir=state_dir or default_state, resume=resume, **settings)
    except (ValueError, TypeError) as exc:
        _error(exc)
        raise typer.Exit(2) from None
    bars = _Bars(progress)
    try:
        with bars.progress:
            report = Ingestor(graph_store, cfg, bars).run(found.sources)
    finally:
        graph_store.close()

    for table in summary_tables(report, show_rejects):
        console.print(table)
    for f in report.files:
        for w in f.warnings:
            console.print(f"[yellow]warning[/yellow] {_name(f.file)}: {escape(w)}", soft_wrap=True)
    resumed = f", resumed: skipped {report.resumed_flushes} finished write(s)" if report.resumed_flushes else ""
    console.print(
        f"{report.read:,} rows read = {report.loaded:,} loaded + {report.rejected:,} rejected "
        f"in {report.seconds:.2f} s ({report.rows_per_second:,.0f} rows/s){resumed}"
    )
    console.print(f"report: {report.report_path}; rejected rows: {report.rejects_path}", markup=False, soft_wrap=True)
    if report.errors:
        raise typer.Exit(2)
    if report.rejected and not allow_rejects:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Attach ``kgrec ingest`` to the ``kgrec`` app."""
    app.command("ingest")(ingest)
