"""Ingest throughput: the demo tables into a fresh embedded store, rows per second.

Measures the whole run of :mod:`kgrec.ingest.pipeline` (read CSV/JSONL in chunks,
validate, check duplicates and references, build node/edge frames, upsert into
Parquet tables, checkpoint and reports) on ``--data`` (default
``data/amazon-scientific``: 72,254 rows), ``--repeat`` times into a fresh store
each, and once more into the filled store (an idempotent re-ingest that adds
nothing). Imports and a warm-up run are not timed. Wall time and the process's
CPU time are both reported: on a shared machine (load above the core count)
wall time measures the neighbours too, CPU time only the ingest.

Usage::

    python benchmarks/ingest.py                      # demo data, 5 repeats
    python benchmarks/ingest.py --data DIR --repeat 3

Prints a table and writes ``benchmarks/results/ingest.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.sources import discover
from kgrec.kg.embedded import EmbeddedStore

ROOT = Path(__file__).resolve().parents[1]


def run_once(data: Path, store_dir: Path) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, report) of one run."""
    sources = discover([data]).sources
    store = EmbeddedStore(store_dir)
    start, cpu = time.perf_counter(), time.process_time()
    report = Ingestor(store, IngestConfig(state_dir=store_dir / "_ingest")).run(sources)
    return time.perf_counter() - start, time.process_time() - cpu, report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        run_once(args.data, Path(tmp) / "warmup")
        fresh, cpu = [], []
        report = None
        for i in range(args.repeat):
            seconds, cpu_seconds, report = run_once(args.data, Path(tmp) / f"fresh{i}")
            fresh.append(seconds)
            cpu.append(cpu_seconds)
        again, again_cpu, again_report = run_once(args.data, Path(tmp) / "fresh0")
    rows = report.read  # type: ignore[attr-defined]

    def rel(path: object) -> str:
        try:
            return str(Path(str(path)).resolve().relative_to(ROOT))
        except ValueError:
            return str(path)

    result = {
        "data": rel(args.data),
        "rows": rows,
        "loaded": report.loaded,  # type: ignore[attr-defined]
        "rejected": report.rejected,  # type: ignore[attr-defined]
        "files": {rel(f.file): {"rows": f.read, "seconds": round(f.seconds, 4)} for f in report.files},  # type: ignore[attr-defined]
        "fresh_seconds": [round(s, 4) for s in fresh],
        "fresh_rows_per_second_best": round(rows / min(fresh)),
        "fresh_rows_per_second_median": round(rows / statistics.median(fresh)),
        "fresh_cpu_seconds": [round(s, 4) for s in cpu],
        "fresh_rows_per_cpu_second_median": round(rows / statistics.median(cpu)),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "reingest_seconds": round(again, 4),
        "reingest_rows_per_second": round(rows / again),
        "reingest_added": sum(again_report.added().values()),  # type: ignore[attr-defined]
        "command": "python benchmarks/ingest.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor()},
    }
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"ingest {args.data.name} -> embedded store ({rows:,} rows)")
        for c in ("run", "wall s", "rows/s", "CPU s", "rows/CPU-s"):
            table.add_column(c, justify="left" if c == "run" else "right")
        for i, (s, c) in enumerate(zip(fresh, cpu)):
            table.add_row(f"fresh store #{i + 1}", f"{s:.3f}", f"{rows / s:,.0f}", f"{c:.3f}", f"{rows / c:,.0f}")
        table.add_row("re-ingest (adds nothing)", f"{again:.3f}", f"{rows / again:,.0f}", f"{again_cpu:.3f}",
                      f"{rows / again_cpu:,.0f}")
        Console().print(table)
    except ImportError:  # pragma: no cover
        print(json.dumps(result, indent=2))
    print(f"best {result['fresh_rows_per_second_best']:,} rows/s, median {result['fresh_rows_per_second_median']:,} rows/s "
          f"(wall); median {result['fresh_rows_per_cpu_second_median']:,} rows per CPU-second; "
          f"load average {result['load_average']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
