"""The GraphStore contract, run against every store (see conftest.py's ``store`` fixture).

Frames are tiny and built here. Values are chosen to survive the FalkorDB test
server (no apostrophes, no floats needing more than 6 significant digits).
"""
from __future__ import annotations

import math

import pandas as pd
import pytest

from kgrec.kg.schema import NODE_TYPES, REL_TYPES, SchemaError

PRODUCTS = pd.DataFrame(
    {
        "product_id": ["p1", "p2", "p3"],
        "title": ["Red Mug", "Blue Kettle", "Green Teapot"],
        "price": [4.5, 12.25, 30.0],
        "stock": [3, 0, 12],
    }
)
USERS = pd.DataFrame({"user_id": ["u1", "u2"]})
CATEGORIES = pd.DataFrame(
    {"category_id": ["Home", "Home > Kitchen"], "name": ["Home", "Kitchen"], "level": [0, 1]}
)
IN_CATEGORY = pd.DataFrame({"source": ["p1", "p2", "p3"], "target": ["Home > Kitchen"] * 3})
SUBCATEGORY_OF = pd.DataFrame({"source": ["Home > Kitchen"], "target": ["Home"]})
#: u1 buys p1 twice (orders 0 and 2): two distinct PURCHASED edges.
PURCHASED = pd.DataFrame(
    {
        "source": ["u1", "u1", "u1", "u2"],
        "target": ["p1", "p2", "p1", "p3"],
        "order": [0, 1, 2, 0],
        "quantity": [1, 2, 5, 1],
    }
)


def records(frame: pd.DataFrame, key: list[str]) -> list[dict]:
    """Rows as plain dicts sorted by ``key``; NaN/NA become None, numbers plain Python."""
    out = []
    for row in frame.sort_values(key).to_dict("records"):
        clean = {}
        for k, v in row.items():
            if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                v = None
            elif hasattr(v, "item"):
                v = v.item()
            clean[k] = v
        out.append(clean)
    return out


def load_catalogue(store) -> None:
    store.upsert_nodes("Product", PRODUCTS)
    store.upsert_nodes("User", USERS)
    store.upsert_nodes("Category", CATEGORIES)
    store.upsert_edges("IN_CATEGORY", IN_CATEGORY)
    store.upsert_edges("SUBCATEGORY_OF", SUBCATEGORY_OF)
    store.upsert_edges("PURCHASED", PURCHASED)


EXPECTED_COUNTS = {
    **{name: 0 for name in [*NODE_TYPES, *REL_TYPES]},
    "Product": 3,
    "User": 2,
    "Category": 2,
    "IN_CATEGORY": 3,
    "SUBCATEGORY_OF": 1,
    "PURCHASED": 4,
}


def test_empty_store_counts_zero(store):
    assert store.counts() == {name: 0 for name in [*NODE_TYPES, *REL_TYPES]}
    assert store.nodes("Product").empty
    assert store.edges("PURCHASED").empty


def test_nodes_round_trip(store):
    assert store.upsert_nodes("Product", PRODUCTS) == 3
    got = store.nodes("Product")
    assert list(got.columns)[0] == "product_id"
    assert records(got, ["product_id"]) == [
        {"product_id": "p1", "title": "Red Mug", "price": 4.5, "stock": 3},
        {"product_id": "p2", "title": "Blue Kettle", "price": 12.25, "stock": 0},
        {"product_id": "p3", "title": "Green Teapot", "price": 30.0, "stock": 12},
    ]


def test_edges_round_trip(store):
    load_catalogue(store)
    got = store.edges("PURCHASED")
    assert list(got.columns)[:3] == ["source", "target", "order"]
    assert records(got, ["source", "target", "order"]) == [
        {"source": "u1", "target": "p1", "order": 0, "quantity": 1},
        {"source": "u1", "target": "p1", "order": 2, "quantity": 5},
        {"source": "u1", "target": "p2", "order": 1, "quantity": 2},
        {"source": "u2", "target": "p3", "order": 0, "quantity": 1},
    ]
    assert records(store.edges("IN_CATEGORY"), ["source"]) == [
        {"source": p, "target": "Home > Kitchen"} for p in ("p1", "p2", "p3")
    ]
    assert records(store.edges("SUBCATEGORY_OF"), ["source"]) == [{"source": "Home > Kitchen", "target": "Home"}]
    assert store.counts() == EXPECTED_COUNTS


def test_reupsert_is_idempotent(store):
    load_catalogue(store)
    before_nodes = records(store.nodes("Product"), ["product_id"])
    before_edges = records(store.edges("PURCHASED"), ["source", "target", "order"])
    load_catalogue(store)
    assert store.counts() == EXPECTED_COUNTS
    assert records(store.nodes("Product"), ["product_id"]) == before_nodes
    assert records(store.edges("PURCHASED"), ["source", "target", "order"]) == before_edges


def test_upsert_updates_properties(store):
    load_catalogue(store)
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p2"], "title": ["Steel Kettle"], "price": [15.5], "stock": [7]}))
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [2], "quantity": [9]}))
    nodes = {r["product_id"]: r for r in records(store.nodes("Product"), ["product_id"])}
    assert nodes["p2"] == {"product_id": "p2", "title": "Steel Kettle", "price": 15.5, "stock": 7}
    assert nodes["p1"]["title"] == "Red Mug"
    edges = records(store.edges("PURCHASED"), ["source", "target", "order"])
    assert [e["quantity"] for e in edges] == [1, 9, 2, 1]
    assert store.counts() == EXPECTED_COUNTS


def test_repeated_interactions_stay_distinct(store):
    store.upsert_nodes("User", USERS)
    store.upsert_nodes("Product", PRODUCTS)
    views = pd.DataFrame({"source": ["u2"] * 3, "target": ["p2"] * 3, "order": [0, 1, 2]})
    assert store.upsert_edges("VIEWED", views) == 3
    assert store.counts()["VIEWED"] == 3
    assert records(store.edges("VIEWED"), ["order"]) == [
        {"source": "u2", "target": "p2", "order": i} for i in range(3)
    ]
    store.upsert_edges("VIEWED", views.iloc[[1]])
    assert store.counts()["VIEWED"] == 3


def test_structural_edges_unique_per_pair(store):
    load_catalogue(store)
    store.upsert_edges("IN_CATEGORY", IN_CATEGORY.iloc[[0, 0]])
    assert store.counts()["IN_CATEGORY"] == 3


INJECTION = "Product) DETACH DELETE n //"


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.upsert_nodes(INJECTION, pd.DataFrame({"product_id": ["p9"]})),
        lambda s: s.upsert_edges(INJECTION, pd.DataFrame({"source": ["u1"], "target": ["p1"]})),
        lambda s: s.upsert_nodes("Product", pd.DataFrame({"product_id": ["p9"], INJECTION: [1]})),
        lambda s: s.upsert_edges(
            "PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [7], INJECTION: [1]})
        ),
        lambda s: s.nodes(INJECTION),
        lambda s: s.edges(INJECTION),
    ],
    ids=["label", "rel_type", "node_property", "edge_property", "read_label", "read_rel_type"],
)
def test_schema_whitelist_rejects_injection(store, write):
    load_catalogue(store)
    with pytest.raises(SchemaError):
        write(store)
    assert store.counts() == EXPECTED_COUNTS


def test_upsert_keeps_properties_absent_from_the_frame(store):
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1", "p2"], "title": ["Mug", "Kettle"], "price": [4.5, 12.0]}))
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p2", "p3"], "title": ["Steel Kettle", "Pot"]}))
    got = {r["product_id"]: r for r in records(store.nodes("Product"), ["product_id"])}
    assert got["p1"] == {"product_id": "p1", "title": "Mug", "price": 4.5}
    assert got["p2"] == {"product_id": "p2", "title": "Steel Kettle", "price": 12.0}
    assert got["p3"]["title"] == "Pot" and got["p3"].get("price") is None
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [0], "quantity": [2]}))
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [0], "channel": ["web"]}))
    (edge,) = records(store.edges("PURCHASED"), ["order"])
    assert edge["quantity"] == 2 and edge["channel"] == "web"


BRANDS = pd.DataFrame({"brand_id": ["b1", "b2"], "name": ["Acme", "Bolt"]})


@pytest.mark.parametrize("rel", ["MADE_BY", "IN_CATEGORY"])
def test_a_single_valued_relation_is_replaced_not_added(store, rel):
    load_catalogue(store)
    store.upsert_nodes("Brand", BRANDS)
    one, other = ("b1", "b2") if rel == "MADE_BY" else ("Home > Kitchen", "Home")
    if rel == "MADE_BY":
        assert store.upsert_edges(rel, pd.DataFrame({"source": ["p1", "p2", "p3"], "target": [one] * 3})) == 3
    # p1 moves, p2 is written again unchanged (with a property), p3 is not mentioned
    store.upsert_edges(rel, pd.DataFrame({"source": ["p1", "p2"], "target": [other, one], "since": [2024, 2023]}))
    assert records(store.edges(rel), ["source"]) == [
        {"source": "p1", "target": other, "since": 2024},
        {"source": "p2", "target": one, "since": 2023},
        {"source": "p3", "target": one, "since": None},
    ]
    # the last row of a source wins within one frame too; an empty target removes the source's edge
    store.upsert_edges(rel, pd.DataFrame({"source": ["p3", "p3", "p2"], "target": [other, one, None]}))
    assert [(e["source"], e["target"]) for e in records(store.edges(rel), ["source"])] == [("p1", other), ("p3", one)]
    assert store.counts()[rel] == 2
    assert store.counts()["Product"] == 3 and store.counts()["PURCHASED"] == 4


def test_an_empty_target_is_refused_where_a_relation_is_not_single_valued(store):
    load_catalogue(store)
    with pytest.raises(ValueError, match="empty target"):
        store.upsert_edges("SUBCATEGORY_OF", pd.DataFrame({"source": ["Home > Kitchen"], "target": [None]}))
    with pytest.raises(ValueError, match="empty source"):
        store.upsert_edges("MADE_BY", pd.DataFrame({"source": [None], "target": ["b1"]}))
    assert store.counts() == EXPECTED_COUNTS


def test_updating_a_products_brand_and_category_path_through_ingest(store, tmp_path):
    """Re-ingesting a product with another brand / category path (or none) moves its edges; the export follows."""
    from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
    from kgrec.kg.export import export_snapshot

    def ingest(name, rows):
        path = tmp_path / name
        path.write_text("product_id,title,brand,category_path\n" + "".join(f"{','.join(r)}\n" for r in rows))
        report = Ingestor(store, IngestConfig()).run([
            Source("product", path=path),
            Source("interaction", frame=pd.DataFrame({"user_id": ["u1", "u1", "u2"], "product_id": ["p1", "p2", "p3"],
                                                      "order": [0, 1, 0]})),
        ])
        assert report.rejected == 0

    ingest("v1.csv", [("p1", "Mug", "Acme", "Home > Kitchen"), ("p2", "Kettle", "Acme", "Home > Kitchen"),
                      ("p3", "Pot", "Bolt", "Home")])
    ingest("v2.csv", [("p1", "Mug", "Bolt", "Home > Dining"), ("p2", "Kettle", "", "")])
    made_by = [(e["source"], e["target"]) for e in records(store.edges("MADE_BY"), ["source"])]
    in_category = [(e["source"], e["target"]) for e in records(store.edges("IN_CATEGORY"), ["source"])]
    assert made_by == [("p1", "Bolt"), ("p3", "Bolt")]
    assert in_category == [("p1", "Home > Dining"), ("p3", "Home")]
    assert store.counts()["Brand"] == 2 and store.counts()["Category"] == 3

    snapshot = export_snapshot(store)
    brand_edges = snapshot.structure[("product", "made_by", "brand")].T.tolist()
    products, brands = snapshot.id_maps["product"], snapshot.id_maps["brand"]
    assert sorted((products[p], brands[b]) for p, b in brand_edges) == [("p1", "Bolt"), ("p3", "Bolt")]
    category_edges = snapshot.structure[("product", "in_category", "category")].T.tolist()
    assert sorted(products[p] for p, _ in category_edges) == ["p1", "p3"]
