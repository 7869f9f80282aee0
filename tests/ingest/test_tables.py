import json

import pandas as pd
import pytest

from kgrec.ingest.load import CollectingStore, load_tables
from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.sources import tables_sources
from kgrec.ingest.tables import read_tables, write_tables
from kgrec.kg.embedded import EmbeddedStore
from kgrec.workflow.ingest import ingest_files


def test_round_trip(tiny_tables, tmp_path):
    write_tables(tiny_tables, tmp_path)
    back = read_tables(tmp_path)
    assert back.products["category_path"].tolist() == tiny_tables.products["category_path"].tolist()
    assert back.interactions["order"].tolist() == tiny_tables.interactions["order"].tolist()
    assert back.interactions["product_id"].tolist() == tiny_tables.interactions["product_id"].tolist()


@pytest.mark.parametrize(
    "corrupt, file, row, field",
    [
        (lambda d: _edit_csv(d / "interactions.csv", 3, 2, "teleport"), "interactions.csv", 3, "event"),
        (lambda d: _edit_csv(d / "interactions.csv", 5, 1, "P99"), "interactions.csv", 5, "product_id"),
        (lambda d: _edit_csv(d / "interactions.csv", 2, 3, "two"), "interactions.csv", 2, "order"),
        (lambda d: _edit_jsonl(d / "products.jsonl", 7, "{not json"), "products.jsonl", 7, None),
        (lambda d: _edit_jsonl(d / "products.jsonl", 2, json.dumps({"product_id": "P00"})), "products.jsonl", 2, "product_id"),
    ],
)
def test_bad_rows_are_reported_with_file_row_and_field(tiny_tables, tmp_path, corrupt, file, row, field):
    """The tables layout goes through the ingest pipeline like any file: the bad row is rejected and
    named; a rejected product's interactions are rejected too (they reference a product that is not
    there); every other row is loaded."""
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    corrupt(data)
    report = ingest_files([data], tmp_path / "store").report
    first, *follow = [(r["file"].rsplit("/", 1)[-1], r["row"], r["field"], r["reason"]) for r in report.rejects]
    assert first[:3] == (file, row, field)
    assert all(f == "interactions.csv" and fld == "product_id" and reason == "dangling" for f, _, fld, reason in follow)
    assert len(follow) == (0 if file == "interactions.csv" else (tiny_tables.interactions["product_id"] == f"P{row - 1:02d}").sum())
    assert report.read == report.loaded + report.rejected


def _edit_csv(path, row, column, value):
    lines = path.read_text().splitlines()
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _edit_jsonl(path, row, line):
    lines = path.read_text().splitlines()
    lines[row - 1] = line
    path.write_text("\n".join(lines) + "\n")


def test_tables_build_the_category_hierarchy(tiny_tables):
    store = CollectingStore()
    Ingestor(store, IngestConfig()).run(tables_sources(tiny_tables))  # type: ignore[arg-type]
    nodes = {k: pd.concat(v, ignore_index=True) for k, v in store.nodes_written.items()}
    edges = {k: pd.concat(v, ignore_index=True) for k, v in store.edges_written.items()}
    assert sorted(nodes["Category"]["category_id"]) == ["Tools", "Tools > Hand", "Tools > Power"]
    assert sorted(map(tuple, edges["SUBCATEGORY_OF"][["source", "target"]].to_numpy())) == [
        ("Tools > Hand", "Tools"), ("Tools > Power", "Tools")]
    # one IN_CATEGORY / MADE_BY row per product; a product without one writes None (removes an earlier edge)
    in_cat = dict(zip(edges["IN_CATEGORY"]["source"], edges["IN_CATEGORY"]["target"]))
    assert in_cat["P01"] == "Tools > Hand" and in_cat["P02"] == "Tools > Power" and pd.isna(in_cat["P05"])
    assert len(in_cat) == 24 and sum(pd.notna(t) for t in in_cat.values()) == 19  # every fifth product has none
    assert sorted(nodes["Brand"]["brand_id"]) == ["Acme", "Bolt"]
    made_by = edges["MADE_BY"]
    assert len(made_by) == 24 and made_by["target"].notna().sum() == 16  # every third product has no brand
    assert len(edges["PURCHASED"]) == len(tiny_tables.interactions)


def test_load_is_idempotent(tiny_tables, tmp_path):
    store = EmbeddedStore(tmp_path)
    load_tables(tiny_tables, store, progress=False)
    first = store.counts()
    load_tables(tiny_tables, store, progress=False)
    assert store.counts() == first
    assert first["Product"] == 24 and first["User"] == 10 and first["PURCHASED"] == 60 and first["Category"] == 3
