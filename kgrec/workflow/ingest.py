"""Files -> a store, every row loaded or reported (the ``kgrec ingest`` step of the one path)."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kgrec.ingest.pipeline import IngestConfig, Ingestor, IngestReport
from kgrec.ingest.readers import SourceError
from kgrec.ingest.sources import MappingConfig, apply_map_args, discover, load_mapping
from kgrec.workflow.store import WorkflowError, ingest_state_dir, open_store

#: The demo data shipped with the repository (Amazon Industrial & Scientific, kgrec tables).
DEMO_DATA = Path(__file__).resolve().parents[2] / "data" / "amazon-scientific"


@dataclass
class IngestOptions:
    """How files are read and loaded (see docs/ingest.md).

    Attributes:
        config: a column-mapping config file (.toml/.json/.yaml), or None.
        maps: ``FIELD=COLUMN`` or ``KIND.FIELD=COLUMN`` mappings (as ``--map``).
        kinds: file name -> record kind for files whose name says nothing (as ``--kind``).
        dangling: record kind -> ``reject`` | ``create`` for references to unknown nodes.
        duplicates: ``reject`` (default) or ``last``; None = the config's.
        link_by_id: triples: an entity whose id is a product id describes it; None = the config's.
        state_dir: checkpoint and reports (None = ``STORE/_ingest``).
        resume: resume an interrupted identical run (default True).
        chunk_mb: block size for CSV/JSONL files in MiB (default 16).
        flush_rows: input rows between store writes; None = the default.
        lock_timeout: seconds to wait for another writer of the same embedded store (None = forever).
    """

    config: Path | None = None
    maps: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    dangling: dict[str, str] = field(default_factory=dict)
    duplicates: str | None = None
    link_by_id: bool | None = None
    state_dir: Path | None = None
    resume: bool = True
    chunk_mb: float = 16.0
    flush_rows: int | None = None
    lock_timeout: float | None = 60.0


@dataclass
class IngestOutcome:
    """The run's report and the paths discovery skipped (with why)."""

    report: IngestReport
    skipped: list[str]


def ingest_files(
    paths: list[str | os.PathLike[str]],
    store_spec: str | os.PathLike[str],
    options: IngestOptions | None = None,
    progress: Callable[[str, Any, int, int | None], None] | None = None,
) -> IngestOutcome:
    """Read ``paths`` (files or folders: kgrec tables, CSV/TSV/JSONL/Parquet with a mapping, RecBole
    atomic files with ``.kg``/``.link``, Amazon/UniSRec) into the store ``store_spec``.

    Raises:
        WorkflowError: a bad mapping or option, no input files, an unreadable store.
    """
    options = options or IngestOptions()
    if not options.chunk_mb > 0 or options.chunk_mb != options.chunk_mb or options.chunk_mb > 4096:
        raise WorkflowError(f"--chunk-mb must be a number in (0, 4096], got {options.chunk_mb}")
    import yaml

    try:
        mapping = load_mapping(options.config) if options.config is not None else MappingConfig()
    except (ValueError, OSError, LookupError, yaml.YAMLError) as exc:
        raise WorkflowError(f"mapping config {options.config}: {exc}") from None
    try:
        apply_map_args(mapping, list(options.maps))
        found = discover([Path(p) for p in paths], mapping, dict(options.kinds))
    except (ValueError, SourceError, OSError, LookupError) as exc:
        raise WorkflowError(str(exc)) from None
    if not found.sources:
        raise WorkflowError("no input files found in " + ", ".join(str(p) for p in paths)
                            + (f" (skipped: {'; '.join(found.skipped)})" if found.skipped else ""))
    settings: dict[str, Any] = dict(mapping.ingest)
    settings["dangling"] = {**found.dangling, **settings.get("dangling", {}), **options.dangling}
    if options.duplicates is not None:
        settings["duplicates"] = options.duplicates
    if options.link_by_id is not None:
        settings["link_by_id"] = options.link_by_id
    if options.flush_rows is not None:
        settings["flush_rows"] = options.flush_rows
    settings.setdefault("chunk_bytes", int(options.chunk_mb * (1 << 20)))
    state_dir = options.state_dir or ingest_state_dir(store_spec)
    try:
        config = IngestConfig(state_dir=state_dir, resume=options.resume, **settings)
    except (ValueError, TypeError) as exc:
        raise WorkflowError(f"ingest settings: {exc}") from None
    store = open_store(store_spec, create=True, lock_timeout=options.lock_timeout)
    try:
        report = Ingestor(store, config, progress).run(found.sources)
    finally:
        store.close()
    return IngestOutcome(report, list(found.skipped))
