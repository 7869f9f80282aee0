"""Fuzz target: arbitrary CSV and JSONL bytes through readers, validation and the pipeline into an
embedded store.

Whatever the bytes, the run ends in loaded rows plus rejects, or a clean file error
(a one-line message, the :class:`~kgrec.ingest.readers.SourceError` kind): never an exception
out of :meth:`Ingestor.run`, ``read == loaded + rejected`` always, every reject names a
known reason and a row of the file, and the store holds exactly what was loaded (one node
per loaded user or product, one edge per loaded interaction) and stays readable.

Inputs mix raw random bytes with near-valid records built from tokens that have broken
the readers before (quotes, carriage returns, NaN/inf, huge numbers, control characters,
blank events, invalid UTF-8). ``KGREC_HYPOTHESIS_EXAMPLES`` raises the example count for a
deeper search (default 40 per format: a few seconds).
"""
from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.schema import EVENT_TYPES

SETTINGS = settings(
    max_examples=int(os.environ.get("KGREC_HYPOTHESIS_EXAMPLES", "40")), deadline=timedelta(seconds=10), database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: every reason a reader or the validation may give (docs/ingest.md)
REASONS = {
    "bad_encoding", "malformed", "field_count", "empty_line", "malformed_json", "not_object", "unreadable", "missing",
    "not_id", "not_text", "not_number", "not_finite", "not_integer", "out_of_range", "not_timestamp", "unknown_event",
    "bad_path", "no_order", "dangling", "duplicate",
}
#: the columns of each kind's records, and values that are usually valid in them
FIELDS = {
    "interaction": ["user_id", "product_id", "event", "order", "timestamp", "weight"],
    "product": ["product_id", "title", "brand", "category_path", "category_id", "price"],
    "user": ["user_id"],
}
GOOD = {
    "user_id": ["u1", "u2", "u3", " u1 "], "product_id": ["p1", "p2", "P00"], "event": ["purchase", "view", " Cart ", ""],
    "order": ["0", "1", "2", "7"], "timestamp": ["1700000000", "2024-01-01T00:00:00Z", "1700000000.5"],
    "weight": ["1", "0.5"], "title": ["Drill", "Saw, red", "Mug"], "brand": ["Acme", "Bolt", ""],
    "category_path": ["Tools > Power", "Tools", ""], "category_id": ["c1", ""], "price": ["9.99", "12"],
}
EXTRA = ["extra", "attributes", "Preis (EUR)", "source"]
TOKENS = ["", " ", "u1", "p1", "purchase", "teleport", "0", "-1", "2.5", "1e400", "-1e400", "1e300", "9.3e15", "nan",
          "NaN", "inf", "-inf", "Infinity", "2024-13-45T99:00", '"', '""', 'a"b', '"quoted, with comma"', '"two\nlines"',
          "\r", "a\rb", "\x00", "\x1b[2J", "é", "🙂", "Tools > Power", '["A", "B"]', "[", "x" * 300]
KINDS = ["interaction", "product", "user"]


def value(draw, column: str) -> str:
    if column in GOOD and draw(st.integers(0, 9)) < 7:
        return draw(st.sampled_from(GOOD[column]))
    return draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)))


@st.composite
def csv_bytes(draw, kind: str) -> bytes:
    fields = draw(st.permutations(FIELDS[kind]))
    header = fields[: max(1, len(fields) - draw(st.sampled_from([0, 0, 0, 1, 2, len(fields)])))]
    header += draw(st.lists(st.one_of(st.sampled_from(EXTRA), st.text(max_size=4)), max_size=2))
    lines = [",".join(header)]
    for _ in range(draw(st.integers(0, 16))):
        row = [value(draw, c) for c in header]
        width = draw(st.sampled_from([len(row)] * 6 + [len(row) + 1, len(row) - 1]))
        lines.append(",".join((row + ["x"])[:width]))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    data = text.encode("utf-8")
    if draw(st.integers(0, 3)) == 0:  # splice raw bytes somewhere: bad encodings, stray separators, NULs
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=24)) + data[at:]
    return data


scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from(TOKENS), st.text(max_size=6))
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                          max_leaves=6)


@st.composite
def jsonl_bytes(draw, kind: str) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 7))
        if choice <= 5:  # an object, maybe with NaN / Infinity literals (json.dumps writes them)
            columns = draw(st.permutations(FIELDS[kind] + EXTRA))[: draw(st.integers(0, 6))]
            obj = {c: (value(draw, c) if draw(st.booleans()) else draw(json_value)) for c in columns}
            lines.append(json.dumps(obj).encode())
        elif choice == 6:
            lines.append(json.dumps(draw(json_value)).encode())  # a JSON value that may not be an object
        else:
            lines.append(draw(st.binary(max_size=30)).replace(b"\n", b" "))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


def check_run(data: bytes, fmt: str, kind: str, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input.{fmt}"
        path.write_bytes(data)
        store = EmbeddedStore(Path(tmp) / "store")
        config = IngestConfig(chunk_bytes=chunk, dangling={"product": "create"})
        report = Ingestor(store, config).run([Source(kind, path=path, format=fmt)])  # never raises
        (fr,) = report.files
        assert fr.read == fr.loaded + fr.rejected and report.read == report.loaded + report.rejected
        if fr.error is not None:
            assert isinstance(fr.error, str) and "\n" not in fr.error.strip() and "Traceback" not in fr.error
        rows = [r["row"] for r in report.rejects]
        assert len(rows) == len(set(rows)) == fr.rejected
        assert all(r["reason"] in REASONS and r["file"] == str(path) for r in report.rejects)
        assert all(row is not None and 1 <= row <= fr.read for row in rows)
        if fmt == "jsonl" and fr.error is None:  # a JSONL row is a line (the last one may lack its newline)
            assert fr.read == data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        if fmt == "csv" and fr.error is None:  # a CSV row is a record of one or more lines after the header
            lines = data.split(b"\n")
            assert fr.read <= max(len(lines) - (2 if lines[-1] == b"" else 1), 0)
        counts = EmbeddedStore(Path(tmp) / "store").counts()  # a fresh reader: the tables are whole
        if kind == "interaction":
            assert sum(counts[rel] for rel in set(EVENT_TYPES.values())) == fr.loaded
        elif kind == "user":
            assert counts["User"] == fr.loaded
        else:
            assert counts["Product"] == fr.loaded


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(KINDS), chunk=st.integers(1, 400))
def test_any_csv_bytes_end_in_rows_and_rejects(data, kind, chunk):
    check_run(data.draw(csv_bytes(kind)), "csv", kind, chunk)


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(KINDS), chunk=st.integers(1, 400))
def test_any_jsonl_bytes_end_in_rows_and_rejects(data, kind, chunk):
    check_run(data.draw(jsonl_bytes(kind)), "jsonl", kind, chunk)


@SETTINGS
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["csv", "jsonl"]), kind=st.sampled_from(KINDS))
def test_raw_random_bytes_end_in_rows_and_rejects(data, fmt, kind):
    check_run(data, fmt, kind, 1 << 20)
