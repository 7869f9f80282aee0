"""Chunked readers for CSV/TSV, JSONL and Parquet files (and in-memory frames).

Every reader yields :class:`Chunk` objects: a frame of the rows it could parse
(raw values, column names as in the file) with their row numbers, plus a
:class:`Reject` for every row it could not parse. A *row* is one record of the
file, numbered from 1: a CSV data record (the header is not a row; a quoted
field may span lines, so rows and lines can differ, and rejects carry the line
as well), a JSONL line, a Parquet row. ``chunk.read == len(chunk.frame) +
len(chunk.rejects)``: a reader never drops a row without saying so.

What a reader rejects (``Reject.reason``):

* ``bad_encoding``: the line is not valid in the source's encoding (UTF-8 by
  default); the line is reported, never decoded with replacement characters;
* ``malformed``: the CSV tokenizer failed (a character after a closing quote, an
  unterminated quote, a carriage return inside an unquoted field). When the failing
  record runs over several lines (a quote opened a field that never closed properly),
  only its first line is rejected and reading goes on with the next line, so a stray
  quote costs one row, not the valid rows after it;
* ``field_count``: a CSV record with more or fewer fields than the header;
* ``empty_line``: a blank line (CSV with several columns, JSONL);
* ``malformed_json`` / ``not_object``: a JSONL line that is not JSON / not an object;
* ``unreadable``: Parquet rows of a row group that cannot be decoded.

Files are read in blocks of about ``chunk_bytes`` (Parquet: ``chunk_rows``), so
files larger than memory stream. A CSV block whose rows are all simple (no
quote character, no stray carriage return, the right number of separators on
every line, valid encoding) goes through pandas' C parser; any other block
through Python's :mod:`csv` module line by line, which is exact. Gzip files
(``*.gz``) are read transparently.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

BOM = codecs.BOM_UTF8
#: A quoted CSV field may run over at most this many lines before its opening
#: line is rejected as an unterminated quote (bounds memory and re-parsing).
MAX_RECORD_LINES = 10_000
VALUE_EXCERPT = 120


class SourceError(ValueError):
    """A file that cannot be read at all (missing, no header, not Parquet...)."""


class _NaNLiteral:
    """A JSON ``NaN`` literal, kept apart from ``null`` (a missing value).

    Python's ``json`` turns ``NaN`` into a float NaN, which pandas cannot tell from a
    null; the JSONL reader yields this marker instead, so validation rejects it as
    ``not_finite`` where a number is expected (as ``Infinity`` and the CSV text ``NaN`` are).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "NaN"

    def __float__(self) -> float:
        return float("nan")


#: The one :class:`_NaNLiteral`: what the JSONL reader yields for a ``NaN`` literal.
NAN_LITERAL = _NaNLiteral()


def _json_constant(name: str) -> Any:
    return NAN_LITERAL if name == "NaN" else float(name)


@dataclass
class Reject:
    """One input row that was not loaded, and why."""

    file: str
    row: int | None
    field: str | None
    reason: str
    message: str
    value: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file, "row": self.row, "line": self.line, "field": self.field,
            "reason": self.reason, "message": self.message, "value": self.value,
        }


@dataclass
class Chunk:
    """A block of parsed rows.

    Attributes:
        frame: parsed rows, raw values, columns as named in the file.
        rows: 1-based row number of each frame row (int64).
        rejects: rows of this block that could not be parsed.
        lines: first line of each frame row (CSV/JSONL), or None.
        position: bytes (or rows, for Parquet/frames) consumed so far, for progress.
        total: size in the same unit, or None.
    """

    frame: pd.DataFrame
    rows: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    lines: np.ndarray | None = None
    position: int = 0
    total: int | None = None

    @property
    def read(self) -> int:
        return len(self.frame) + len(self.rejects)


def excerpt(value: object) -> str:
    """A short printable rendering of a raw value for reject reports."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, str):
        text = value
    else:
        text = repr(value)
    return text if len(text) <= VALUE_EXCERPT else text[: VALUE_EXCERPT - 3] + "..."


def _open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(stream to read, underlying file for the byte position)."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw), raw  # type: ignore[return-value]
    return raw, raw


# -- CSV / TSV -------------------------------------------------------------------------


@dataclass
class CsvDialect:
    """How a delimited file is written.

    Attributes:
        sep: one-character field separator (``","``; ``"\\t"`` for TSV).
        quote: quote character, or None for files without quoting (RecBole atomic files).
        encoding: an ASCII-compatible encoding (``utf-8``, ``latin-1``, ``cp1252``...).
        header: turns the header's column names into the names used for mapping
            (RecBole: ``"item_id:token"`` -> ``"item_id"``).
    """

    sep: str = ","
    quote: str | None = '"'
    encoding: str = "utf-8"
    header: Callable[[list[str]], list[str]] | None = None

    def __post_init__(self) -> None:
        if len(self.sep) != 1 or self.sep in "\r\n":
            raise ValueError(f"separator must be one character other than a newline, got {self.sep!r}")
        if self.quote is not None and (len(self.quote) != 1 or self.quote == self.sep):
            raise ValueError(f"quote must be one character other than the separator, got {self.quote!r}")
        codecs.lookup(self.encoding)


def header_names(names: list[str]) -> tuple[list[str], list[str]]:
    """Clean column names: strip, name empty ones ``column_<i>``, number repeats ``name__2``.

    Returns the names and a list of warnings.
    """
    out: list[str] = []
    warnings: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(names, start=1):
        name = raw.strip()
        if not name:
            name = f"column_{i}"
            warnings.append(f"column {i} has no name: called {name!r}")
        if name in seen:
            seen[name] += 1
            new = f"{name}__{seen[name]}"
            warnings.append(f"column name {name!r} repeats: column {i} called {new!r}")
            name = new
        else:
            seen[name] = 1
        out.append(name)
    return out, warnings


class CsvReader:
    """Stream a delimited file as :class:`Chunk` objects (see the module docstring).

    Args:
        path: the file (``.gz`` is decompressed).
        dialect: separator, quoting, encoding, header transform.
        chunk_bytes: approximate bytes per block.
    """

    def __init__(self, path: str | os.PathLike[str], dialect: CsvDialect | None = None, chunk_bytes: int = 16 << 20) -> None:
        self.path = Path(path)
        self.dialect = dialect or CsvDialect()
        self.chunk_bytes = max(int(chunk_bytes), 1)
        self.columns: list[str] = []
        self.warnings: list[str] = []
        self.name = str(path)
        self._fast_ok = self.dialect.encoding.replace("-", "").replace("_", "").lower() in {"utf8", "ascii", "latin1", "iso88591", "cp1252"}

    def __iter__(self) -> Iterator[Chunk]:
        if not self.path.exists():
            raise SourceError(f"{self.path}: file not found")
        stream, raw = _open_binary(self.path)
        total = os.path.getsize(self.path)
        try:
            first = stream.readline()
            if first.startswith(BOM):
                first = first[len(BOM):]
            if first == b"":
                self.warnings.append("empty file: no header, no rows")
                return
            if not first.strip():
                raise SourceError(f"{self.path}: the first line (the header) is blank")
            try:
                header_text = first.decode(self.dialect.encoding)
            except UnicodeDecodeError as exc:
                raise SourceError(f"{self.path}: header line is not valid {self.dialect.encoding}: {exc.reason}") from None
            try:
                names = next(csv.reader([header_text], **self._csv_kwargs()))
            except (csv.Error, StopIteration) as exc:
                raise SourceError(f"{self.path}: cannot parse the header line: {exc}") from None
            if self.dialect.header is not None:
                names = self.dialect.header(names)
            self.columns, self.warnings = header_names(names)
            state = _CsvState(line=1, row=0)
            pending: list[tuple[int, str]] = []
            while True:
                lines = stream.readlines(self.chunk_bytes)
                at_eof = not lines
                if at_eof and not pending:
                    break
                chunk = self._block(lines, pending, state, at_eof)
                pending = chunk.pop("pending")
                yield Chunk(
                    frame=chunk["frame"], rows=chunk["rows"], rejects=chunk["rejects"], lines=chunk["lines"],
                    position=raw.tell(), total=total,
                )
                if at_eof:
                    break
        finally:
            stream.close()
            if raw is not stream:
                raw.close()

    def _csv_kwargs(self) -> dict[str, Any]:
        d = self.dialect
        if d.quote is None:
            return {"delimiter": d.sep, "quoting": csv.QUOTE_NONE, "strict": True}
        return {"delimiter": d.sep, "quotechar": d.quote, "doublequote": True, "strict": True}

    # -- one block ---------------------------------------------------------------------
    def _block(self, lines: list[bytes], pending: list[tuple[int, str]], state: _CsvState, at_eof: bool) -> dict:
        if not pending and lines:
            fast = self._fast(lines, state)
            if fast is not None:
                return fast
        return self._slow(lines, pending, state, at_eof)

    def _fast(self, lines: list[bytes], state: _CsvState) -> dict | None:
        if not self._fast_ok:
            return None
        block = b"".join(lines)
        d = self.dialect
        if d.quote is not None and d.quote.encode() in block:
            return None
        if block.count(b"\r") != block.count(b"\r\n"):
            return None
        try:
            text = block.decode(d.encoding)
        except UnicodeDecodeError:
            return None
        n = len(lines)
        ncols = len(self.columns)
        data = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(data == 10)
        if len(ends) < n:  # last line without a newline
            ends = np.append(ends, len(data))
        seps = np.flatnonzero(data == ord(d.sep))
        per_line = np.diff(np.searchsorted(seps, ends), prepend=0)
        if len(per_line) != n or (per_line != ncols - 1).any():
            return None
        starts = np.concatenate([[0], ends[:-1] + 1])
        length = ends - starts
        if (length == 0).any() or ((length == 1) & (data[np.minimum(starts, len(data) - 1)] == 13)).any():
            return None  # a blank line: the exact path reports it as such
        utf8 = d.encoding.replace("-", "").replace("_", "").lower() in ("utf8", "ascii")
        frame = _arrow_csv(block if utf8 else text.encode("utf-8"), self.columns, d.sep)
        if frame is None:
            return None
        if len(frame) != n:
            return None
        rows = np.arange(state.row + 1, state.row + n + 1, dtype=np.int64)
        line_numbers = np.arange(state.line + 1, state.line + n + 1, dtype=np.int64)
        state.row += n
        state.line += n
        return {"frame": frame, "rows": rows, "rejects": [], "lines": line_numbers, "pending": []}

    def _slow(self, lines: list[bytes], pending: list[tuple[int, str]], state: _CsvState, at_eof: bool) -> dict:
        """Exact parsing: decode each line, tokenise with :mod:`csv`, check the field count."""
        records: list[list[str]] = []
        rows: list[int] = []
        starts: list[int] = []
        rejects: list[Reject] = []
        run: list[tuple[int, str]] = list(pending)
        out_pending: list[tuple[int, str]] = []
        for raw in lines:
            state.line += 1
            try:
                run.append((state.line, raw.decode(self.dialect.encoding)))
            except UnicodeDecodeError as exc:
                # a bad line ends the run: parse what came before, then reject it
                self._parse_run(run, True, records, rows, starts, rejects, state)
                run = []
                state.row += 1
                rejects.append(Reject(
                    self.name, state.row, None, "bad_encoding",
                    f"not valid {self.dialect.encoding} at byte {exc.start} of the line: {exc.reason}",
                    excerpt(raw.rstrip(b"\r\n")), state.line,
                ))
        if run:
            out_pending = self._parse_run(run, at_eof, records, rows, starts, rejects, state)
        frame = pd.DataFrame(records, columns=self.columns, dtype=str) if records else _empty(self.columns)
        return {
            "frame": frame, "rows": np.asarray(rows, dtype=np.int64), "rejects": rejects,
            "lines": np.asarray(starts, dtype=np.int64), "pending": out_pending,
        }

    def _parse_run(
        self, run: list[tuple[int, str]], final: bool, records: list[list[str]], rows: list[int],
        starts: list[int], rejects: list[Reject], state: _CsvState,
    ) -> list[tuple[int, str]]:
        """Tokenise consecutive decoded lines; return the lines of an unfinished last record."""
        with _field_size_limit(sys.maxsize):
            return self._tokenise(run, final, records, rows, starts, rejects, state)

    def _tokenise(
        self, run: list[tuple[int, str]], final: bool, records: list[list[str]], rows: list[int],
        starts: list[int], rejects: list[Reject], state: _CsvState,
    ) -> list[tuple[int, str]]:
        ncols = len(self.columns)
        kwargs = self._csv_kwargs()
        begin = 0
        while begin < len(run):
            reader = csv.reader((text for _, text in run[begin:]), **kwargs)
            consumed = 0
            restart = None
            while True:
                start = begin + consumed
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    end = begin + reader.line_num  # lines consumed so far
                    span = end - start
                    unterminated = start < len(run) and end >= len(run) and "unexpected end of data" in str(exc)
                    if unterminated and not final and span < MAX_RECORD_LINES:
                        return run[start:]  # the record may go on in the next block
                    if span > 1:
                        # A quote opened a field that ran over the next lines (a stray quote, or a
                        # quoted field never closed): reject the line that opened it and read on from
                        # the next line, so the valid rows after it are not swallowed into this reject.
                        state.row += 1
                        why = ("unterminated quoted field" if unterminated
                               else f"CSV: {exc} (a quoted field opened here runs over {span} lines)")
                        rejects.append(Reject(
                            self.name, state.row, None, "malformed", why, excerpt(run[start][1].rstrip("\r\n")), run[start][0],
                        ))
                        restart = start + 1
                        break
                    state.row += 1
                    rejects.append(Reject(
                        self.name, state.row, None, "malformed", f"CSV: {exc}",
                        excerpt("".join(t for _, t in run[start:end]).rstrip("\r\n")), run[min(start, len(run) - 1)][0],
                    ))
                    consumed = reader.line_num
                    continue
                end = begin + reader.line_num
                consumed = reader.line_num
                state.row += 1
                line_no = run[start][0]
                if not fields:
                    rejects.append(Reject(self.name, state.row, None, "empty_line", "blank line", "", line_no))
                elif len(fields) != ncols:
                    rejects.append(Reject(
                        self.name, state.row, None, "field_count",
                        f"expected {ncols} fields, got {len(fields)}",
                        excerpt("".join(t for _, t in run[start:end]).rstrip("\r\n")), line_no,
                    ))
                else:
                    records.append(fields)
                    rows.append(state.row)
                    starts.append(line_no)
            if restart is None:
                break
            begin = restart
        return []


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    """Lift :mod:`csv`'s field size limit (128 KiB by default) while a block is parsed.

    A record's size is bounded by the block and :data:`MAX_RECORD_LINES` already; with the
    default limit a long quoted field (a product description) was rejected, and its
    continuation lines were read as rows of their own.
    """
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _arrow_csv(block: bytes, columns: list[str], sep: str) -> pd.DataFrame | None:
    """Parse a block already known to be simple (no quotes, right field counts) with pyarrow."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(
            io.BytesIO(block),
            read_options=pcsv.ReadOptions(column_names=[f"c{i}" for i in range(len(columns))], use_threads=False,
                                          block_size=max(len(block) + 1, 1 << 20)),
            parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False, double_quote=False,
                                            escape_char=False, newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={f"c{i}": pa.string() for i in range(len(columns))},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, ValueError):
        return None
    frame = table.to_pandas()
    frame.columns = columns
    return frame


@dataclass
class _CsvState:
    line: int  # last physical line consumed (header = line 1)
    row: int  # last row number given out


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=str) for c in columns})


# -- JSONL ------------------------------------------------------------------------------


class JsonlReader:
    """Stream a JSON-lines file (one object a line; ``.gz`` decompressed) as chunks."""

    def __init__(self, path: str | os.PathLike[str], encoding: str = "utf-8", chunk_bytes: int = 16 << 20) -> None:
        self.path = Path(path)
        self.encoding = encoding
        codecs.lookup(encoding)
        self.chunk_bytes = max(int(chunk_bytes), 1)
        self.name = str(path)
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[Chunk]:
        if not self.path.exists():
            raise SourceError(f"{self.path}: file not found")
        stream, raw = _open_binary(self.path)
        total = os.path.getsize(self.path)
        row = 0
        decoder = json.JSONDecoder(parse_constant=_json_constant)
        try:
            while True:
                lines = stream.readlines(self.chunk_bytes)
                if not lines:
                    break
                records: list[dict] = []
                rows: list[int] = []
                rejects: list[Reject] = []
                for rawline in lines:
                    row += 1
                    if row == 1 and rawline.startswith(BOM):
                        rawline = rawline[len(BOM):]
                    body = rawline.rstrip(b"\r\n")
                    try:
                        text = body.decode(self.encoding)
                    except UnicodeDecodeError as exc:
                        rejects.append(Reject(self.name, row, None, "bad_encoding",
                                              f"not valid {self.encoding} at byte {exc.start}: {exc.reason}",
                                              excerpt(body), row))
                        continue
                    if not text.strip():
                        rejects.append(Reject(self.name, row, None, "empty_line", "blank line", "", row))
                        continue
                    try:
                        obj, end = decoder.raw_decode(text, _skip_ws(text))
                        if text[end:].strip():
                            raise json.JSONDecodeError("extra data after the JSON value", text, end)
                    except json.JSONDecodeError as exc:
                        rejects.append(Reject(self.name, row, None, "malformed_json",
                                              f"{exc.msg} at column {exc.colno}", excerpt(text), row))
                        continue
                    except RecursionError:
                        rejects.append(Reject(self.name, row, None, "malformed_json", "nested too deeply", excerpt(text), row))
                        continue
                    if not isinstance(obj, dict):
                        rejects.append(Reject(self.name, row, None, "not_object",
                                              f"expected a JSON object, got {type(obj).__name__}", excerpt(text), row))
                        continue
                    records.append(obj)
                    rows.append(row)
                frame = pd.DataFrame(records) if records else pd.DataFrame(index=range(0))
                if records and len(frame.columns) and not all(isinstance(c, str) for c in frame.columns):
                    frame.columns = [str(c) for c in frame.columns]
                r = np.asarray(rows, dtype=np.int64)
                yield Chunk(frame=frame, rows=r, rejects=rejects, lines=r, position=raw.tell(), total=total)
        finally:
            stream.close()
            if raw is not stream:
                raw.close()


def _skip_ws(text: str) -> int:
    return len(text) - len(text.lstrip())


# -- Parquet --------------------------------------------------------------------------------


class ParquetReader:
    """Stream a Parquet file by record batches of ``chunk_rows`` rows."""

    def __init__(self, path: str | os.PathLike[str], chunk_rows: int = 250_000) -> None:
        self.path = Path(path)
        self.chunk_rows = max(int(chunk_rows), 1)
        self.name = str(path)
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        if not self.path.exists():
            raise SourceError(f"{self.path}: file not found")
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:
            raise SourceError(f"{self.path}: not a readable Parquet file: {exc}") from None
        total = pf.metadata.num_rows
        done = 0
        for group in range(pf.num_row_groups):
            size = pf.metadata.row_group(group).num_rows
            try:
                batches = list(pf.iter_batches(batch_size=self.chunk_rows, row_groups=[group]))
            except Exception as exc:
                rejects = [Reject(self.name, done + i + 1, None, "unreadable", f"row group {group}: {exc}")
                           for i in range(size)]
                done += size
                yield Chunk(frame=pd.DataFrame(index=range(0)), rows=np.zeros(0, np.int64), rejects=rejects,
                            position=done, total=total)
                continue
            for batch in batches:
                frame = _arrow_to_pandas(batch)
                rows = np.arange(done + 1, done + len(frame) + 1, dtype=np.int64)
                done += len(frame)
                yield Chunk(frame=frame, rows=rows, position=done, total=total)


def _arrow_to_pandas(batch: Any) -> pd.DataFrame:
    frame = batch.to_pandas()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return frame


# -- in-memory frames ------------------------------------------------------------------------


class FrameReader:
    """Chunks of an in-memory frame (row ``i`` of the frame is row ``i + 1``)."""

    def __init__(self, frame: pd.DataFrame, name: str, chunk_rows: int = 250_000) -> None:
        self.frame = frame.reset_index(drop=True)
        self.name = name
        self.chunk_rows = max(int(chunk_rows), 1)
        self.warnings: list[str] = []

    def __iter__(self) -> Iterator[Chunk]:
        n = len(self.frame)
        for start in range(0, n, self.chunk_rows):
            part = self.frame.iloc[start : start + self.chunk_rows].reset_index(drop=True)
            yield Chunk(frame=part, rows=np.arange(start + 1, start + len(part) + 1, dtype=np.int64),
                        position=start + len(part), total=n)


# -- formats -------------------------------------------------------------------------------

FORMATS = ("csv", "tsv", "jsonl", "parquet")


def detect_format(path: Path) -> str:
    """``csv`` / ``tsv`` / ``jsonl`` / ``parquet`` from the file name (``.gz`` looked through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".csv",):
        return "csv"
    if ext in (".tsv", ".tab", ".txt"):
        return "tsv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise SourceError(f"{path}: cannot tell the format from the name; give it (csv, tsv, jsonl, parquet)")
