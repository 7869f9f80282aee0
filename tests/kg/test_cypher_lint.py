"""Every Cypher statement of kg/cypher.py, checked by Neo4j's own Cypher 5 front end.

``tools/cypher-lint`` runs ``lintCypherQuery`` of ``@neo4j-cypher/language-support``
(parser + semantic analysis, offline) against the schema's labels, relationship
types and property keys, Neo4j's catalogue of built-in functions and procedures,
and exactly the parameters each statement declares. Any diagnostic fails the test:
errors (syntax, semantics, unknown procedure/function, undeclared parameter) and
warnings (unknown label, relationship type or property key, deprecations).

The linter needs ``tools/cypher-lint/node_modules`` (``.ci/setup-neo4j-test-deps.sh``
installs it). Without it the lint tests are skipped, except under CI, where they fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kgrec.kg import cypher
from kgrec.kg.schema import NODE_TYPES, REL_TYPES, SchemaError

TOOL = Path(__file__).resolve().parents[2] / "tools" / "cypher-lint"
PACKAGE = TOOL / "node_modules" / "@neo4j-cypher" / "language-support"


def _linter_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not PACKAGE.is_dir():
        return f"{PACKAGE.relative_to(TOOL.parents[1])} is missing: run `make setup`"
    return None


def lint_schema() -> dict:
    """Names the linter may see: everything in kgrec.kg.schema plus the store's own additions."""
    property_keys = {nt.key for nt in NODE_TYPES.values()}
    property_keys |= {k for rt in REL_TYPES.values() for k in rt.key}
    # Properties written from the catalogue (ingest/load.py) and by the Neo4j store.
    property_keys |= {"title", "brand", "category_path", "name", "level", "embedding", "score", "rank"}
    property_keys |= set(cypher.ROW_FIELDS)
    return {
        "labels": sorted(NODE_TYPES),
        "relationshipTypes": sorted([*REL_TYPES, cypher.RECOMMENDED.name]),
        "propertyKeys": sorted(property_keys),
    }


def run_linter(statements: list[tuple[str, str, list[str]]]) -> dict[str, list[dict]]:
    """Diagnostics per statement name, for ``(name, query, parameters)`` triples."""
    missing = _linter_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"Cypher linter unavailable under CI: {missing}", pytrace=False)
        pytest.skip(missing)
    payload = {
        "schema": lint_schema(),
        "statements": [{"name": n, "query": q, "parameters": list(p)} for n, q, p in statements],
    }
    proc = subprocess.run(
        ["node", str(TOOL / "lint.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"linter failed:\n{proc.stderr}"
    return {r["name"]: r["diagnostics"] for r in json.loads(proc.stdout)}


def _statements() -> list[cypher.Statement]:
    return [*cypher.all_statements("neo4j"), *cypher.BROWSER_QUERIES.values()]


BROKEN = {
    "syntax": ("MATCH (n:`Product`) RETRN n", [], "Invalid input 'RETRN'"),
    "semantics": ("MATCH (n:`Product`) RETURN m", [], "Variable `m` not defined"),
    "parameter": ("MATCH (n:`Product` {`product_id`: $nope}) RETURN n", [], "Parameter $nope is not defined"),
    "label": ("MATCH (n:`Prodcut`) RETURN n", [], "Label `Prodcut` is not present"),
    "procedure": (
        "CALL db.index.vector.queryNodez('x', 1, [1.0]) YIELD node RETURN node",
        [],
        "db.index.vector.queryNodez is not present",
    ),
    "type": ("UNWIND $rows AS row MERGE (n:`Product` {`product_id`: row.key}) SET n += 5", ["rows"], "Type mismatch"),
}


@pytest.fixture(scope="module")
def diagnostics() -> dict[str, list[dict]]:
    """One linter run for the real statements and the deliberately broken ones (``broken:NAME``)."""
    real = [(s.name, s.text, s.parameters) for s in _statements()]
    broken = [(f"broken:{name}", query, params) for name, (query, params, _) in BROKEN.items()]
    return run_linter(real + broken)


@pytest.mark.parametrize("statement", _statements(), ids=lambda s: s.name)
def test_statement_is_clean_cypher5(statement: cypher.Statement, diagnostics):
    found = diagnostics[statement.name]
    assert found == [], f"{statement.text}\n" + "\n".join(
        f"{d['severity']} at {d['start']}: {d['message']}" for d in found
    )


def test_every_schema_name_has_statements():
    names = {s.name for s in cypher.all_statements("neo4j")}
    for label in NODE_TYPES:
        assert {f"upsert_nodes:{label}", f"read_nodes:{label}", f"count_nodes:{label}", f"constraint:{label}"} <= names
    for rel in REL_TYPES:
        assert {f"upsert_edges:{rel}", f"read_edges:{rel}", f"count_edges:{rel}"} <= names


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_linter_catches_broken_statements(case, diagnostics):
    """Proof that the linter runs and reports: each broken statement gets its diagnostic."""
    expect = BROKEN[case][2]
    found = diagnostics[f"broken:{case}"]
    assert any(expect in d["message"] for d in found), found


@pytest.mark.parametrize(
    "build",
    [
        lambda: cypher.upsert_nodes("Product) DETACH DELETE n //"),
        lambda: cypher.upsert_edges("PURCHASED]->() DETACH DELETE n //"),
        lambda: cypher.vector_index("Product", "embedding` ) DROP INDEX x //", 4),
        lambda: cypher.write_embeddings("Product", "x}) DETACH DELETE n //"),
        lambda: cypher.ident("a`b"),
    ],
)
def test_builders_reject_names_outside_schema(build):
    with pytest.raises(SchemaError):
        build()


@pytest.mark.parametrize("dim", [0, -3, 4097, 3.0, "384", True, "384}}) DROP INDEX x //"])
def test_vector_dimension_must_be_a_plain_int(dim):
    with pytest.raises(ValueError):
        cypher.vector_index("Product", "embedding", dim)


def test_similarity_is_whitelisted():
    with pytest.raises(ValueError):
        cypher.vector_index("Product", "embedding", 8, similarity="cosine'}} //")


def test_statement_declares_exactly_its_parameters():
    with pytest.raises(AssertionError):
        cypher.Statement("x", "RETURN $a AS a", ("a", "b"))
    with pytest.raises(AssertionError):
        cypher.Statement("x", "RETURN $a AS a")


def test_falkordb_dialect_differs_only_where_expected():
    neo = {s.name: s.text for s in cypher.all_statements("neo4j")}
    falk = {s.name: s.text for s in cypher.all_statements("falkordb")}
    differing = {n for n in neo.keys() & falk.keys() if neo[n] != falk[n]}
    assert differing == {
        "list_indexes",
        "vector_index:Product.embedding",
        "write_embeddings:Product.embedding",
        "similar_nodes:Product.embedding",
        "drop_vector_index:Product.embedding",
    }
    assert {n for n in neo if n.startswith("constraint:")} == {f"constraint:{label}" for label in NODE_TYPES}
    assert {n for n in falk if n.startswith("index:")} == {f"index:{label}" for label in NODE_TYPES}


def test_docs_show_the_browser_queries_unchanged():
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "neo4j.md").read_text()
    blocks = [" ".join(b.split()) for b in re.findall(r"```cypher\n(.*?)```", doc, flags=re.S)]
    for statement in cypher.BROWSER_QUERIES.values():
        assert " ".join(statement.text.split()) in blocks, f"docs/neo4j.md lacks {statement.name}"
