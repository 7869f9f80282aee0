import json

import pytest

from kgrec.ingest.load import graph_frames, load_tables
from kgrec.ingest.tables import TableError, read_tables, write_tables
from kgrec.kg.embedded import EmbeddedStore


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
        (lambda d: _edit_csv(d / "interactions.csv", 4, 0, "nobody"), "interactions.csv", 4, "user_id"),
        (lambda d: _edit_jsonl(d / "products.jsonl", 7, "{not json"), "products.jsonl", 7, None),
        (lambda d: _edit_jsonl(d / "products.jsonl", 2, json.dumps({"product_id": "P00"})), "products.jsonl", 2, "product_id"),
        (lambda d: _edit_jsonl(d / "products.jsonl", 9, json.dumps({"product_id": "Q", "category_path": "Tools"})), "products.jsonl", 9, "category_path"),
    ],
)
def test_errors_name_file_row_and_field(tiny_tables, tmp_path, corrupt, file, row, field):
    write_tables(tiny_tables, tmp_path)
    corrupt(tmp_path)
    with pytest.raises(TableError) as info:
        read_tables(tmp_path)
    err = info.value
    assert (err.path.name, err.row, err.field) == (file, row, field)
    assert file in str(err) and f"row {row}" in str(err)


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


def test_graph_frames_build_the_category_hierarchy(tiny_tables):
    nodes, edges = graph_frames(tiny_tables)
    assert sorted(nodes["Category"]["category_id"]) == ["Tools", "Tools > Hand", "Tools > Power"]
    assert sorted(map(tuple, edges["SUBCATEGORY_OF"][["source", "target"]].to_numpy())) == [
        ("Tools > Hand", "Tools"), ("Tools > Power", "Tools")]
    in_cat = dict(zip(edges["IN_CATEGORY"]["source"], edges["IN_CATEGORY"]["target"]))
    assert in_cat["P01"] == "Tools > Hand" and in_cat["P02"] == "Tools > Power" and "P05" not in in_cat
    assert sorted(nodes["Brand"]["brand_id"]) == ["Acme", "Bolt"]
    assert len(edges["MADE_BY"]) == 16  # every third product has no brand
    assert len(edges["PURCHASED"]) == len(tiny_tables.interactions)


def test_load_is_idempotent(tiny_tables, tmp_path):
    store = EmbeddedStore(tmp_path)
    load_tables(tiny_tables, store, progress=False)
    first = store.counts()
    load_tables(tiny_tables, store, progress=False)
    assert store.counts() == first
    assert first["Product"] == 24 and first["User"] == 10 and first["PURCHASED"] == 60 and first["Category"] == 3
