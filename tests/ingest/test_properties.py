"""Property-based tests: malformed input gives validation errors only, never a crash or a lost row."""
from __future__ import annotations

import csv
import io
import json
import math
import os

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgrec.ingest.load import CollectingStore
from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.ingest.readers import CsvReader, JsonlReader
from kgrec.ingest.schemas import SCHEMAS
from kgrec.ingest.validate import SourceOptions, validate_chunk
from kgrec.kg.embedded import EmbeddedStore

#: KGREC_HYPOTHESIS_EXAMPLES=2000 for a deeper (slower) search than the default 60 examples.
SETTINGS = settings(
    max_examples=int(os.environ.get("KGREC_HYPOTHESIS_EXAMPLES", "60")), deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PRODUCTS = [f"P{i}" for i in range(5)]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)

good_row = st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(PRODUCTS),
                     st.sampled_from(["purchase", "view", "cart", "rating", " Purchase "]), st.integers(0, 6))

#: malformed rows and the reason they must be rejected with (None: anything, or loaded)
BAD_ROWS = {
    "extra": (lambda g: f"{g[0]},{g[1]},{g[2]},{g[3]},x".encode(), "field_count"),
    "short": (lambda g: f"{g[0]},{g[1]},{g[2]}".encode(), "field_count"),
    "blank": (lambda g: b"", "empty_line"),
    "encoding": (lambda g: b"\xff" + f"{g[0]},{g[1]},{g[2]},{g[3]}".encode(), "bad_encoding"),
    "quote": (lambda g: f'{g[0]},"{g[1]}"x,{g[2]},{g[3]}'.encode(), "malformed"),
    "unterminated": (lambda g: f'{g[0]},"{g[1]},{g[2]},{g[3]}'.encode(), "malformed"),
    "event": (lambda g: f"{g[0]},{g[1]},teleport,{g[3]}".encode(), "unknown_event"),
    "order": (lambda g: f"{g[0]},{g[1]},{g[2]},{g[3]}.5".encode(), "not_integer"),
    "word": (lambda g: f"{g[0]},{g[1]},{g[2]},seven".encode(), "not_integer"),
    "dangling": (lambda g: f"{g[0]},PX,{g[2]},{g[3]}".encode(), "dangling"),
    "control": (lambda g: f"u\x02,{g[1]},{g[2]},{g[3]}".encode(), "not_id"),
    "empty_id": (lambda g: f",{g[1]},{g[2]},{g[3]}".encode(), "missing"),
    "cr": (lambda g: f"{g[0]},{g[1]}\r{g[2]},{g[3]}".encode(), "malformed"),
}
row = st.one_of(
    good_row.map(lambda g: ("good", g)),
    st.tuples(st.sampled_from(sorted(BAD_ROWS)), good_row),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b).map(lambda b: ("random", b)),
)


def _products() -> Source:
    return Source("product", frame=pd.DataFrame({"product_id": PRODUCTS}))


@SETTINGS
@given(rows=st.lists(row, max_size=40), chunk=st.integers(1, 300), crlf=st.booleans())
def test_csv_rows_are_loaded_or_rejected_exactly(tmp_path_factory, rows, chunk, crlf):
    path = tmp_path_factory.mktemp("csv") / "interactions.csv"
    eol = b"\r\n" if crlf else b"\n"
    lines, expected = [], {}
    seen_keys = set()
    for i, (kind, payload) in enumerate(rows, start=1):
        if kind == "good":
            lines.append(",".join(map(str, payload)).encode())
            key = (payload[0], payload[1], payload[2].strip().lower(), payload[3])
            expected[i] = "duplicate" if key in seen_keys else "loaded"
            seen_keys.add(key)
        elif kind == "random":
            lines.append(payload.replace(b"\r", b""))
            expected[i] = None
        else:
            make, reason = BAD_ROWS[kind]
            lines.append(make(payload))
            expected[i] = reason
    path.write_bytes(b"user_id,product_id,event,order" + eol + b"".join(x + eol for x in lines))
    report = Ingestor(CollectingStore(), IngestConfig(chunk_bytes=chunk)).run(  # type: ignore[arg-type]
        [_products(), Source("interaction", path=path)])
    f = report.files[1]
    if any(k == "random" for k, _ in rows) or any(k == "unterminated" for k, _ in rows):
        # random bytes can open a quote that swallows the next lines into one record
        assert f.read <= len(rows)
    else:
        assert f.read == len(rows)
    assert f.read == f.loaded + f.rejected and f.error is None
    if any(k in ("random", "unterminated") for k, _ in rows):
        return
    got = {r["row"]: r["reason"] for r in report.rejects if r["file"] == str(path)}
    assert len(got) == f.rejected
    for i, want in expected.items():
        assert got.get(i, "loaded") == want, (i, rows[i - 1], got.get(i))


@SETTINGS
@given(titles=st.lists(TEXT, min_size=1, max_size=15), chunk=st.integers(1, 200))
def test_quoted_csv_fields_round_trip(tmp_path_factory, titles, chunk):
    path = tmp_path_factory.mktemp("q") / "products.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)  # quotes fields holding \r or \n
    writer.writerow(["product_id", "title"])
    for i, t in enumerate(titles):
        writer.writerow([f"P{i}", t])
    path.write_text(buf.getvalue(), encoding="utf-8")
    frames = []
    read = 0
    for c in CsvReader(path, chunk_bytes=chunk):
        read += c.read
        assert not c.rejects
        frames.append(c.frame)
    assert read == len(titles)
    back = pd.concat(frames, ignore_index=True)["title"].tolist()
    assert back == titles


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
product_obj = st.fixed_dictionaries(
    {"product_id": st.one_of(TEXT, st.integers(), st.floats(), st.none())},
    optional={"title": json_value, "price": json_value, "category_path": json_value, "brand": json_value,
              "attributes": json_value, "extra": json_value},
)
jsonl_line = st.one_of(
    product_obj.map(lambda o: json.dumps(o).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


@SETTINGS
@given(lines=st.lists(jsonl_line, max_size=25), chunk=st.integers(1, 500))
def test_jsonl_never_crashes_or_loses_a_row(tmp_path_factory, lines, chunk):
    d = tmp_path_factory.mktemp("j")
    path = d / "products.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    store = EmbeddedStore(d / "store")
    report = Ingestor(store, IngestConfig(chunk_bytes=chunk)).run([Source("product", path=path)])
    f = report.files[0]
    assert f.error is None and f.read == len(lines) and f.read == f.loaded + f.rejected
    assert len(report.rejects) == f.rejected and len({r["row"] for r in report.rejects}) == f.rejected
    assert store.counts()["Product"] <= f.loaded


mixed = st.one_of(st.none(), st.just(float("nan")), st.just(float("inf")), st.booleans(),
                  st.integers(-(2**64), 2**64), st.floats(), TEXT, st.lists(TEXT, max_size=3),
                  st.lists(st.integers(), max_size=2), st.dictionaries(TEXT, st.integers(), max_size=2))


@SETTINGS
@given(kind=st.sampled_from(sorted(SCHEMAS)), n=st.integers(0, 12), data=st.data())
def test_validation_of_arbitrary_values(kind, n, data, tmp_path_factory):
    schema = SCHEMAS[kind]
    columns = data.draw(st.lists(st.sampled_from([*schema.field_names, "free", "Odd Name!", "attributes"]),
                                 unique=True, max_size=len(schema.field_names) + 3))
    frame = pd.DataFrame({c: pd.Series(data.draw(st.lists(mixed, min_size=n, max_size=n)), dtype=object) for c in columns},
                         index=range(n))
    rows = np.arange(1, n + 1)
    result = validate_chunk(schema, frame, rows, None, SourceOptions(), "f")
    assert len(result.clean) + len(result.rejects) == n
    assert sorted([r.row for r in result.rejects] + result.clean["_row"].tolist()) == rows.tolist()
    # and the whole run, down to Parquet tables, takes it
    store = EmbeddedStore(tmp_path_factory.mktemp("v"))
    report = Ingestor(store, IngestConfig(dangling={"product": "create"})).run([Source(kind, frame=frame)])
    assert report.read == n == report.loaded + report.rejected


@SETTINGS
@given(data=st.data(), n=st.integers(1, 15))
def test_parquet_typed_columns(tmp_path_factory, data, n):
    d = tmp_path_factory.mktemp("p")
    col = lambda s: data.draw(st.lists(s, min_size=n, max_size=n))
    frame = pd.DataFrame({
        "user_id": col(st.one_of(st.none(), TEXT)),
        "product_id": col(st.sampled_from(PRODUCTS + ["PX"])),
        "order": col(st.one_of(st.none(), st.integers(-(2**62), 2**62))),
        "weight": col(st.floats()),
        "flag": col(st.booleans()),
    })
    frame.to_parquet(d / "interactions.parquet")
    report = Ingestor(CollectingStore(), IngestConfig(chunk_rows=4)).run(  # type: ignore[arg-type]
        [_products(), Source("interaction", path=d / "interactions.parquet")])
    f = report.files[1]
    assert f.read == n == f.loaded + f.rejected
    users = frame["user_id"].astype(object)
    bad = users.map(lambda u: not isinstance(u, str) or not u.strip() or any(
        ord(c) < 32 or ord(c) == 127 for c in u.strip())) | frame["order"].isna() | (frame["product_id"] == "PX")
    weights = frame["weight"]
    bad |= weights.map(lambda w: not math.isnan(w) and not math.isfinite(w))
    dup = frame.assign(u=users.map(lambda u: u.strip() if isinstance(u, str) else u))[~bad].duplicated(
        ["u", "product_id", "order"])
    assert f.rejected == int(bad.sum()) + int(dup.sum())


def test_jsonl_reader_reasons(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[1]\n{bad\n\xff\n{"a": NaN} \n{"a": 1} {"b": 2}\n')
    reasons = [(r.row, r.reason) for c in JsonlReader(path) for r in c.rejects]
    assert reasons == [(2, "empty_line"), (3, "not_object"), (4, "malformed_json"), (5, "bad_encoding"),
                       (7, "malformed_json")]
