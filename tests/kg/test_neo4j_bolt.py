"""The Neo4j store's driver path against a real Bolt server (see conftest.py for which one).

The configuration tests need no server.
"""
from __future__ import annotations

import neo4j
import pandas as pd
import pytest

from kgrec.kg import cypher
from kgrec.kg.neo4j_store import (
    ENV_DATABASE,
    ENV_DIALECT,
    ENV_PASSWORD,
    ENV_URI,
    ENV_USER,
    Neo4jConfig,
    Neo4jConfigError,
    Neo4jStore,
)
from kgrec.kg.schema import NODE_TYPES, SchemaError

FULL_ENV = {ENV_URI: "bolt://db.example:7687", ENV_USER: "kgrec", ENV_PASSWORD: "s3cret"}


# -- configuration (no server) -----------------------------------------------------------


def test_config_from_env():
    config = Neo4jConfig.from_env({**FULL_ENV, ENV_DATABASE: "shop"})
    assert (config.uri, config.auth, config.database, config.dialect) == (
        "bolt://db.example:7687",
        ("kgrec", "s3cret"),
        "shop",
        "neo4j",
    )
    assert "s3cret" not in repr(config)
    assert Neo4jConfig.from_env(FULL_ENV).database is None


@pytest.mark.parametrize("missing", [ENV_URI, ENV_USER, ENV_PASSWORD])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_config_names_the_missing_variable(missing, how):
    env = dict(FULL_ENV)
    if how == "unset":
        del env[missing]
    else:
        env[missing] = ""
    with pytest.raises(Neo4jConfigError, match=missing):
        Neo4jConfig.from_env(env)


def test_config_rejects_unknown_dialect():
    with pytest.raises(ValueError, match="dialect"):
        Neo4jConfig.from_env({**FULL_ENV, ENV_DIALECT: "memgraph"})


def test_store_without_env_fails_clearly(monkeypatch):
    for name in (ENV_URI, ENV_USER, ENV_PASSWORD):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(Neo4jConfigError, match=ENV_URI):
        Neo4jStore()


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_batch_size_must_be_positive_int(size):
    with pytest.raises(ValueError):
        Neo4jStore(Neo4jConfig("bolt://127.0.0.1:1"), batch_size=size)


# -- against the server ---------------------------------------------------------------------


def test_ensure_schema_is_idempotent(neo4j_store, bolt_target):
    neo4j_store.ensure_schema()
    neo4j_store.ensure_schema()
    rows = neo4j_store._read(cypher.list_indexes(neo4j_store.dialect))
    if bolt_target.falkordb:
        indexed = {(r["label"], p) for r in rows for p in r["properties"]}
        assert len(rows) == len(NODE_TYPES), rows  # one index per label, not two
    else:
        indexed = {(lab, p) for r in rows for lab in (r["labelsOrTypes"] or []) for p in (r["properties"] or [])}
    assert {(nt.label, nt.key) for nt in NODE_TYPES.values()} <= indexed


def test_writes_are_batched_in_managed_transactions(neo4j_store, monkeypatch):
    calls = []
    original = neo4j.Session.execute_write

    def counting(self, work, *args, **kwargs):
        calls.append(work)
        return original(self, work, *args, **kwargs)

    monkeypatch.setattr(neo4j.Session, "execute_write", counting)
    neo4j_store.ensure_schema()
    calls.clear()
    neo4j_store.batch_size = 2
    frame = pd.DataFrame({"product_id": [f"p{i}" for i in range(5)], "title": [f"T{i}" for i in range(5)]})
    assert neo4j_store.upsert_nodes("Product", frame) == 5
    assert len(calls) == 3  # 2 + 2 + 1 rows
    assert neo4j_store.nodes("Product")["product_id"].tolist() == [f"p{i}" for i in range(5)]


def test_values_travel_as_parameters(neo4j_store):
    hostile = "x}) DETACH DELETE n RETURN 1 //"
    neo4j_store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1", hostile], "title": [hostile, "ok"]}))
    got = neo4j_store.nodes("Product").set_index("product_id")["title"].to_dict()
    assert got == {"p1": hostile, hostile: "ok"}


def test_missing_value_removes_property(neo4j_store):
    neo4j_store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1", "p2"], "title": ["A", "B"]}))
    neo4j_store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1"], "title": [None]}))
    got = neo4j_store.nodes("Product")
    assert got["title"].isna().tolist() == [True, False]


def test_edges_create_missing_endpoints(neo4j_store):
    neo4j_store.upsert_edges("MADE_BY", pd.DataFrame({"source": ["p1"], "target": ["acme"]}))
    assert neo4j_store.nodes("Brand")["brand_id"].tolist() == ["acme"]
    assert neo4j_store.edges("MADE_BY").to_dict("records") == [{"source": "p1", "target": "acme"}]


def test_interaction_edges_need_their_order(neo4j_store):
    with pytest.raises(ValueError, match="order"):
        neo4j_store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"]}))
    with pytest.raises(ValueError, match="order"):
        neo4j_store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [None]}))


def test_embeddings_and_vector_index(neo4j_store):
    neo4j_store.upsert_nodes("Product", pd.DataFrame({"product_id": ["p1", "p2", "p3"]}))
    vectors = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.75, 0.5, 0.0, 0.0]]
    assert neo4j_store.write_embeddings("Product", ["p1", "p2", "p3", "p9"][:3], vectors) == 3
    assert neo4j_store.write_embeddings("Product", ["p9"], [[1.0, 1.0, 1.0, 1.0]]) == 0
    name = neo4j_store.create_vector_index("Product", "embedding", dim=4)
    assert neo4j_store.create_vector_index("Product", "embedding", dim=4) == name == "kgrec_product_embedding"
    nearest = neo4j_store.similar("Product", [1.0, 0.0, 0.0, 0.0], k=2)
    assert nearest["id"].tolist() == ["p1", "p3"]
    stored = neo4j_store.nodes("Product").set_index("product_id")["embedding"]
    assert [list(map(float, v)) for v in stored] == vectors
    neo4j_store.drop_vector_index("Product", "embedding")
    neo4j_store.drop_vector_index("Product", "embedding")  # no index: nothing to do
    # A new index (another dimension) over fresh vectors answers again.
    neo4j_store.write_embeddings("Product", ["p1", "p2"], [[1.0, 0.0], [0.0, 1.0]])
    neo4j_store.create_vector_index("Product", "embedding", dim=2)
    assert neo4j_store.similar("Product", [0.0, 1.0], k=1)["id"].tolist() == ["p2"]
    with pytest.raises(ValueError):
        neo4j_store.write_embeddings("Product", ["p1"], [[float("nan")] * 4])
    with pytest.raises(SchemaError):
        neo4j_store.write_embeddings("Product", ["p1"], [[1.0] * 4], property="e) DETACH DELETE n //")


RECS = pd.DataFrame(
    {
        "user_id": ["u1", "u1", "u2"],
        "product_id": ["p2", "p3", "p1"],
        "score": [0.75, 0.5, 0.25],
        "rank": [1, 2, 1],
        "model_version": ["v1", "v1", "v1"],
    }
)


def test_write_recommendations(neo4j_store):
    assert neo4j_store.write_recommendations(RECS) == 3
    assert neo4j_store.recommendations().to_dict("records") == RECS.sort_values(
        ["model_version", "user_id", "rank"], ignore_index=True
    ).to_dict("records")
    # A rerun of v1 for u1 replaces u1's v1 edges; v2 lives beside v1.
    rerun = pd.DataFrame(
        {"user_id": ["u1"], "product_id": ["p1"], "score": [0.5], "rank": [1], "model_version": ["v1"]}
    )
    neo4j_store.write_recommendations(rerun)
    neo4j_store.write_recommendations(RECS.assign(model_version="v2"))
    got = neo4j_store.recommendations()
    assert got[got["model_version"] == "v1"][["user_id", "product_id", "rank"]].to_dict("records") == [
        {"user_id": "u1", "product_id": "p1", "rank": 1},
        {"user_id": "u2", "product_id": "p1", "rank": 1},
    ]
    assert len(got[got["model_version"] == "v2"]) == 3
    assert neo4j_store.counts()["User"] == 2  # endpoints merged, not duplicated
    with pytest.raises(ValueError, match="repeats"):
        neo4j_store.write_recommendations(pd.concat([RECS, RECS]))
    with pytest.raises(ValueError, match="lacks"):
        neo4j_store.write_recommendations(RECS.drop(columns="rank"))


def _browser_graph(store: Neo4jStore) -> None:
    store.upsert_nodes("Category", pd.DataFrame({"category_id": ["Home", "Home > Kitchen"], "name": ["Home", "Kitchen"], "level": [0, 1]}))
    store.upsert_nodes("Brand", pd.DataFrame({"brand_id": ["acme"], "name": ["Acme"]}))
    store.upsert_nodes(
        "Product", pd.DataFrame({"product_id": ["p1", "p2", "p3"], "title": ["Red Mug", "Blue Kettle", "Green Teapot"]})
    )
    store.upsert_nodes("User", pd.DataFrame({"user_id": ["u1"]}))
    store.upsert_edges("SUBCATEGORY_OF", pd.DataFrame({"source": ["Home > Kitchen"], "target": ["Home"]}))
    store.upsert_edges("IN_CATEGORY", pd.DataFrame({"source": ["p1", "p2", "p3"], "target": ["Home > Kitchen"] * 3}))
    store.upsert_edges("MADE_BY", pd.DataFrame({"source": ["p1", "p3"], "target": ["acme", "acme"]}))
    store.upsert_edges("VIEWED", pd.DataFrame({"source": ["u1", "u1"], "target": ["p1", "p1"], "order": [0, 2]}))
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u1"], "target": ["p1"], "order": [1]}))
    store.write_recommendations(
        pd.DataFrame({"user_id": ["u1"], "product_id": ["p3"], "score": [0.5], "rank": [1], "model_version": ["v1"]})
    )


def test_browser_queries_run(neo4j_store, bolt_target):
    _browser_graph(neo4j_store)
    q = cypher.BROWSER_QUERIES
    history = neo4j_store._read(q["user_history"], user_id="u1")
    # .data() renders a path as [start, type, end, ...]; ordered by the interaction's order.
    assert [r["path"][1] for r in history] == ["VIEWED", "PURCHASED", "VIEWED"]
    assert all(r["path"][0] == {"user_id": "u1"} and r["path"][2]["product_id"] == "p1" for r in history)

    hood = neo4j_store._read(q["category_neighbourhood"], category_id="Home")
    assert len(hood) == 3  # one row per product under Home (via Kitchen)

    recs = neo4j_store._read(q["recommendations_with_reasons"], user_id="u1")
    assert len(recs) == 1
    rec = recs[0]
    assert (rec["product_id"], rec["rank"], rec["model_version"]) == ("p3", 1, "v1")
    assert rec["because_you_saw"] == ["Red Mug"]
    assert sorted(rec["via"]) == ["Acme", "Kitchen"]


def test_browser_similar_products(neo4j_store, bolt_target):
    if bolt_target.falkordb:
        pytest.skip("similar_products calls Neo4j's db.index.vector.queryNodes; FalkorDB has another procedure")
    _browser_graph(neo4j_store)
    q = cypher.BROWSER_QUERIES
    neo4j_store.write_embeddings("Product", ["p1", "p2", "p3"], [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    neo4j_store.create_vector_index("Product", "embedding", dim=2)
    similar = neo4j_store._read(q["similar_products"], product_id="p1", k=1)
    assert [r["product_id"] for r in similar] == ["p3"]
