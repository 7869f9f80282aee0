"""Relationship types that come with data: clean Cypher 5 (linted), and a Neo4j store takes them through the
same Python path as ``kgrec ingest --store neo4j`` (sources.discover + the Ingestor)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.sources import discover
from kgrec.kg import cypher, schema
from kgrec.kg.neo4j_store import (
    ENV_AUTH,
    ENV_DATABASE,
    ENV_DIALECT,
    ENV_PASSWORD,
    ENV_URI,
    ENV_USER,
    FALKORDB_BATCH_BYTES,
    Neo4jConfig,
    Neo4jConfigError,
    Neo4jStore,
    _batches,
)
from kgrec.kg.schema import NODE_TYPES, REL_TYPES, register_relation, relation_type_name

TOOL = Path(__file__).resolve().parents[2] / "tools" / "cypher-lint"
RAW = ["film.film.directed_by", "madeOf", "0", "IN_CATEGORY", "x]->() DETACH DELETE n //"]


def _lint(statements: list[cypher.Statement], rels: list[str]) -> dict[str, list]:
    if shutil.which("node") is None or not (TOOL / "node_modules" / "@neo4j-cypher").is_dir():
        if os.environ.get("CI"):
            pytest.fail("Cypher linter unavailable under CI", pytrace=False)
        pytest.skip("Cypher linter not installed (`make setup`)")
    keys = {nt.key for nt in NODE_TYPES.values()} | {k for rt in REL_TYPES.values() for k in rt.key}
    payload = {
        "schema": {"labels": sorted(NODE_TYPES), "relationshipTypes": sorted([*REL_TYPES, *rels]),
                   "propertyKeys": sorted(keys | set(cypher.ROW_FIELDS))},
        "statements": [{"name": s.name, "query": s.text, "parameters": list(s.parameters)} for s in statements],
    }
    proc = subprocess.run(["node", str(TOOL / "lint.mjs")], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r["diagnostics"] for r in json.loads(proc.stdout)}


def test_data_defined_relations_give_clean_cypher():
    rels = [register_relation(relation_type_name(raw)).name for raw in RAW]
    assert rels == ["FILM_FILM_DIRECTED_BY", "MADE_OF", "R_0", "KG_IN_CATEGORY", "X_DETACH_DELETE_N"]
    statements = [s for rel in rels for s in (cypher.upsert_edges(rel), cypher.read_edges(rel), cypher.count_edges(rel))]
    statements += [cypher.upsert_nodes(label) for label in ("Entity", "Query", "KgRelation")]
    statements += [cypher.upsert_edges(rel) for rel in ("DESCRIBES", "JUDGED")]
    found = _lint(statements, rels)
    assert all(found[s.name] == [] for s in statements), {k: v for k, v in found.items() if v}
    assert "(a:`Entity` {`entity_id`: row.source})" in cypher.upsert_edges("MADE_OF").text


def _write_recbole(folder: Path) -> dict[str, int]:
    """A RecBole data set with a knowledge graph: 6 users, 8 items, 3 relations."""
    folder.mkdir(parents=True)
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"u{u}\t{(u + k) % 8}\t{1 + (u + k) % 5}.0\t{1_600_000_000 + 100 * k + u}\n" for u in range(6) for k in range(3)))
    (folder / "toy.item").write_text("item_id:token\tmovie_title:token_seq\n" + "".join(f"{i}\tmovie {i}\n" for i in range(8)))
    (folder / "toy.link").write_text("item_id:token\tentity_id:token\n" + "".join(f"{i}\tm.{i}\n" for i in range(8)))
    triples = [(f"m.{i}", "film.film.directed_by", f"d.{i % 3}") for i in range(8)]
    triples += [(f"m.{i}", "film.film.genre", f"g.{i % 2}") for i in range(8)]
    triples += [(f"m.{i}", "starring", f"a.{i % 4}") for i in range(0, 8, 2)]
    (folder / "toy.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n" + "".join("\t".join(t) + "\n" for t in triples))
    return {"FILM_FILM_DIRECTED_BY": 8, "FILM_FILM_GENRE": 8, "STARRING": 4}


def _cli_config(bolt_target) -> Neo4jConfig:
    """The config ``kgrec ingest --store neo4j`` reads from the environment, for the session's server."""
    c = bolt_target.config
    env = {ENV_URI: c.uri, ENV_DIALECT: c.dialect, **({ENV_DATABASE: c.database} if c.database else {})}
    env.update({ENV_AUTH: "none"} if c.user is None else {ENV_USER: c.user, ENV_PASSWORD: c.password or ""})
    return Neo4jConfig.from_env(env)


def test_recbole_folder_with_a_kg_into_neo4j_as_the_cli_does(bolt_target, neo4j_store, tmp_path):
    """discover + Ingestor into a Neo4jStore built like the CLI's (config from the environment, default
    batching); the session's driver stands in for the CLI's own (the test server hangs new handshakes)."""
    relations = _write_recbole(tmp_path / "toy")
    expected = {label: 0 for label in NODE_TYPES} | {rel: 0 for rel in REL_TYPES} | relations | {
        "Product": 8, "User": 6, "Entity": 8 + 3 + 2 + 2, "KgRelation": 3, "DESCRIBES": 8, "RATED": 18}
    saved = dict(schema.KG_RELATIONS)
    try:
        with bolt_target.reachable():
            for run in ("first", "again in a fresh process"):
                schema.KG_RELATIONS.clear()  # a new process knows no data-defined type until it reads the store's
                store = Neo4jStore(_cli_config(bolt_target), driver=bolt_target.driver)
                found = discover([tmp_path / "toy"])
                assert sorted(s.kind for s in found.sources) == ["interaction", "link", "product", "triple"]
                report = Ingestor(store, IngestConfig(state_dir=tmp_path / "state", dangling=found.dangling)).run(found.sources)
                assert report.errors == [] and report.rejected == 0, run
                assert (report.read, report.loaded) == (8 + 8 + 20 + 18, 8 + 8 + 20 + 18), run
                assert report.counts_after == expected, run
                assert store.counts() == expected
                assert sorted(store.kg_relations()) == sorted(relations)
                if run == "first":
                    assert report.added() == expected
                else:
                    assert set(report.added().values()) == {0}
                store.close()
            assert sorted(map(tuple, neo4j_store.edges("STARRING")[["source", "target"]].to_numpy())) == [
                ("m.0", "a.0"), ("m.2", "a.2"), ("m.4", "a.0"), ("m.6", "a.2")]
    finally:
        schema.KG_RELATIONS.clear()
        schema.KG_RELATIONS.update(saved)


def test_config_for_a_server_without_authentication():
    config = Neo4jConfig.from_env({ENV_URI: "bolt://127.0.0.1:7687", ENV_AUTH: "none"})
    assert (config.auth, config.user) == (None, None)
    with pytest.raises(Neo4jConfigError, match=ENV_USER):
        Neo4jConfig.from_env({ENV_URI: "bolt://127.0.0.1:7687"})
    with pytest.raises(Neo4jConfigError, match=ENV_AUTH):
        Neo4jConfig.from_env({ENV_URI: "bolt://127.0.0.1:7687", ENV_AUTH: "kerberos"})


def test_falkordb_batches_stay_under_its_parameter_limit():
    rows = [{"key": f"p{i}", "props": {"title": "x" * (i % 300)}} for i in range(400)]
    batches = list(_batches(rows, 5000, FALKORDB_BATCH_BYTES))
    assert [r for b in batches for r in b] == rows
    assert all(len(json.dumps(b)) <= FALKORDB_BATCH_BYTES + 2 * len(b) for b in batches) and len(batches) > 10
    big = [{"key": "p", "props": {"title": "y" * 5000}}]
    assert list(_batches(big + rows[:2], 5000, FALKORDB_BATCH_BYTES)) == [big, rows[:2]]
    assert list(_batches(rows, 150)) == [rows[:150], rows[150:300], rows[300:]]
