"""Every Cypher statement the Neo4j store sends, built from the schema.

Labels, relationship types and property keys enter a statement only through
:func:`ident`, which accepts a name only if :func:`kgrec.kg.schema.check_identifier`
does and then backtick-quotes it; node labels and relationship types are first
looked up in :mod:`kgrec.kg.schema`. Values are never formatted into a statement:
they travel as parameters (``$rows``, ``$user_id`` ...). The one exception is
the vector dimension of an index, which Neo4j wants as a literal in
``OPTIONS``; it is validated as a positive ``int`` before it is written.

Each builder returns a :class:`Statement` that names its parameters, so the
lint test (``tests/kg/test_cypher_lint.py``) can check with Neo4j's own Cypher
front end that each statement parses, passes semantic analysis and uses exactly
the parameters it declares. :func:`all_statements` enumerates everything a store
can emit for every label and relationship type of the schema.

Two dialects are built: ``"neo4j"`` (Neo4j 5, the product target; linted) and
``"falkordb"`` (FalkorDB's Bolt endpoint, used by the tests as a stand-in
server; it differs only in index DDL and vector functions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from kgrec.kg.schema import (
    NODE_TYPES,
    REL_TYPES,
    RelType,
    check_identifier,
    interaction_types,
    node_type,
    rel_type,
)

DIALECTS = ("neo4j", "falkordb")

#: Model output in the graph: ``(:User)-[:RECOMMENDED {score, rank, model_version}]->(:Product)``.
#: Not part of ``kgrec.kg.schema.REL_TYPES`` (no store contract, no export): one edge per
#: (user, product, model_version).
RECOMMENDED = RelType("RECOMMENDED", "User", "Product", key=("model_version",))
RECOMMENDATION_COLUMNS = ("user_id", "product_id", "score", "rank", "model_version")

#: Keys of the row maps sent in ``$rows`` (for the linter's property-key list).
ROW_FIELDS = ("key", "props", "source", "target", "id", "vector", *RECOMMENDATION_COLUMNS)

VECTOR_SIMILARITIES = ("cosine", "euclidean")

_PARAM = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Statement:
    """A Cypher statement and the names of the parameters it expects."""

    name: str
    text: str
    parameters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        used = set(_PARAM.findall(self.text))
        if used != set(self.parameters):
            raise AssertionError(
                f"statement {self.name}: declares {sorted(self.parameters)} but uses {sorted(used)}"
            )


def check_dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown Cypher dialect {dialect!r}; known: {list(DIALECTS)}")
    return dialect


def ident(name: str, what: str = "identifier") -> str:
    """A schema-checked identifier, backtick-quoted for Cypher."""
    return f"`{check_identifier(name, what)}`"


def _rel(name: str) -> RelType:
    if name == RECOMMENDED.name:
        return RECOMMENDED
    return rel_type(name)


def _endpoints(rt: RelType) -> tuple[str, str, str, str]:
    s, t = node_type(rt.source), node_type(rt.target)
    return ident(s.label, "label"), ident(s.key, "key"), ident(t.label, "label"), ident(t.key, "key")


# -- schema -------------------------------------------------------------------------


def constraint_name(label: str) -> str:
    nt = node_type(label)
    return check_identifier(f"kgrec_{nt.label}_{nt.key}_unique".lower(), "constraint name")


def node_key_constraint(label: str) -> Statement:
    """Neo4j 5: a uniqueness constraint on the label's key (also an index for MERGE)."""
    nt = node_type(label)
    return Statement(
        f"constraint:{nt.label}",
        f"CREATE CONSTRAINT {ident(constraint_name(label), 'constraint name')} IF NOT EXISTS "
        f"FOR (n:{ident(nt.label, 'label')}) REQUIRE n.{ident(nt.key, 'key')} IS UNIQUE",
    )


def node_key_index_falkordb(label: str) -> Statement:
    """FalkorDB: an exact-match index on the key (unique constraints are not Cypher there)."""
    nt = node_type(label)
    return Statement(
        f"index:{nt.label}",
        f"CREATE INDEX FOR (n:{ident(nt.label, 'label')}) ON (n.{ident(nt.key, 'key')})",
    )


def list_indexes(dialect: str) -> Statement:
    if check_dialect(dialect) == "neo4j":
        return Statement("list_indexes", "SHOW INDEXES YIELD name, labelsOrTypes, properties RETURN name, labelsOrTypes, properties")
    return Statement("list_indexes", "CALL db.indexes() YIELD label, properties RETURN label, properties")


def drop_vector_index(label: str, prop: str, dialect: str = "neo4j") -> Statement:
    """Drop the vector index on ``label.prop`` (Neo4j: if it exists; FalkorDB: it must exist)."""
    if check_dialect(dialect) == "neo4j":
        return Statement(
            f"drop_vector_index:{label}.{prop}",
            f"DROP INDEX {ident(vector_index_name(label, prop), 'index name')} IF EXISTS",
        )
    return Statement(
        f"drop_vector_index:{label}.{prop}",
        f"DROP VECTOR INDEX FOR (n:{ident(node_type(label).label, 'label')}) ON (n.{ident(prop, 'property key')})",
    )


def vector_index_options() -> Statement:
    """Neo4j: type and options of the index named ``$name`` (to check a vector index's dimension)."""
    return Statement(
        "vector_index_options",
        "SHOW INDEXES YIELD name, type, options WHERE name = $name RETURN type, options",
        ("name",),
    )


def await_indexes() -> Statement:
    """Neo4j: wait (up to 300 s) until every index is online (vector indexes fill asynchronously)."""
    return Statement("await_indexes", "CALL db.awaitIndexes(300)")


def vector_index_name(label: str, prop: str) -> str:
    return check_identifier(f"kgrec_{node_type(label).label}_{check_identifier(prop, 'property key')}".lower(), "index name")


def _dimension(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 4096:
        raise ValueError(f"vector dimension must be an int in 1..4096, got {dim!r}")
    return dim


def _similarity(similarity: str) -> str:
    if similarity not in VECTOR_SIMILARITIES:
        raise ValueError(f"similarity must be one of {VECTOR_SIMILARITIES}, got {similarity!r}")
    return similarity


def vector_index(label: str, prop: str, dim: int, similarity: str = "cosine", dialect: str = "neo4j") -> Statement:
    """A vector index on ``label.prop`` (dimension and similarity are validated literals)."""
    lab = ident(node_type(label).label, "label")
    p = ident(prop, "property key")
    dim = _dimension(dim)
    similarity = _similarity(similarity)
    if check_dialect(dialect) == "neo4j":
        return Statement(
            f"vector_index:{label}.{prop}",
            f"CREATE VECTOR INDEX {ident(vector_index_name(label, prop), 'index name')} IF NOT EXISTS "
            f"FOR (n:{lab}) ON (n.{p}) OPTIONS {{indexConfig: {{"
            f"`vector.dimensions`: {dim}, `vector.similarity_function`: '{similarity}'}}}}",
        )
    return Statement(
        f"vector_index:{label}.{prop}",
        f"CREATE VECTOR INDEX FOR (n:{lab}) ON (n.{p}) "
        f"OPTIONS {{dimension: {dim}, similarityFunction: '{similarity}'}}",
    )


# -- writes -----------------------------------------------------------------------


def upsert_nodes(label: str) -> Statement:
    """``$rows``: ``[{key, props}]``; props (all columns, key included) replace by ``+=``."""
    nt = node_type(label)
    return Statement(
        f"upsert_nodes:{nt.label}",
        f"UNWIND $rows AS row MERGE (n:{ident(nt.label, 'label')} {{{ident(nt.key, 'key')}: row.key}}) "
        "SET n += row.props",
        ("rows",),
    )


def upsert_edges(rel: str) -> Statement:
    """``$rows``: ``[{source, target, key, props}]``.

    Missing endpoints are created with their key only (an edge is never dropped
    silently). The relationship is merged on the type's key properties
    (``order`` for interactions, so a repeated (user, product) pair with another
    order is another edge), then every property is set from ``props``. For a
    single-valued type (``MADE_BY``, ``IN_CATEGORY``) the source's edges to other
    targets are deleted first; ``$rows`` must then hold one row per source.
    """
    rt = rel_type(rel)
    sl, sk, tl, tk = _endpoints(rt)
    rel_name = ident(rt.name, "relationship type")
    key = ", ".join(f"{ident(k, 'key')}: row.key.{ident(k, 'key')}" for k in rt.key)
    key = f" {{{key}}}" if key else ""
    # a single-valued type: first delete the source's edges to other targets (the rows carry
    # one row per source, so no row of the batch deletes another row's new edge)
    replace = (
        f"WITH a, b, row OPTIONAL MATCH (a)-[old:{rel_name}]->(other:{tl}) WHERE other <> b "
        "WITH a, b, row, collect(old) AS stale FOREACH (x IN stale | DELETE x) "
        if rt.single else ""
    )
    return Statement(
        f"upsert_edges:{rt.name}",
        f"UNWIND $rows AS row MERGE (a:{sl} {{{sk}: row.source}}) MERGE (b:{tl} {{{tk}: row.target}}) "
        f"{replace}MERGE (a)-[r:{rel_name}{key}]->(b) SET r += row.props",
        ("rows",),
    )


def remove_edges(rel: str) -> Statement:
    """A single-valued type: ``$rows`` ``[{source}]`` lose their edge of ``rel`` (e.g. a product's brand)."""
    rt = rel_type(rel)
    if not rt.single:
        raise ValueError(f"{rt.name} is not single-valued: its edges are only ever added or updated")
    sl, sk, tl, _ = _endpoints(rt)
    return Statement(
        f"remove_edges:{rt.name}",
        f"UNWIND $rows AS row MATCH (a:{sl} {{{sk}: row.source}})-[old:{ident(rt.name, 'relationship type')}]->(:{tl}) "
        "DELETE old",
        ("rows",),
    )


def write_embeddings(label: str, prop: str = "embedding", dialect: str = "neo4j") -> Statement:
    """``$rows``: ``[{id, vector}]``; returns how many nodes were found and written."""
    nt = node_type(label)
    value = "row.vector" if check_dialect(dialect) == "neo4j" else "vecf32(row.vector)"
    return Statement(
        f"write_embeddings:{nt.label}.{prop}",
        f"UNWIND $rows AS row MATCH (n:{ident(nt.label, 'label')} {{{ident(nt.key, 'key')}: row.id}}) "
        f"SET n.{ident(prop, 'property key')} = {value} RETURN count(n) AS written",
        ("rows",),
    )


def similar_nodes(label: str, prop: str = "embedding", dialect: str = "neo4j") -> Statement:
    """The ``$k`` nearest nodes to ``$vector`` by the vector index on ``label.prop``.

    Neo4j reports a similarity (higher is closer); FalkorDB a distance (lower is closer).
    """
    nt = node_type(label)
    key = ident(nt.key, "key")
    if check_dialect(dialect) == "neo4j":
        return Statement(
            f"similar_nodes:{nt.label}.{prop}",
            f"CALL db.index.vector.queryNodes('{vector_index_name(label, prop)}', $k, $vector) "
            f"YIELD node, score RETURN node.{key} AS id, score ORDER BY score DESC",
            ("k", "vector"),
        )
    return Statement(
        f"similar_nodes:{nt.label}.{prop}",
        f"CALL db.idx.vector.queryNodes('{nt.label}', '{check_identifier(prop, 'property key')}', $k, "
        f"vecf32($vector)) YIELD node, score RETURN node.{key} AS id, score ORDER BY score ASC",
        ("k", "vector"),
    )


def delete_recommendations() -> Statement:
    """Remove the ``$model_version`` recommendations of the users ``$users``."""
    rt = RECOMMENDED
    sl, sk, tl, _ = _endpoints(rt)
    return Statement(
        "delete_recommendations",
        f"MATCH (u:{sl})-[r:{ident(rt.name)}]->(:{tl}) WHERE u.{sk} IN $users "
        f"AND r.{ident('model_version')} = $model_version DELETE r",
        ("users", "model_version"),
    )


def write_recommendations() -> Statement:
    """``$rows``: ``[{user_id, product_id, score, rank, model_version}]``."""
    rt = RECOMMENDED
    sl, sk, tl, tk = _endpoints(rt)
    return Statement(
        "write_recommendations",
        f"UNWIND $rows AS row MERGE (u:{sl} {{{sk}: row.user_id}}) MERGE (p:{tl} {{{tk}: row.product_id}}) "
        f"MERGE (u)-[r:{ident(rt.name)} {{{ident('model_version')}: row.model_version}}]->(p) "
        f"SET r.{ident('score')} = row.score, r.{ident('rank')} = row.rank",
        ("rows",),
    )


def delete_all() -> Statement:
    """Every node and relationship of the database (tests and ``kgrec`` reloads only)."""
    return Statement("delete_all", "MATCH (n) DETACH DELETE n")


# -- reads -----------------------------------------------------------------------


def read_nodes(label: str) -> Statement:
    nt = node_type(label)
    return Statement(
        f"read_nodes:{nt.label}",
        f"MATCH (n:{ident(nt.label, 'label')}) RETURN properties(n) AS props ORDER BY n.{ident(nt.key, 'key')}",
    )


def read_edges(rel: str) -> Statement:
    rt = _rel(rel)
    sl, sk, tl, tk = _endpoints(rt)
    return Statement(
        f"read_edges:{rt.name}",
        f"MATCH (a:{sl})-[r:{ident(rt.name, 'relationship type')}]->(b:{tl}) "
        f"RETURN a.{sk} AS source, b.{tk} AS target, properties(r) AS props",
    )


def count_nodes(label: str) -> Statement:
    nt = node_type(label)
    return Statement(f"count_nodes:{nt.label}", f"MATCH (n:{ident(nt.label, 'label')}) RETURN count(n) AS n")


def count_edges(rel: str) -> Statement:
    rt = _rel(rel)
    return Statement(
        f"count_edges:{rt.name}", f"MATCH ()-[r:{ident(rt.name, 'relationship type')}]->() RETURN count(r) AS n"
    )


# -- saved queries for Neo4j Browser (docs/neo4j.md) ---------------------------------

_EVENTS = "|".join(ident(r, "relationship type") for r in interaction_types())

BROWSER_QUERIES: dict[str, Statement] = {
    s.name: s
    for s in (
        Statement(
            "user_history",
            "MATCH path = (u:`User` {`user_id`: $user_id})-[r:" + _EVENTS + "]->(p:`Product`) "
            "RETURN path ORDER BY r.`order` LIMIT 100",
            ("user_id",),
        ),
        Statement(
            "category_neighbourhood",
            "MATCH path = (c:`Category` {`category_id`: $category_id})<-[:`SUBCATEGORY_OF`*0..2]-(:`Category`)"
            "<-[:`IN_CATEGORY`]-(p:`Product`) "
            "OPTIONAL MATCH made = (p)-[:`MADE_BY`]->(:`Brand`) "
            "OPTIONAL MATCH up = (c)-[:`SUBCATEGORY_OF`*1..]->(:`Category`) "
            "RETURN path, made, up LIMIT 200",
            ("category_id",),
        ),
        Statement(
            "similar_products",
            "MATCH (p:`Product` {`product_id`: $product_id}) "
            "CALL db.index.vector.queryNodes('" + vector_index_name("Product", "embedding") + "', $k + 1, p.`embedding`) "
            "YIELD node, score WITH p, node, score WHERE node <> p "
            "RETURN node.`product_id` AS product_id, node.`title` AS title, score ORDER BY score DESC LIMIT $k",
            ("product_id", "k"),
        ),
        Statement(
            "recommendations_with_reasons",
            "MATCH (u:`User` {`user_id`: $user_id})-[rec:`RECOMMENDED`]->(p:`Product`) "
            "OPTIONAL MATCH (u)-[:" + _EVENTS + "]->(seen:`Product`)-[:`IN_CATEGORY`|`MADE_BY`]->(shared)"
            "<-[:`IN_CATEGORY`|`MADE_BY`]-(p) "
            "WITH rec, p, collect(DISTINCT seen.`title`) AS seen_titles, "
            "collect(DISTINCT coalesce(shared.`name`, shared.`category_id`)) AS shared_with "
            "RETURN rec.`model_version` AS model_version, rec.`rank` AS rank, p.`product_id` AS product_id, "
            "p.`title` AS title, rec.`score` AS score, seen_titles[..3] AS because_you_saw, "
            "shared_with[..3] AS via ORDER BY model_version DESC, rank ASC",
            ("user_id",),
        ),
    )
}


def schema_statements(dialect: str = "neo4j") -> list[Statement]:
    if check_dialect(dialect) == "neo4j":
        return [node_key_constraint(label) for label in NODE_TYPES]
    return [node_key_index_falkordb(label) for label in NODE_TYPES]


def all_statements(dialect: str = "neo4j", embedding_dim: int = 384) -> list[Statement]:
    """Every statement a :class:`kgrec.kg.neo4j_store.Neo4jStore` can send, for the whole schema.

    Vector statements are built for ``Product.embedding`` with ``embedding_dim``
    (the dimension is the only literal that varies at run time).
    """
    out = [*schema_statements(dialect), list_indexes(dialect), delete_all()]
    for label in NODE_TYPES:
        out += [upsert_nodes(label), read_nodes(label), count_nodes(label)]
    for rel in REL_TYPES:
        out += [upsert_edges(rel), read_edges(rel), count_edges(rel)]
        if REL_TYPES[rel].single:
            out.append(remove_edges(rel))
    out += [
        vector_index("Product", "embedding", embedding_dim, dialect=dialect),
        drop_vector_index("Product", "embedding", dialect=dialect),
        *([await_indexes(), vector_index_options()] if dialect == "neo4j" else []),
        write_embeddings("Product", "embedding", dialect=dialect),
        similar_nodes("Product", "embedding", dialect=dialect),
        write_recommendations(),
        delete_recommendations(),
        read_edges(RECOMMENDED.name),
        count_edges(RECOMMENDED.name),
    ]
    names = [s.name for s in out]
    assert len(names) == len(set(names)), "statement names must be unique"
    return out
