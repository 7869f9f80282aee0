"""Which store a command works on: an embedded store folder, or Neo4j from the environment."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kgrec.kg.store import GraphStore

#: The ``--store`` value that selects Neo4j (connection from ``KGREC_NEO4J_*``).
NEO4J = "neo4j"
STORE_HELP = ("Embedded store folder, or 'neo4j' for the Neo4j server of KGREC_NEO4J_URI / KGREC_NEO4J_USER / "
              "KGREC_NEO4J_PASSWORD (/ KGREC_NEO4J_DATABASE).")


class WorkflowError(ValueError):
    """An expected failure of a workflow step (bad input, data too small, a missing store): the
    message says what and where; the CLI prints it without a traceback."""


def is_neo4j(spec: str | os.PathLike[str]) -> bool:
    return str(spec) == NEO4J


def open_store(spec: str | os.PathLike[str], *, create: bool = False, lock_timeout: float | None = 60.0) -> GraphStore:
    """The store named by ``spec``: ``"neo4j"`` or an embedded store folder.

    Args:
        create: make the folder of an embedded store when it does not exist (ingest); otherwise
            a folder that holds no store raises :class:`WorkflowError`.
        lock_timeout: seconds a writer waits for another process's writer lock on an embedded
            store (None = wait forever; see docs/ingest.md).

    Raises:
        WorkflowError: a path that is a file, a folder that is not a store (and ``create`` is
            False), or a Neo4j configuration that is incomplete.
    """
    if is_neo4j(spec):
        import neo4j.exceptions

        from kgrec.kg.neo4j_store import Neo4jConfigError, Neo4jStore

        try:
            store = Neo4jStore()
        except Neo4jConfigError as exc:
            raise WorkflowError(f"--store neo4j: {exc}") from None
        try:
            store.check_connection()
        except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.AuthError, OSError) as exc:
            store.close()
            raise WorkflowError(f"cannot reach Neo4j at {store.config.uri}: {exc}") from None
        return store
    from kgrec.kg.embedded import EmbeddedStore

    path = Path(spec)
    if path.exists() and not path.is_dir():
        raise WorkflowError(f"{path}: is a file, not a store folder")
    if not create and not (path / "nodes").is_dir():
        raise WorkflowError(f"{path}: no knowledge-graph store here (fill one with `kgrec ingest FILES --store {path}`)")
    try:
        return EmbeddedStore(path, lock_timeout=lock_timeout)
    except OSError as exc:
        raise WorkflowError(f"{path}: cannot open the store ({exc.strerror or exc})") from None


def ingest_state_dir(spec: str | os.PathLike[str]) -> Path:
    """Where ingest keeps its checkpoint and reports for a store: ``STORE/_ingest`` for an embedded
    store, ``.kgrec-ingest/<hash of the server and database>`` for Neo4j."""
    if not is_neo4j(spec):
        return Path(spec) / "_ingest"
    from kgrec.kg.neo4j_store import Neo4jConfig, Neo4jConfigError

    try:
        config = Neo4jConfig.from_env()
    except Neo4jConfigError as exc:
        raise WorkflowError(f"--store neo4j: {exc}") from None
    tag = hashlib.sha256(f"{config.uri}|{config.database}".encode()).hexdigest()[:12]
    return Path(".kgrec-ingest") / tag
