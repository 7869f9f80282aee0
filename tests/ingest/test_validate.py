"""Validation of values that used to slip through: empty events, infinite times, JSON NaN.

Every case runs a real file through the Ingestor into an embedded store and checks the
exact counts: rows read = loaded + rejected, and every loaded interaction is one edge
of the event type it was loaded as.
"""
from __future__ import annotations

import pandas as pd
import pytest

from kgrec.ingest.build import BuildContext, build
from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.ingest.validate import SourceOptions
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.schema import EVENT_TYPES

INTERACTION_TYPES = sorted(set(EVENT_TYPES.values()))


def ingest(tmp_path, name, text, kind="interaction", options=None, **config):
    path = tmp_path / name
    path.write_text(text)
    store = EmbeddedStore(tmp_path / "store")
    config.setdefault("dangling", {"product": "create"})
    report = Ingestor(store, IngestConfig(**config)).run([Source(kind, path=path, options=options or SourceOptions())])
    assert report.read == report.loaded + report.rejected
    return store, report


def edges_by_type(store):
    counts = store.counts()
    return {rel: counts[rel] for rel in INTERACTION_TYPES if counts[rel]}


@pytest.mark.parametrize(
    ("rows", "default", "expected"),
    [
        # blanks among two event types: they take the default, none is dropped
        (["view", "", "purchase", " ", "view"], "purchase", {"VIEWED": 2, "PURCHASED": 3}),
        (["view", "", "purchase", " ", "view"], "view", {"VIEWED": 4, "PURCHASED": 1}),
        # blanks beside a single event type: stored as the default, not as that type
        (["cart", "", "cart"], "purchase", {"ADDED_TO_CART": 2, "PURCHASED": 1}),
        (["", ""], "rating", {"RATED": 2}),
    ],
    ids=["two-types-default-purchase", "two-types-default-view", "one-type", "all-empty"],
)
def test_an_empty_event_gets_the_default_event(tmp_path, rows, default, expected):
    text = "user_id,product_id,event,order\n" + "".join(f"u1,p{i},{e},{i}\n" for i, e in enumerate(rows))
    store, report = ingest(tmp_path, "interactions.csv", text, options=SourceOptions(default_event=default))
    assert (report.read, report.loaded, report.rejected) == (len(rows), len(rows), 0)
    assert edges_by_type(store) == expected
    assert sum(expected.values()) == report.loaded
    assert f"rows with an empty event get the default event {default!r}" in report.files[0].warnings


def test_an_unknown_event_is_rejected_not_defaulted(tmp_path):
    text = "user_id,product_id,event,order\nu1,p1,,1\nu1,p2,teleport,2\nu1,p3,view,3\n"
    store, report = ingest(tmp_path, "interactions.csv", text)
    assert (report.read, report.loaded, report.rejected) == (3, 2, 1)
    assert [(r["row"], r["field"], r["reason"]) for r in report.rejects] == [(2, "event", "unknown_event")]
    assert edges_by_type(store) == {"PURCHASED": 1, "VIEWED": 1}


def test_the_graph_builder_refuses_interactions_without_an_event():
    clean = pd.DataFrame({"user_id": ["u1", "u2"], "product_id": ["p1", "p2"], "event": ["view", None],
                          "order": [1, 2], "_row": [1, 2], "_line": [2, 3]})
    with pytest.raises(ValueError, match="1 interaction rows without an event"):
        build("interaction", clean, BuildContext(known=lambda kind: set()))


TIMES = [
    ("1700000000", None), ("inf", "not_finite"), ("-inf", "not_finite"), ("Infinity", "not_finite"),
    ("1e400", "not_finite"), ("-1e400", "not_finite"), ("1e300", "out_of_range"), ("9.3e15", "out_of_range"),
    ("2024-01-01T00:00:00Z", None), ("", "missing"), ("soon", "not_timestamp"), ("1700000001.5", None), ("NaN", "not_finite"),
]


@pytest.mark.parametrize("chunk", [1 << 20, 40])
def test_infinite_and_huge_timestamps_are_rejected(tmp_path, chunk):
    text = "user_id,product_id,timestamp\n" + "".join(f"u1,p{i},{t}\n" for i, (t, _) in enumerate(TIMES))
    store, report = ingest(tmp_path, "interactions.csv", text, chunk_bytes=chunk)
    want = [(i + 1, reason) for i, (_, reason) in enumerate(TIMES) if reason]
    assert [(r["row"], r["reason"]) for r in report.rejects] == want
    assert (report.read, report.loaded, report.rejected) == (13, 3, 10)
    assert report.files[0].reasons == {"not_finite": 6, "out_of_range": 2, "missing": 1, "not_timestamp": 1}
    orders = sorted(store.edges("PURCHASED")["order"].tolist())
    assert orders == [1700000000000, 1700000001500, 1704067200000]
    assert all(0 < o < 2**63 for o in orders)


def test_infinite_timestamps_in_jsonl_and_parquet(tmp_path):
    lines = ['{"user_id": "u1", "product_id": "p1", "timestamp": Infinity}',
             '{"user_id": "u1", "product_id": "p2", "timestamp": -Infinity}',
             '{"user_id": "u1", "product_id": "p3", "timestamp": NaN}',
             '{"user_id": "u1", "product_id": "p4", "timestamp": 1700000000}',
             '{"user_id": "u1", "product_id": "p5", "timestamp": null}']
    store, report = ingest(tmp_path, "interactions.jsonl", "\n".join(lines) + "\n")
    assert [(r["row"], r["reason"]) for r in report.rejects] == [(1, "not_finite"), (2, "not_finite"), (3, "not_finite"),
                                                                 (5, "missing")]
    assert report.loaded == 1 and store.counts()["PURCHASED"] == 1

    frame = pd.DataFrame({"user_id": ["u1"] * 3, "product_id": ["p1", "p2", "p3"],
                          "timestamp": [float("inf"), -float("inf"), 1.7e9]})
    frame.to_parquet(tmp_path / "more.parquet")
    report = Ingestor(store, IngestConfig(dangling={"product": "create"})).run(
        [Source("interaction", path=tmp_path / "more.parquet")])
    assert [(r["row"], r["reason"]) for r in report.rejects] == [(1, "not_finite"), (2, "not_finite")]
    assert report.loaded == 1


def test_json_nan_is_rejected_where_a_number_is_expected(tmp_path):
    lines = [
        '{"product_id": "p1", "title": "a", "price": NaN}',
        '{"product_id": "p2", "title": "b", "price": null}',
        '{"product_id": "p3", "title": "c", "price": 2.5}',
        '{"product_id": "p4", "title": "d", "price": Infinity}',
        '{"product_id": "p5", "title": NaN, "price": 1}',
        '{"product_id": NaN, "title": "f"}',
        '{"product_id": "p7", "title": "g", "rating": NaN, "tags": [1, NaN]}',
        '{"product_id": "p8", "title": "h", "category_path": NaN}',
    ]
    store, report = ingest(tmp_path, "products.jsonl", "\n".join(lines) + "\n", kind="product")
    assert [(r["row"], r["field"], r["reason"]) for r in report.rejects] == [
        (1, "price", "not_finite"), (4, "price", "not_finite"), (5, "title", "not_text"), (6, "product_id", "not_id"),
        (8, "category_path", "bad_path"),
    ]
    assert (report.read, report.loaded, report.rejected) == (8, 3, 5)
    products = store.nodes("Product").set_index("product_id")
    assert sorted(products.index) == ["p2", "p3", "p7"]
    assert products.loc["p3", "price"] == 2.5 and pd.isna(products.loc["p2", "price"])
    # a free attribute keeps the literal as text instead of dropping it
    assert products.loc["p7", "rating"] == "NaN" and products.loc["p7", "tags"] == '[1, "NaN"]'


def test_csv_nan_and_json_nan_reject_alike(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "json").mkdir()
    _, csv_report = ingest(tmp_path / "csv", "products.csv", "product_id,price\np1,NaN\np2,\np3,1\n", kind="product")
    _, json_report = ingest(tmp_path / "json", "products.jsonl", '{"product_id": "p1", "price": NaN}\n'
                            '{"product_id": "p2", "price": null}\n{"product_id": "p3", "price": 1}\n', kind="product")
    for report in (csv_report, json_report):
        assert [(r["row"], r["field"], r["reason"]) for r in report.rejects] == [(1, "price", "not_finite")]
        assert (report.read, report.loaded) == (3, 2)
