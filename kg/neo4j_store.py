"""The Neo4j store: the knowledge graph in a Neo4j 5 database, where users inspect it.

Connection settings come from the environment (see :meth:`Neo4jConfig.from_env`)::

    KGREC_NEO4J_URI       bolt://localhost:7687 or neo4j://host:7687   (required)
    KGREC_NEO4J_USER      database user                               (required)
    KGREC_NEO4J_PASSWORD  its password                                (required; no default)
    KGREC_NEO4J_DATABASE  database name; unset = the server's default
    KGREC_NEO4J_DIALECT   "neo4j" (default) or "falkordb"
    KGREC_NEO4J_AUTH      "basic" (default: user and password) or "none" for a server
                          without authentication (user and password then unused)

Writes are batched ``UNWIND $rows AS row MERGE ...`` statements (see
:mod:`kgrec.kg.cypher`; the ``falkordb`` dialect also cuts batches at
:data:`FALKORDB_BATCH_BYTES` of parameters, which that server cannot take more of),
each batch in a managed write transaction
(``session.execute_write``), which the driver retries on transient errors; a
batch is idempotent, so a retry is safe. Labels, relationship types and
property keys come from :mod:`kgrec.kg.schema` only; values only travel as
parameters.

Besides the :class:`~kgrec.kg.store.GraphStore` contract, the store writes what users
want to look at next to the catalogue: product embeddings with a vector index
(:meth:`Neo4jStore.write_embeddings`, :meth:`Neo4jStore.create_vector_index`)
and model output as ``(:User)-[:RECOMMENDED {score, rank, model_version}]->(:Product)``
(:meth:`Neo4jStore.write_recommendations`).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kgrec.kg import cypher
from kgrec.kg.cypher import RECOMMENDATION_COLUMNS, RECOMMENDED, Statement
from kgrec.kg.schema import NODE_TYPES, REL_TYPES, check_identifier, node_type, register_relations, rel_type
from kgrec.kg.store import GraphStore, edge_identity, validate_edge_frame, validate_node_frame

ENV_URI = "KGREC_NEO4J_URI"
ENV_USER = "KGREC_NEO4J_USER"
ENV_PASSWORD = "KGREC_NEO4J_PASSWORD"
ENV_DATABASE = "KGREC_NEO4J_DATABASE"
ENV_DIALECT = "KGREC_NEO4J_DIALECT"
ENV_AUTH = "KGREC_NEO4J_AUTH"
#: Most bytes of row parameters (as JSON) one batch sends to a ``falkordb`` server: its Bolt
#: endpoint crashes on parameters of about 4 KB.
FALKORDB_BATCH_BYTES = 3000


class Neo4jConfigError(RuntimeError):
    """A required connection setting is missing."""


@dataclass(frozen=True)
class Neo4jConfig:
    """Where and how to connect.

    ``user``/``password`` may both be ``None`` for a server without
    authentication (the FalkorDB test server); :meth:`from_env` requires them.
    """

    uri: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    dialect: str = "neo4j"

    def __post_init__(self) -> None:
        cypher.check_dialect(self.dialect)
        if (self.user is None) != (self.password is None):
            raise Neo4jConfigError("give both user and password, or neither")

    @property
    def auth(self) -> tuple[str, str] | None:
        return None if self.user is None else (self.user, self.password or "")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Neo4jConfig:
        """Read the ``KGREC_NEO4J_*`` variables (see module docstring).

        Raises:
            Neo4jConfigError: naming the first required variable that is unset or empty.
        """
        env = os.environ if environ is None else environ
        auth = (env.get(ENV_AUTH) or "basic").strip().lower()
        if auth not in ("basic", "none"):
            raise Neo4jConfigError(f"{ENV_AUTH} must be 'basic' or 'none', got {env.get(ENV_AUTH)!r}")

        def required(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise Neo4jConfigError(
                    f"environment variable {name} is not set; set {ENV_URI}, {ENV_USER} and "
                    f"{ENV_PASSWORD} (see docs/neo4j.md and .env.example)"
                )
            return value

        uri = required(ENV_URI)
        return cls(
            uri=uri,
            user=None if auth == "none" else required(ENV_USER),
            password=None if auth == "none" else required(ENV_PASSWORD),
            database=env.get(ENV_DATABASE) or None,
            dialect=env.get(ENV_DIALECT) or "neo4j",
        )


class Neo4jStore(GraphStore):
    """A knowledge graph in Neo4j (or a Bolt server speaking the ``falkordb`` dialect).

    Args:
        config: connection settings; ``None`` reads them from the environment.
        batch_size: rows per ``UNWIND`` batch (one write transaction each).
        driver: an existing ``neo4j.Driver`` to use instead of opening one (not
            closed by :meth:`close`).
        driver_options: extra keyword arguments for ``neo4j.GraphDatabase.driver``.
    """

    def __init__(
        self,
        config: Neo4jConfig | None = None,
        *,
        batch_size: int = 5000,
        driver: Any = None,
        driver_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.config = config if config is not None else Neo4jConfig.from_env()
        self.dialect = self.config.dialect
        self.batch_size = batch_size
        self._owns_driver = driver is None
        if driver is None:
            import neo4j

            driver = neo4j.GraphDatabase.driver(self.config.uri, auth=self.config.auth, **(driver_options or {}))
        self._driver = driver
        self._schema_ready = False

    def check_connection(self) -> None:
        """Reach the server once now (no transaction retries): raises the driver's
        ``ServiceUnavailable`` / ``AuthError`` for a server that is down or refuses the credentials."""
        self._driver.verify_connectivity()

    # -- plumbing ------------------------------------------------------------------
    def _session(self, write: bool = False) -> Any:
        import neo4j

        mode = neo4j.WRITE_ACCESS if write else neo4j.READ_ACCESS
        return self._driver.session(database=self.config.database, default_access_mode=mode)

    def _read(self, statement: Statement, **params: Any) -> list[dict[str, Any]]:
        def work(tx: Any) -> list[dict[str, Any]]:
            return tx.run(statement.text, params).data()

        with self._session() as session:
            return session.execute_read(work)

    def _write(self, statement: Statement, **params: Any) -> list[dict[str, Any]]:
        def work(tx: Any) -> list[dict[str, Any]]:
            return tx.run(statement.text, params).data()

        with self._session(write=True) as session:
            return session.execute_write(work)

    @property
    def _batch_bytes(self) -> int | None:
        return FALKORDB_BATCH_BYTES if self.dialect == "falkordb" else None

    def _write_batches(self, statement: Statement, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._session(write=True) as session:
            for batch in _batches(rows, self.batch_size, self._batch_bytes):
                out += session.execute_write(lambda tx, b=batch: tx.run(statement.text, rows=b).data())
        return out

    # -- schema ----------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create a uniqueness constraint per node label key (Neo4j) or a key index (FalkorDB).

        Idempotent: Neo4j statements use ``IF NOT EXISTS``; for FalkorDB existing
        indexes are listed first (its DDL has no ``IF NOT EXISTS``).
        """
        if self.dialect == "neo4j":
            for statement in cypher.schema_statements("neo4j"):
                self._write(statement)
        else:
            existing = self._falkordb_indexes()
            for label in NODE_TYPES:
                if node_type(label).key not in existing.get(label, set()):
                    self._write(cypher.node_key_index_falkordb(label))
        self._schema_ready = True

    def _falkordb_indexes(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for row in self._read(cypher.list_indexes("falkordb")):
            out.setdefault(row["label"], set()).update(row["properties"])
        return out

    def _ensure_schema_once(self) -> None:
        if not self._schema_ready:
            self.ensure_schema()

    # -- contract ----------------------------------------------------------------------
    def upsert_nodes(self, label: str, frame: pd.DataFrame) -> int:
        frame = validate_node_frame(label, frame)
        statement = cypher.upsert_nodes(label)
        key = node_type(label).key
        rows = [{"key": r[key], "props": r} for r in _records(frame)]
        self._ensure_schema_once()
        self._write_batches(statement, rows)
        return len(rows)

    def upsert_edges(self, rel: str, frame: pd.DataFrame) -> int:
        frame = validate_edge_frame(rel, frame)  # single-valued types: one row per source
        written = len(frame)
        rt = rel_type(rel)
        statement = cypher.upsert_edges(rel)
        if rt.single:
            cleared = frame["target"].isna().to_numpy(dtype=bool)
            if cleared.any():
                self._ensure_schema_once()
                self._write_batches(cypher.remove_edges(rel), [{"source": s} for s in frame.loc[cleared, "source"]])
                frame = frame[~cleared]
        rows = []
        for r in _records(frame):
            source, target = r.pop("source"), r.pop("target")
            missing = [k for k in rt.key if r.get(k) is None]
            if missing:
                raise ValueError(f"{rel} row {source}->{target} has no value for key {missing}")
            rows.append({"source": source, "target": target, "key": {k: r[k] for k in rt.key}, "props": r})
        self._ensure_schema_once()
        self._write_batches(statement, rows)
        return written

    def nodes(self, label: str) -> pd.DataFrame:
        key = node_type(label).key
        props = [row["props"] for row in self._read(cypher.read_nodes(label))]
        return _frame(props, [key])

    def edges(self, rel: str) -> pd.DataFrame:
        ident = edge_identity(rel) if rel != RECOMMENDED.name else ["source", "target", *RECOMMENDED.key]
        rows = [
            {"source": row["source"], "target": row["target"], **row["props"]}
            for row in self._read(cypher.read_edges(rel))
        ]
        return _frame(rows, ident, sort=ident)

    def counts(self) -> dict[str, int]:
        """Nodes per label, edges per static and data-defined relationship type (as the embedded store)."""
        out = {label: self._read(cypher.count_nodes(label))[0]["n"] for label in NODE_TYPES}
        out.update({rel: self._read(cypher.count_edges(rel))[0]["n"] for rel in REL_TYPES})
        out.update({rel: self._read(cypher.count_edges(rel))[0]["n"] for rel in self.kg_relations()})
        return out

    def kg_relations(self) -> list[str]:
        """Data-defined relationship types of this database (its ``KgRelation`` nodes), registered."""
        key = node_type("KgRelation").key
        frame = self.nodes("KgRelation")
        if not len(frame):
            return []
        return sorted(register_relations(frame[key].astype(str)))

    def close(self) -> None:
        if self._owns_driver and self._driver is not None:
            self._driver.close()
        self._driver = None

    # -- beyond the contract -------------------------------------------------------------
    def clear(self) -> None:
        """Delete every node and relationship of the configured database. Irreversible."""
        self._write(cypher.delete_all())

    def write_embeddings(
        self, label: str, ids: Sequence[object], vectors: Any, property: str = "embedding"
    ) -> int:
        """Store one vector per node as ``property``; return how many nodes were found.

        Args:
            ids: node keys of ``label``.
            vectors: array-like ``[len(ids), dim]`` of finite floats.
        """
        import numpy as np

        check_identifier(property, "property key")
        matrix = np.asarray(vectors, dtype=float)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"vectors must have shape [{len(ids)}, dim], got {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("vectors contain NaN or infinity")
        rows = [{"id": str(i), "vector": v} for i, v in zip(ids, matrix.tolist())]
        result = self._write_batches(cypher.write_embeddings(label, property, self.dialect), rows)
        return int(sum(r["written"] for r in result))

    def create_vector_index(
        self, label: str, property: str = "embedding", dim: int = 384, similarity: str = "cosine"
    ) -> str:
        """Create the vector index on ``label.property`` if missing and wait until it is online.

        Returns:
            the index name (``kgrec_<label>_<property>``).

        Raises:
            ValueError: (Neo4j) an index of that name exists with another dimension;
                drop it first (:meth:`drop_vector_index`).
        """
        statement = cypher.vector_index(label, property, dim, similarity, self.dialect)
        name = cypher.vector_index_name(label, property)
        if self.dialect == "neo4j":
            self._write(statement)
            self._write(cypher.await_indexes())
            for row in self._read(cypher.vector_index_options(), name=name):
                config = (row.get("options") or {}).get("indexConfig") or {}
                existing = config.get("vector.dimensions")
                if existing is not None and int(existing) != dim:
                    raise ValueError(f"vector index {name} exists with dimension {existing}, not {dim}")
            return name
        if property not in self._falkordb_indexes().get(node_type(label).label, set()):
            self._write(statement)
        # FalkorDB can fail a query issued right after the index is created: wait until one runs.
        probe = cypher.similar_nodes(label, property, self.dialect)
        for attempt in range(50):
            try:
                self._read(probe, k=1, vector=[1.0] * dim)
                break
            except Exception:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        return name

    def drop_vector_index(self, label: str, property: str = "embedding") -> None:
        """Drop the vector index on ``label.property`` if there is one (the vectors stay)."""
        if self.dialect == "falkordb" and property not in self._falkordb_indexes().get(node_type(label).label, set()):
            return
        self._write(cypher.drop_vector_index(label, property, self.dialect))

    def similar(self, label: str, vector: Sequence[float], k: int = 10, property: str = "embedding") -> pd.DataFrame:
        """The ``k`` nodes nearest to ``vector``: frame of ``id`` and ``score``.

        Neo4j scores similarity (descending); FalkorDB distance (ascending).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        rows = self._read(
            cypher.similar_nodes(label, property, self.dialect), k=k, vector=[float(x) for x in vector]
        )
        return pd.DataFrame(rows, columns=["id", "score"])

    def write_recommendations(self, frame: pd.DataFrame, replace: bool = True) -> int:
        """Write model output as ``(:User)-[:RECOMMENDED {score, rank, model_version}]->(:Product)``.

        Args:
            frame: columns ``user_id``, ``product_id``, ``score``, ``rank``, ``model_version``.
            replace: first delete the earlier recommendations of the same model
                version for the users in ``frame`` (a rerun does not leave stale edges).

        Returns:
            the number of rows written.
        """
        missing = set(RECOMMENDATION_COLUMNS) - set(frame.columns)
        if missing:
            raise ValueError(f"recommendation frame lacks columns {sorted(missing)}")
        frame = frame[list(RECOMMENDATION_COLUMNS)].copy()
        for column in ("user_id", "product_id", "model_version"):
            if frame[column].isna().any():
                raise ValueError(f"recommendation frame has empty {column!r} values")
            frame[column] = frame[column].astype(str)
        if frame.duplicated(["user_id", "product_id", "model_version"]).any():
            raise ValueError("recommendation frame repeats a (user_id, product_id, model_version)")
        frame["score"] = frame["score"].astype(float)
        frame["rank"] = frame["rank"].astype(int)
        self._ensure_schema_once()
        if replace:
            delete = cypher.delete_recommendations()
            for version, part in frame.groupby("model_version", sort=True):
                users = sorted(part["user_id"].unique().tolist())
                for batch in _batches(users, self.batch_size, self._batch_bytes):
                    self._write(delete, users=batch, model_version=version)
        rows = _records(frame)
        self._write_batches(cypher.write_recommendations(), rows)
        return len(rows)

    def recommendations(self) -> pd.DataFrame:
        """All ``RECOMMENDED`` edges as ``user_id, product_id, score, rank, model_version``."""
        edges = self.edges(RECOMMENDED.name).rename(columns={"source": "user_id", "target": "product_id"})
        for column in RECOMMENDATION_COLUMNS:
            if column not in edges.columns:
                edges[column] = pd.Series(dtype=object)
        return edges[list(RECOMMENDATION_COLUMNS)].sort_values(["model_version", "user_id", "rank"], ignore_index=True)


def _batches(rows: list[Any], size: int, max_bytes: int | None = None) -> Iterator[list[Any]]:
    """Consecutive batches of at most ``size`` rows and, with ``max_bytes``, about that many
    bytes of JSON (a row larger than that goes alone)."""
    if max_bytes is None:
        for start in range(0, len(rows), size):
            yield rows[start : start + size]
        return
    batch: list[Any] = []
    used = 0
    for row in rows:
        cost = len(json.dumps(row, default=str))
        if batch and (len(batch) >= size or used + cost > max_bytes):
            yield batch
            batch, used = [], 0
        batch.append(row)
        used += cost
    if batch:
        yield batch


def _plain(value: Any) -> Any:
    """A driver-serialisable Python value; NaN/NA -> None (``SET +=`` then removes the property)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = {c: [_plain(v) for v in frame[c].tolist()] for c in frame.columns}
    return [{c: columns[c][i] for c in frame.columns} for i in range(len(frame))]


def _frame(rows: list[dict[str, Any]], first: list[str], sort: list[str] | None = None) -> pd.DataFrame:
    """Rows as a frame: ``first`` columns, then the other properties in name order."""
    others = sorted({k for row in rows for k in row} - set(first))
    frame = pd.DataFrame(rows, columns=[*first, *others])
    if rows:
        frame = frame.sort_values(sort or first, ignore_index=True)
    return frame
