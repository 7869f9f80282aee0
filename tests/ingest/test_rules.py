"""Column mapping, formats, the duplicate / dangling rules, partial updates, names from data."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.ingest.sources import apply_map_args, discover, load_mapping
from kgrec.ingest.validate import SourceOptions
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.export import KgExport, export_judgements, export_snapshot
from kgrec.kg.schema import SchemaError, check_identifier, relation_type_name


def run(store, sources, **config):
    return Ingestor(store, IngestConfig(**config)).run(sources)


def test_mapping_config_loads_a_foreign_export(tmp_path):
    (tmp_path / "catalogue.csv").write_text(
        "sku;name;maker;breadcrumbs;Preis (EUR);colour\n"
        "A1;Drill;Acme;Tools/Power;12,5;red\n"
        "A2;Saw;Bolt;Tools/Hand;;blue\n"
    )
    (tmp_path / "orders_2024.csv").write_text(
        "customer;sku;what;ts\n"
        "c1;A1;add-to-basket;2024-01-01T10:00:00Z\n"
        "c1;A1;order;2024-01-01T10:05:00+00:00\n"
        "c2;A2;order;1704103200\n"
        "c2;A2;order;yesterday\n"
    )
    (tmp_path / "map.toml").write_text(
        '[files]\n"catalogue.csv" = "product"\n"orders_*.csv" = "interactions"\n'
        '[csv]\nsep = ";"\n'
        '[product]\ncolumns = { title = "name", brand = "maker", category_path = "breadcrumbs" }\n'
        'category_separator = "/"\n'
        '[interaction]\ncolumns = { user_id = "customer", event = "what", timestamp = "ts" }\n'
        'events = { "add-to-basket" = "cart" }\n'
    )
    cfg = apply_map_args(load_mapping(tmp_path / "map.toml"), ["product_id=sku"])  # every kind with product_id
    found = discover([tmp_path], cfg)
    assert sorted((s.kind, s.path.name) for s in found.sources) == [("interaction", "orders_2024.csv"), ("product", "catalogue.csv")]
    store = EmbeddedStore(tmp_path / "store")
    report = run(store, found.sources)
    assert [(r["row"], r["field"], r["reason"]) for r in report.rejects] == [(4, "timestamp", "not_timestamp")]
    products = store.nodes("Product").set_index("product_id")
    assert products.loc["A1", "category_path"] == "Tools > Power" and products.loc["A2", "brand"] == "Bolt"
    assert products.loc["A1", "preis_eur"] == "12,5" and math.isnan(products.loc["A2", "preis_eur"])  # kept as text
    assert products.loc["A2", "colour"] == "blue"
    assert any("stored as property 'preis_eur'" in w for w in report.files[0].warnings)
    cart, purchased = store.edges("ADDED_TO_CART"), store.edges("PURCHASED")
    assert len(cart) == 1 and len(purchased) == 2
    assert cart["order"].iloc[0] == 1704103200000 and cart["timestamp"].iloc[0] == 1704103200.0
    assert sorted(purchased["order"]) == [1704103200000, 1704103500000]


def test_map_args_and_bad_configs(tmp_path):
    from kgrec.ingest.sources import MappingConfig, parse_mapping

    cfg = apply_map_args(MappingConfig(), ["user_id=customer", "interaction.order=seq"])
    assert cfg.kinds["user"]["columns"] == {"user_id": "customer"}
    assert cfg.kinds["interaction"]["columns"] == {"user_id": "customer", "order": "seq"}
    with pytest.raises(ValueError, match="no record kind has a field"):
        apply_map_args(MappingConfig(), ["nope=x"])
    with pytest.raises(ValueError, match="unknown fields"):
        parse_mapping({"product": {"columns": {"sku": "x"}}})
    with pytest.raises(ValueError, match="unknown record kind"):
        parse_mapping({"orders": {"columns": {}}})
    with pytest.raises(ValueError, match="timestamp_unit"):
        parse_mapping({"interaction": {"timestamp_unit": "days"}})
    (tmp_path / "m.json").write_text(json.dumps({"interaction": {"columns": {"user_id": "who"}}}))
    assert load_mapping(tmp_path / "m.json").kinds["interaction"]["columns"] == {"user_id": "who"}


def test_parquet_and_jsonl_with_typed_and_free_values(tmp_path):
    pd.DataFrame({
        "user_id": ["u1", "u1", "u2", None],
        "product_id": [1, 2, 1, 2],
        "event": ["purchase"] * 4,
        "order": pd.array([0, 1, 0, 2], dtype="Int64"),
        "qty": [1.5, 2.0, float("nan"), 1.0],
    }).to_parquet(tmp_path / "interactions.parquet")
    (tmp_path / "products.jsonl").write_text(
        json.dumps({"product_id": 1, "title": "One", "price": 3, "attributes": {"size": "L", "tags": ["a", "b"]}}) + "\n"
        + json.dumps({"product_id": "2", "title": ["Two", "lines"], "price": "4.5", "in_stock": True}) + "\n"
        + json.dumps({"product_id": 3.5, "price": float("inf")}).replace("Infinity", "Infinity") + "\n"
    )
    store = EmbeddedStore(tmp_path / "store")
    report = run(store, discover([tmp_path]).sources)
    assert sorted((r["file"].rsplit("/", 1)[1], r["row"], r["reason"]) for r in report.rejects) == [
        ("interactions.parquet", 4, "missing"), ("products.jsonl", 3, "not_id")]
    products = store.nodes("Product").set_index("product_id")
    assert products.loc["1", "price"] == 3.0 and products.loc["2", "price"] == 4.5
    assert products.loc["1", "size"] == "L" and products.loc["1", "tags"] == '["a", "b"]'
    assert products.loc["2", "title"] == "Two\nlines" and products.loc["2", "in_stock"] == "true"
    edges = store.edges("PURCHASED").sort_values(["source", "order"])
    assert edges["target"].tolist() == ["1", "2", "1"] and edges["qty"].tolist()[:2] == ["1.5", "2.0"]
    assert pd.isna(edges["qty"].iloc[2])


def test_duplicate_rule_last_wins(tmp_path):
    frame = pd.DataFrame({"product_id": ["P1", "P2", "P1"], "title": ["old", "two", "new"]})
    store = EmbeddedStore(tmp_path / "a")
    report = run(store, [Source("product", frame=frame)])
    assert [(r["row"], r["reason"]) for r in report.rejects] == [(3, "duplicate")]
    assert store.nodes("Product").set_index("product_id").loc["P1", "title"] == "old"
    store = EmbeddedStore(tmp_path / "b")
    report = run(store, [Source("product", frame=frame)], duplicates="last")
    assert report.rejected == 0 and store.nodes("Product").set_index("product_id").loc["P1", "title"] == "new"


def test_dangling_policies(tmp_path):
    products = pd.DataFrame({"product_id": ["P1"]})
    inter = pd.DataFrame({"user_id": ["u1", "u2"], "product_id": ["P1", "P9"], "order": [0, 0]})
    store = EmbeddedStore(tmp_path / "a")
    report = run(store, [Source("interaction", frame=inter), Source("product", frame=products)])  # order of kinds fixed
    assert [(r["row"], r["field"], r["reason"]) for r in report.rejects] == [(2, "product_id", "dangling")]
    assert report.created == {"user": 1}  # u2's row was rejected: no node for it
    store = EmbeddedStore(tmp_path / "b")
    report = run(store, [Source("interaction", frame=inter)], dangling={"product": "create", "user": "reject"})
    assert report.rejected == 2 and {r["field"] for r in report.rejects} == {"user_id"}
    report = run(store, [Source("user", frame=pd.DataFrame({"user_id": ["u1", "u2"]})), Source("interaction", frame=inter)],
                 dangling={"product": "create", "user": "reject"})
    assert report.rejected == 0 and report.created == {"product": 2}
    assert store.counts()["Product"] == 2


def test_categories_brands_judgements_and_triples(tmp_path):
    sources = [
        Source("category", frame=pd.DataFrame({"category_id": ["Tools", "Power"], "name": ["All tools", "Power tools"],
                                                "parent_id": [None, "Tools"]})),
        Source("brand", frame=pd.DataFrame({"brand_id": ["b1"], "name": ["Acme Ltd"], "country": ["DE"]})),
        Source("product", frame=pd.DataFrame({"product_id": ["P1", "P2"], "brand": ["b1", "b2"],
                                               "category_id": ["Power", "Garden"], "description": ["d1", None]})),
        Source("judgement", frame=pd.DataFrame({"query": ["cordless drill", "cordless drill", "saw"],
                                                 "product_id": ["P1", "P2", "P9"], "label": [2, 0, 1]})),
        Source("triple", frame=pd.DataFrame({"head": ["P1", "steel"], "relation": ["madeOf", "is a"],
                                              "tail": ["steel", "metal"]})),
    ]
    store = EmbeddedStore(tmp_path / "store")
    report = run(store, sources, link_by_id=True)
    assert [(r["file"], r["row"], r["reason"]) for r in report.rejects] == [("<judgement frame>", 3, "dangling")]
    brands = store.nodes("Brand").set_index("brand_id")
    assert brands.loc["b1", "name"] == "Acme Ltd" and brands.loc["b2", "name"] == "b2"  # created, not clobbered
    categories = store.nodes("Category").set_index("category_id")
    assert categories.loc["Power", "name"] == "Power tools" and categories.loc["Garden", "name"] == "Garden"
    assert store.edges("SUBCATEGORY_OF")[["source", "target"]].values.tolist() == [["Power", "Tools"]]
    assert sorted(store.edges("IN_CATEGORY")["target"]) == ["Garden", "Power"]
    assert sorted(store.kg_relations()) == ["IS_A", "MADE_OF"]
    assert store.edges("DESCRIBES")[["source", "target"]].values.tolist() == [["P1", "P1"]]
    pd.DataFrame({"user_id": ["u"] * 3, "product_id": ["P1", "P2", "P1"], "order": [0, 1, 2]}).pipe(
        lambda f: run(store, [Source("interaction", frame=f)]))
    snapshot = export_snapshot(EmbeddedStore(tmp_path / "store"), kg=KgExport(kg_hops=0))  # keep every entity
    # P1 is its linked entity: its madeOf relation starts at the product
    assert {("product", "made_of", "entity"), ("entity", "is_a", "entity")} <= set(snapshot.structure)
    assert snapshot.id_maps["entity"] == ["metal", "steel"]
    judged = export_judgements(store, snapshot)
    assert judged[["query", "label"]].values.tolist() == [["cordless drill", 2.0], ["cordless drill", 0.0]]


def test_partial_column_updates_keep_old_values(tmp_path):
    """EmbeddedStore behaves like Neo4j's MERGE + SET +=: absent columns keep their values."""
    store = EmbeddedStore(tmp_path)
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1", "p2"], "title": ["Mug", "Kettle"], "price": [4.5, 12.0]}))
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p2", "p3"], "title": ["Steel Kettle", "Pot"]}))
    got = store.nodes("Product").set_index("product_id")
    assert got.loc["p2", "title"] == "Steel Kettle" and got.loc["p2", "price"] == 12.0
    assert got.loc["p1", "price"] == 4.5 and math.isnan(got.loc["p3", "price"])
    store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1"], "price": [None]}))  # a null clears
    got = store.nodes("Product").set_index("product_id")
    assert got.loc["p1", "title"] == "Mug" and pd.isna(got.loc["p1", "price"])
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [0], "quantity": [2]}))
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1", "u1"], "target": ["p1", "p2"], "order": [0, 1],
                                                  "channel": ["web", "app"]}))
    edges = store.edges("PURCHASED").set_index("order")
    assert edges.loc[0, "quantity"] == 2 and edges.loc[0, "channel"] == "web" and pd.isna(edges.loc[1, "quantity"])
    assert store.counts()["Product"] == 3 and store.counts()["PURCHASED"] == 2


INJECTIONS = ["x]->() DETACH DELETE n //", "a`b", "Product) DETACH DELETE n", "", "  ", "IN_CATEGORY", "RECOMMENDED", "x" * 90]


@pytest.mark.parametrize("raw", INJECTIONS)
def test_names_from_data_are_sanitised(raw):
    if not raw.strip():
        with pytest.raises(SchemaError):
            relation_type_name(raw)
        return
    name = relation_type_name(raw)
    assert check_identifier(name) == name and name.upper() == name and name not in ("IN_CATEGORY", "RECOMMENDED")


def test_hostile_names_from_data_reach_the_store_safely(tmp_path):
    frame = pd.DataFrame({"head": ["a"], "relation": ["x]->() DETACH DELETE n //"], "tail": ["b"],
                          "w`) SET n.pwned = 1 //": ["v"]})
    store = EmbeddedStore(tmp_path)
    report = run(store, [Source("triple", frame=frame)])
    assert report.rejected == 0
    (rel,) = store.kg_relations()
    assert rel == "X_DETACH_DELETE_N"
    edges = store.edges(rel)
    assert list(edges.columns) == ["source", "target", "w_set_n_pwned_1"]
    from kgrec.kg import cypher

    text = cypher.upsert_edges(rel).text
    assert "`X_DETACH_DELETE_N`" in text and "DETACH DELETE n //" not in text


def test_source_options_validation():
    with pytest.raises(ValueError):
        SourceOptions(default_event="teleport")
    with pytest.raises(ValueError):
        SourceOptions(events={"x": "teleport"})
    with pytest.raises(ValueError):
        IngestConfig(dangling={"product": "ignore"})
    with pytest.raises(ValueError):
        IngestConfig(duplicates="first")
