"""The ingest run: read sources in chunks, validate, resolve references, upsert, report.

Every row read is either loaded or written to the reject report, and the run
checks ``loaded + rejected == read`` for every chunk of every file.

Order
    Sources are processed kind by kind (:data:`~kgrec.ingest.schemas.KIND_ORDER`:
    categories, brands, products, users, entities, triples, links, interactions,
    judgements), files of one kind in the order given, so references can be
    checked against everything the run loaded before.

Duplicates (two rows of one run with the same key, see :mod:`kgrec.ingest.schemas`)
    ``duplicates="reject"`` (default): the first row is loaded, every later one
    is rejected (``duplicate``, naming the first row's file and row).
    ``duplicates="last"``: every row is loaded and the last one wins.
    A row whose key is already in the *store* (an earlier run) is an update, not a
    duplicate: its columns overwrite, columns it lacks keep their old values.

Dangling references (a value of a ``ref`` field that no node has, in the store or in this run)
    per referenced kind, ``"reject"`` (the row is rejected: ``dangling``) or
    ``"create"`` (a bare node is created with the id; brands and categories also
    get it as ``name``). Defaults (:data:`~kgrec.ingest.schemas.DEFAULT_DANGLING`):
    unknown products are rejected, unknown users, categories, brands, entities
    and queries are created. Categories named by a product's ``category_path``
    are always created (the path defines them).

Resuming
    With a ``state_dir`` the run writes ``checkpoint.json`` there after every
    store write ("flush", every ``flush_rows`` input rows and at the end). A run
    with the same sources (path, size, modification time, content samples) and
    the same settings as an unfinished run resumes it: it reads and validates
    everything again (duplicate and reference checks need all rows) but skips
    the writes of the flushes already done. Flush boundaries depend only on the
    input, so the resumed run ends in the same graph as an uninterrupted one.
    Upserts are idempotent anyway: running a finished ingest again changes nothing.

Reports (with a ``state_dir``): ``rejects.jsonl`` (one JSON object per rejected
row: file, row, line, field, reason, message, value) and ``ingest-report.json``
(:class:`IngestReport`). Without one, rejects stay in :attr:`IngestReport.rejects`.
"""
from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgrec.ingest.build import BuildContext, build, created_nodes
from kgrec.ingest.readers import (
    Chunk,
    CsvDialect,
    CsvReader,
    FrameReader,
    JsonlReader,
    ParquetReader,
    Reject,
    SourceError,
    detect_format,
)
from kgrec.ingest.schemas import DEFAULT_DANGLING, KIND_ORDER, REFERENCE_LABELS, SCHEMAS, kind_of
from kgrec.ingest.validate import SourceOptions, validate_chunk
from kgrec.kg.files import WriterLock, atomic_write_text, remove_stale_temporaries
from kgrec.kg.schema import node_type, register_relations
from kgrec.kg.store import GraphStore

INGEST_VERSION = 1
CHECKPOINT = "checkpoint.json"
REJECTS = "rejects.jsonl"
REPORT = "ingest-report.json"
#: Seconds a run waits for another run holding the same state folder.
STATE_LOCK_TIMEOUT = 60.0
#: Node labels in the order they are written (nodes before edges; KgRelation first).
NODE_ORDER = ("KgRelation", "Category", "Brand", "Product", "User", "Entity", "Query")


# -- sources ----------------------------------------------------------------------------------


@dataclass
class Source:
    """One input table: a file (CSV/TSV/JSONL/Parquet) or an in-memory frame, of one kind.

    Attributes:
        kind: record kind (``product``, ``interaction``... see :data:`kgrec.ingest.schemas.SCHEMAS`).
        path: the file; None for a frame.
        format: ``csv``, ``tsv``, ``jsonl``, ``parquet``; None = from the file name.
        frame: an in-memory table instead of a file.
        name: how reports name it (default: the path).
        dialect: CSV/TSV settings (separator, quoting, encoding, header transform).
        options: column map and per-kind settings (:class:`~kgrec.ingest.validate.SourceOptions`).
    """

    kind: str
    path: Path | None = None
    format: str | None = None
    frame: pd.DataFrame | None = None
    name: str | None = None
    dialect: CsvDialect | None = None
    options: SourceOptions = field(default_factory=SourceOptions)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = kind_of(self.kind)
        if (self.path is None) == (self.frame is None):
            raise ValueError("a source is a path or a frame, not both or neither")
        if self.path is not None:
            self.path = Path(self.path)
            if self.format is None:
                self.format = detect_format(self.path)
        else:
            self.format = "frame"
        if self.name is None:
            self.name = str(self.path) if self.path is not None else f"<{self.kind} frame>"

    def reader(self, chunk_bytes: int, chunk_rows: int) -> Any:
        if self.format == "frame":
            return FrameReader(self.frame, self.name, chunk_rows)  # type: ignore[arg-type]
        assert self.path is not None
        reader: CsvReader | JsonlReader | ParquetReader
        if self.format in ("csv", "tsv"):
            dialect = self.dialect or CsvDialect(sep="\t" if self.format == "tsv" else ",")
            reader = CsvReader(self.path, dialect, chunk_bytes)
        elif self.format == "jsonl":
            reader = JsonlReader(self.path, (self.dialect or CsvDialect()).encoding, chunk_bytes)
        elif self.format == "parquet":
            reader = ParquetReader(self.path, chunk_rows)
        else:
            raise SourceError(f"{self.path}: unknown format {self.format!r}")
        reader.name = self.name or str(self.path)
        return reader

    def identity(self) -> dict[str, Any]:
        """What makes a rerun "the same run": the content's signature and the settings."""
        out: dict[str, Any] = {"kind": self.kind, "format": self.format, "name": self.name,
                               "options": _plain(asdict(self.options))}
        if self.dialect is not None:
            d = self.dialect
            out["dialect"] = [d.sep, d.quote, d.encoding, None if d.header is None else getattr(d.header, "__name__", "header")]
        if self.path is not None:
            out["file"] = _file_signature(self.path)
        else:
            out["frame"] = hashlib.sha256(
                pd.util.hash_pandas_object(self.frame.astype(str), index=True).to_numpy().tobytes()  # type: ignore[union-attr]
            ).hexdigest()
        return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _file_signature(path: Path, sample: int = 1 << 16) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {"path": str(path), "missing": True}
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(sample))
        if st.st_size > sample:
            fh.seek(max(st.st_size - sample, sample))
            h.update(fh.read(sample))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()}


# -- settings and report -----------------------------------------------------------------------


@dataclass
class IngestConfig:
    """Settings of an ingest run (see the module docstring for the rules).

    Attributes:
        dangling: referenced kind -> ``"reject"`` or ``"create"`` (merged over the defaults).
        duplicates: ``"reject"`` or ``"last"``.
        chunk_bytes: bytes per block read from CSV/JSONL files.
        chunk_rows: rows per block of Parquet files and frames.
        flush_rows: input rows between two store writes (and checkpoints).
        state_dir: where checkpoint and reports go; None = no resume, rejects in memory.
        resume: resume an unfinished run with the same sources and settings.
        link_by_id: triples: an entity whose id is a product id ``DESCRIBES`` that product.
        keep_rejects: rejects kept in :attr:`IngestReport.rejects` (all are in ``rejects.jsonl``).
    """

    dangling: dict[str, str] = field(default_factory=dict)
    duplicates: str = "reject"
    chunk_bytes: int = 16 << 20
    chunk_rows: int = 250_000
    flush_rows: int = 2_000_000
    state_dir: Path | None = None
    resume: bool = True
    link_by_id: bool = False
    keep_rejects: int = 100_000

    def __post_init__(self) -> None:
        unknown = set(self.dangling) - set(DEFAULT_DANGLING)
        if unknown:
            raise ValueError(f"dangling policy for unknown kinds {sorted(unknown)}; known: {sorted(DEFAULT_DANGLING)}")
        bad = {k: v for k, v in self.dangling.items() if v not in ("reject", "create")}
        if bad:
            raise ValueError(f"dangling policies must be 'reject' or 'create', got {bad}")
        self.dangling = {**DEFAULT_DANGLING, **self.dangling}
        if self.duplicates not in ("reject", "last"):
            raise ValueError(f"duplicates must be 'reject' or 'last', got {self.duplicates!r}")
        for name in ("chunk_bytes", "chunk_rows", "flush_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive")
        if self.state_dir is not None:
            self.state_dir = Path(self.state_dir)

    def identity(self) -> dict[str, Any]:
        return {"dangling": self.dangling, "duplicates": self.duplicates, "chunk_bytes": self.chunk_bytes,
                "chunk_rows": self.chunk_rows, "flush_rows": self.flush_rows, "link_by_id": self.link_by_id}


@dataclass
class FileReport:
    """Counts of one source."""

    file: str
    kind: str
    format: str
    read: int = 0
    loaded: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class IngestReport:
    """The outcome of a run. ``read == loaded + rejected`` for every file and in total."""

    files: list[FileReport] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    counts_before: dict[str, int] = field(default_factory=dict)
    counts_after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    flushes: int = 0
    resumed_flushes: int = 0
    run_id: str = ""
    rejects_path: str | None = None
    report_path: str | None = None
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files)

    @property
    def loaded(self) -> int:
        return sum(f.loaded for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def errors(self) -> list[str]:
        return [f"{f.file}: {f.error}" for f in self.files if f.error]

    @property
    def rows_per_second(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            for k, v in f.reasons.items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    def added(self) -> dict[str, int]:
        keys = list(dict.fromkeys([*self.counts_before, *self.counts_after]))
        return {k: self.counts_after.get(k, 0) - self.counts_before.get(k, 0) for k in keys}

    def as_dict(self, rejects: int = 0) -> dict[str, Any]:
        out = {
            "ingest_version": INGEST_VERSION,
            "run_id": self.run_id,
            "read": self.read, "loaded": self.loaded, "rejected": self.rejected,
            "reasons": self.reasons(),
            "seconds": round(self.seconds, 4),
            "rows_per_second": round(self.rows_per_second, 1),
            "files": [asdict(f) for f in self.files],
            "written": self.written, "created": self.created,
            "counts_before": self.counts_before, "counts_after": self.counts_after, "added": self.added(),
            "flushes": self.flushes, "resumed_flushes": self.resumed_flushes,
            "rejects_path": self.rejects_path,
            "errors": self.errors,
        }
        if rejects:
            out["rejects_sample"] = self.rejects[:rejects]
        return out


#: progress(event, file report, position, total): event is "start", "chunk" or "end".
Progress = Callable[[str, FileReport, int, "int | None"], None]


# -- the run --------------------------------------------------------------------------------------


class _RejectSink:
    def __init__(self, path: Path | None, keep: int) -> None:
        self.path = path
        self.keep = keep
        self.kept: list[dict[str, Any]] = []
        self._fh = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def write(self, rejects: list[Reject]) -> None:
        if not rejects:
            return
        rows = [r.as_dict() for r in rejects]
        if self._fh is not None:
            self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        room = self.keep - len(self.kept)
        if room > 0:
            self.kept.extend(rows[:room])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Ingestor:
    """Runs sources into a store (see the module docstring).

    Args:
        store: any :class:`~kgrec.kg.store.GraphStore`.
        config: :class:`IngestConfig`.
        progress: optional callback, see :data:`Progress`.
    """

    def __init__(self, store: GraphStore, config: IngestConfig | None = None, progress: Progress | None = None) -> None:
        self.store = store
        self.config = config or IngestConfig()
        self.progress = progress
        self._known: dict[str, set[str]] = {}
        self._seen: dict[str, SeenKeys] = {}
        self._file_names: list[str] = []
        self._nodes: dict[str, list[pd.DataFrame]] = {}
        self._edges: dict[str, list[pd.DataFrame]] = {}
        self._pending_rows = 0

    # -- known ids ----------------------------------------------------------------------
    def known(self, kind: str) -> set[str]:
        """Ids of ``kind`` in the store at the start plus those loaded or created since."""
        if kind not in self._known:
            label, key = REFERENCE_LABELS[kind]
            keys = getattr(self.store, "node_keys", None)
            if keys is not None:
                values = keys(label)
            else:
                frame = self.store.nodes(label)
                values = frame[key] if key in frame.columns else pd.Series([], dtype=object)
            self._known[kind] = set(values.astype(str).tolist())
        return self._known[kind]

    def _store_relations(self) -> dict[str, str]:
        frame = self.store.nodes("KgRelation")
        if len(frame) == 0:
            return {}
        key = node_type("KgRelation").key
        names = frame["name"] if "name" in frame.columns else frame[key]
        register_relations(frame[key].astype(str))
        return dict(zip(names.astype(str), frame[key].astype(str)))

    # -- run -------------------------------------------------------------------------------
    def run(self, sources: Iterable[Source]) -> IngestReport:
        """Ingest ``sources`` (see the module docstring).

        The run holds the store's writer lock (:meth:`~kgrec.kg.store.GraphStore.writing`) and,
        with a ``state_dir``, that folder's, from start to end: a second run into the same
        embedded store or state folder waits for it, or fails with
        :class:`~kgrec.kg.files.StoreLockedError` naming the holder.
        """
        writing = getattr(self.store, "writing", None)  # duck-typed stores may have no lock
        with writing() if writing is not None else nullcontext(), _state_lock(self.config.state_dir):
            return self._run(sources)

    def _run(self, sources: Iterable[Source]) -> IngestReport:
        start = time.perf_counter()
        sources = sorted(sources, key=lambda s: KIND_ORDER.index(s.kind))
        cfg = self.config
        report = IngestReport()
        report.run_id = hashlib.sha256(json.dumps(
            {"v": INGEST_VERSION, "config": cfg.identity(), "sources": [s.identity() for s in sources]},
            sort_keys=True, default=str).encode()).hexdigest()[:20]
        skip = 0
        state = cfg.state_dir
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
            previous = _read_json(state / CHECKPOINT)
            if cfg.resume and previous.get("run_id") == report.run_id and previous.get("status") == "running":
                skip = int(previous.get("completed_flushes", 0))
            self._checkpoint(report.run_id, "running", skip)
            report.rejects_path = str(state / REJECTS)
        sink = _RejectSink(state / REJECTS if state is not None else None, cfg.keep_rejects)
        self._skip = skip
        self._report = report
        self._ctx = BuildContext(known=self.known, relations=self._store_relations(), link_by_id=cfg.link_by_id)
        report.counts_before = self.store.counts()
        try:
            for source in sources:
                self._run_source(source, report, sink)
            self._flush(report)
        finally:
            sink.close()
        report.rejects = sink.kept
        report.counts_after = self.store.counts()
        report.seconds = time.perf_counter() - start
        if state is not None:
            self._checkpoint(report.run_id, "complete", report.flushes)
            report.report_path = str(state / REPORT)
            _write_json(state / REPORT, report.as_dict(rejects=20))
        return report

    def _checkpoint(self, run_id: str, status: str, flushes: int) -> None:
        assert self.config.state_dir is not None
        _write_json(self.config.state_dir / CHECKPOINT,
                    {"run_id": run_id, "status": status, "completed_flushes": flushes, "time": time.time()})

    def _run_source(self, source: Source, report: IngestReport, sink: _RejectSink) -> None:
        fr = FileReport(file=source.name or "", kind=source.kind, format=source.format or "",
                        warnings=list(source.warnings))
        report.files.append(fr)
        self._file_names.append(fr.file)
        file_index = len(self._file_names) - 1
        started = time.perf_counter()
        if self.progress:
            self.progress("start", fr, 0, None)
        reader = source.reader(self.config.chunk_bytes, self.config.chunk_rows)
        chunks = iter(reader)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except SourceError as exc:
                fr.error = str(exc)
                break
            except (OSError, EOFError, zlib.error) as exc:  # e.g. a truncated gzip stream
                fr.error = f"reading stopped after row {fr.read}: {type(exc).__name__}: {exc}"
                break
            self._chunk(source, chunk, fr, file_index, sink)
            self._pending_rows += chunk.read
            if self._pending_rows >= self.config.flush_rows:
                self._flush(report)
            if self.progress:
                self.progress("chunk", fr, chunk.position, chunk.total)
        fr.warnings = list(dict.fromkeys([*getattr(reader, "warnings", []), *fr.warnings]))
        fr.seconds = time.perf_counter() - started
        if self.progress:
            self.progress("end", fr, 0, None)

    # -- one chunk ----------------------------------------------------------------------------
    def _chunk(self, source: Source, chunk: Chunk, fr: FileReport, file_index: int, sink: _RejectSink) -> None:
        schema = SCHEMAS[source.kind]
        rejects = list(chunk.rejects)
        for r in rejects:
            r.file = fr.file
        validated = validate_chunk(schema, chunk.frame, chunk.rows, chunk.lines, source.options, fr.file)
        fr.warnings.extend(w for w in validated.plan.warnings if w not in fr.warnings)
        rejects += validated.rejects
        clean = validated.clean
        clean, dangling, _ = self._references(schema, clean, fr.file, "reject")
        rejects += dangling
        clean, dups = self._duplicates(schema, clean, fr.file, file_index)
        rejects += dups
        clean, _, created = self._references(schema, clean, fr.file, "create")
        if len(clean) and source.kind in REFERENCE_LABELS:
            self.known(source.kind).update(clean[schema.key[0]].tolist())
        nodes, edges = build(source.kind, clean, self._ctx)
        for label, frame in created:
            nodes.setdefault(label, []).insert(0, frame)
        for label, frames in nodes.items():
            self._nodes.setdefault(label, []).extend(frames)
        for rel, frames in edges.items():
            self._edges.setdefault(rel, []).extend(frames)
        fr.read += chunk.read
        fr.loaded += len(clean)
        fr.rejected += len(rejects)
        for r in rejects:
            fr.reasons[r.reason] = fr.reasons.get(r.reason, 0) + 1
        if fr.read != fr.loaded + fr.rejected:  # pragma: no cover - an internal bug, never data
            raise AssertionError(f"{fr.file}: read {fr.read} != loaded {fr.loaded} + rejected {fr.rejected}")
        rejects.sort(key=lambda r: (r.row is None, r.row or 0))
        sink.write(rejects)

    def _references(self, schema: Any, clean: pd.DataFrame, file: str, policy: str) -> tuple[pd.DataFrame, list[Reject], list]:
        """Dangling references of the fields whose kind has ``policy``: rejected rows, or nodes to create.

        Run for "reject" before the duplicate check and for "create" after it, so
        that no node is created for a row that is not loaded.
        """
        rejects: list[Reject] = []
        created: list[tuple[str, pd.DataFrame]] = []
        for f in schema.fields:
            if f.ref is None or f.type == "path" or f.name not in clean.columns or not len(clean):
                continue
            if self.config.dangling[f.ref] != policy:
                continue
            values = clean[f.name]
            has = values.notna().to_numpy()
            known = self.known(f.ref)
            own = set(clean[schema.key[0]].tolist()) if f.ref == schema.kind else set()  # a category's parent
            unknown = has & ~_isin(values, known, own)
            if not unknown.any():
                continue
            if policy == "reject":
                label, key = REFERENCE_LABELS[f.ref]
                bad = clean[unknown]
                for row, line, v in zip(bad["_row"].tolist(), bad["_line"].tolist(), bad[f.name].tolist()):
                    rejects.append(Reject(file, int(row), f.name, "dangling",
                                          f"no {label} with {key} {v!r} (policy: reject)", str(v), int(line)))
                clean = clean[~unknown].reset_index(drop=True)
            else:
                ids = list(dict.fromkeys(values[unknown].tolist()))
                known.update(ids)
                created.append(created_nodes(f.ref, ids))
                self._report.created[f.ref] = self._report.created.get(f.ref, 0) + len(ids)
        return clean, rejects, created

    def _duplicates(self, schema: Any, clean: pd.DataFrame, file: str, file_index: int) -> tuple[pd.DataFrame, list[Reject]]:
        if not len(clean) or self.config.duplicates == "last":
            return clean, []
        keys = clean[list(schema.key)]
        hashes = key_hashes(keys)
        seen = self._seen.setdefault(schema.kind, SeenKeys())
        where = (np.int64(file_index) << np.int64(40)) | clean["_row"].to_numpy(dtype=np.int64)
        first = pd.Series(hashes).duplicated(keep="first").to_numpy()
        earlier = seen.lookup(hashes)
        dup = first | (earlier >= 0)
        rejects: list[Reject] = []
        if dup.any():
            local: dict[int, int] = {}
            for h, w, d in zip(hashes.tolist(), where.tolist(), dup.tolist()):
                if not d:
                    local.setdefault(h, w)
            for i in np.flatnonzero(dup).tolist():
                w = int(earlier[i]) if earlier[i] >= 0 else local[int(hashes[i])]
                fname, frow = self._file_names[w >> 40], w & ((1 << 40) - 1)
                key = ", ".join(f"{k}={v!r}" for k, v in zip(schema.key, keys.iloc[i].tolist()))
                rejects.append(Reject(file, int(clean["_row"].iat[i]), schema.key[0], "duplicate",
                                      f"duplicate of {fname} row {frow} ({key})", None, int(clean["_line"].iat[i])))
            clean = clean[~dup].reset_index(drop=True)
            hashes, where = hashes[~dup], where[~dup]
        seen.add(hashes, where)
        return clean, rejects

    # -- writing ---------------------------------------------------------------------------------
    def _flush(self, report: IngestReport) -> None:
        if not self._nodes and not self._edges and self._pending_rows == 0:
            return
        report.flushes += 1
        nodes, edges = self._nodes, self._edges
        self._nodes, self._edges, self._pending_rows = {}, {}, 0
        if report.flushes <= self._skip:
            report.resumed_flushes += 1
            return
        labels = [n for n in NODE_ORDER if n in nodes] + [n for n in nodes if n not in NODE_ORDER]
        for label in labels:
            key = [node_type(label).key]
            for frame in _groups(nodes[label]):
                frame = frame.drop_duplicates(key, keep="last")
                report.written[label] = report.written.get(label, 0) + self.store.upsert_nodes(label, frame)
        for rel in sorted(edges):
            # repeated edge identities need no care: both stores keep the last one
            for frame in _groups(edges[rel]):
                report.written[rel] = report.written.get(rel, 0) + self.store.upsert_edges(rel, frame)
        if self.config.state_dir is not None:
            self._checkpoint(report.run_id, "running", report.flushes)


class SeenKeys:
    """Key hashes seen so far in a run, with where each was first seen (file index << 40 | row).

    Sorted numpy arrays in a few levels (merged when a level outgrows half of the
    one before), so a lookup is a handful of binary searches and a key costs 16 bytes.
    """

    def __init__(self) -> None:
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Where each hash was first seen, or -1."""
        out = np.full(len(hashes), -1, dtype=np.int64)
        for keys, where in self.levels:
            at = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
            hit = (keys[at] == hashes) & (out < 0)
            out[hit] = where[at[hit]]
        return out

    def add(self, hashes: np.ndarray, where: np.ndarray) -> None:
        """Record new (distinct, unseen) hashes."""
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.levels.append((hashes[order], where[order]))
        while len(self.levels) > 1 and 2 * len(self.levels[-1][0]) >= len(self.levels[-2][0]):
            (k2, w2), (k1, w1) = self.levels.pop(), self.levels.pop()
            keys, where_ = np.concatenate([k1, k2]), np.concatenate([w1, w2])
            order = np.argsort(keys, kind="stable")
            self.levels.append((keys[order], where_[order]))


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def key_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash per row of ``frame`` (equal rows, equal hashes; valid within one process).

    Strings are hashed once per distinct value (Python's ``hash``), integers by
    value; columns are combined with splitmix64. Used for duplicate detection: a
    64-bit collision would reject a row as a duplicate; with ``n`` distinct keys
    in a run the chance of any is about ``n**2 / 2**65`` (3e-10 for a million keys).
    """
    n = len(frame)
    out = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in frame.columns:
            s = frame[column]
            if pd.api.types.is_integer_dtype(s.dtype) and not s.isna().any():
                v = s.to_numpy(dtype=np.int64).view(np.uint64)
            else:
                codes, uniques = pd.factorize(s)
                per = np.fromiter((hash(u) for u in uniques.tolist()), dtype=np.int64, count=len(uniques))
                v = np.append(per, np.int64(0x5EED)).view(np.uint64)[codes]
            out = _splitmix(out * np.uint64(0x100000001B3) + _splitmix(v))
    return out


def _isin(values: pd.Series, known: set[str], also: set[str]) -> np.ndarray:
    """``values.isin(known | also)``, checking each distinct value once."""
    codes, uniques = pd.factorize(values)
    hit = np.fromiter((u in known or u in also for u in uniques.tolist()), dtype=bool, count=len(uniques))
    return np.where(codes >= 0, hit[np.maximum(codes, 0)] if len(hit) else False, False)


def _groups(frames: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Concatenate consecutive frames with the same columns (an absent column is never padded)."""
    group: list[pd.DataFrame] = []
    columns: tuple[str, ...] | None = None
    for frame in frames:
        cols = tuple(frame.columns)
        if columns is not None and cols != columns:
            yield pd.concat(group, ignore_index=True) if len(group) > 1 else group[0]
            group = []
        group.append(frame)
        columns = cols
    if group:
        yield pd.concat(group, ignore_index=True) if len(group) > 1 else group[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def _state_lock(state_dir: Path | None) -> AbstractContextManager[Any]:
    """The writer lock of a state folder (checkpoint and reports), waiting as the store's does."""
    if state_dir is None:
        return nullcontext()
    return WriterLock(state_dir, timeout=STATE_LOCK_TIMEOUT, on_acquire=lambda: remove_stale_temporaries(state_dir))


def ingest(store: GraphStore, sources: Iterable[Source], config: IngestConfig | None = None,
           progress: Progress | None = None) -> IngestReport:
    """Run ``sources`` into ``store`` (see :class:`Ingestor`)."""
    return Ingestor(store, config, progress).run(sources)
