"""The ingest run on a deliberately corrupted copy of the demo data: exact reject counts,
idempotent re-ingest, resume after a crash, incremental events."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.sources import discover
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.schema import NODE_TYPES, REL_TYPES

DEMO = Path(__file__).resolve().parents[2] / "data" / "amazon-scientific"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> dict:
    """The demo tables with known problems; returns the directory and what to expect."""
    out = tmp_path_factory.mktemp("corrupted")
    products = _lines(DEMO / "products.jsonl")
    pid = [json.loads(p)["product_id"] for p in products]
    first = json.loads(products[0])
    rec20 = json.loads(products[19])
    broken_products = {  # line -> (new content, reason)
        5: (b"{not json", "malformed_json"),
        10: (json.dumps(first).encode(), "duplicate"),
        20: (json.dumps({**rec20, "category_path": ["Tools", " "]}).encode(), "bad_path"),
        30: (b'{"product_id": "\xff\xfe"}', "bad_encoding"),
        40: (b"", "empty_line"),
        50: (b'{"product_id": "  ", "title": "x"}', "missing"),
        60: (b"[1, 2]", "not_object"),
        70: (json.dumps({"product_id": "NEW-70", "title": "new", "price": "cheap"}).encode(), "not_number"),
    }
    for line, (content, _) in broken_products.items():
        products[line - 1] = content
    (out / "products.jsonl").write_bytes(b"\n".join(products) + b"\n")
    lost_products = {pid[line - 1] for line in broken_products}

    users = _lines(DEMO / "users.csv")
    uid = [u.decode() for u in users[1:]]
    broken_users = {3: (b"\xc3\x28", "bad_encoding"), 7: (users[1], "duplicate"), 11: (b"", "empty_line"),
                    15: (b'"abc"def', "malformed"), 19: (b"a,b", "field_count")}
    for row, (content, _) in broken_users.items():
        users[row] = content
    (out / "users.csv").write_bytes(b"\n".join(users) + b"\n")
    lost_users = {uid[row - 1] for row in broken_users}

    inter = _lines(DEMO / "interactions.csv")
    cells = [r.decode().split(",") for r in inter[1:]]
    u0, p0 = cells[0][0], cells[0][1]
    broken_inter = {
        2: (f"{u0},{p0},teleport,90", "unknown_event"),
        4: (f"{u0},{p0},purchase,two", "not_integer"),
        6: (f"{u0},{p0},purchase,1.5", "not_integer"),
        8: (f"{u0},{p0},purchase,", "missing"),
        10: (f"{u0},NOPE,purchase,91", "dangling"),
        12: (f"{u0},{p0},purchase,92,extra", "field_count"),
        14: (b"\xe9t\xe9," + p0.encode() + b",purchase,93", "bad_encoding"),
        16: ("", "empty_line"),
        18: (inter[1].decode(), "duplicate"),
        20: (f'{u0},"{p0}"x,purchase,94', "malformed"),
        22: (f",{p0},purchase,95", "missing"),
        24: (f"U\x01,{p0},purchase,96", "not_id"),
    }
    for row, (content, _) in broken_inter.items():
        inter[row] = content if isinstance(content, bytes) else content.encode()
    (out / "interactions.csv").write_bytes(b"\n".join(inter) + b"\n")
    kept = [c for i, c in enumerate(cells, start=1) if i not in broken_inter]
    assert p0 not in lost_products  # row 18 duplicates row 1, which must itself load
    cascade_rows = {i for i, c in enumerate(cells, start=1) if i not in broken_inter and c[1] in lost_products}
    cascade = len(cascade_rows)
    created_users = {c[0] for c in kept if c[1] not in lost_products} & lost_users

    def reasons(broken: dict) -> dict[str, int]:
        out_: dict[str, int] = {}
        for _, reason in broken.values():
            out_[reason] = out_.get(reason, 0) + 1
        return out_

    inter_reasons = reasons(broken_inter)
    inter_reasons["dangling"] += cascade
    return {
        "dir": out,
        "products": (4385, len(broken_products), reasons(broken_products)),
        "users": (8442, len(broken_users), reasons(broken_users)),
        "interactions": (59427, len(broken_inter) + cascade, inter_reasons),
        "rows": {"interactions": set(broken_inter) | cascade_rows},
        "cascade": cascade,
        "created_users": len(created_users),
        "lost": (len(lost_products), len(lost_users)),
    }


def _run(directory: Path, store_dir: Path, **config) -> tuple:
    store = EmbeddedStore(store_dir)
    config.setdefault("state_dir", store_dir / "_ingest")
    report = Ingestor(store, IngestConfig(**config)).run(discover([directory]).sources)
    return store, report


def _tables(store: EmbeddedStore) -> dict[str, list]:
    """Every node and edge table as sorted records (to compare stores)."""
    out = {}
    for name in [*NODE_TYPES, *REL_TYPES, *store.kg_relations()]:
        frame = store.nodes(name) if name in NODE_TYPES else store.edges(name)
        frame = frame[sorted(frame.columns)].astype(object).fillna("<NA>").astype(str)
        out[name] = sorted(map(tuple, frame.to_numpy().tolist()))
    return out


def test_corrupted_demo_exact_rejects_and_idempotent_reingest(corrupted, tmp_path):
    store, report = _run(corrupted["dir"], tmp_path / "store")
    files = {Path(f.file).stem: f for f in report.files}
    for name in ("products", "users", "interactions"):
        read, rejected, reasons = corrupted[name]
        f = files[name]
        assert (f.read, f.rejected, f.loaded) == (read, rejected, read - rejected), name
        assert f.reasons == reasons, name
    assert report.read == report.loaded + report.rejected == 4385 + 8442 + 59427
    assert report.errors == []

    # the reject report: one JSON line per rejected row, with file, row, field and reason
    lines = Path(report.rejects_path).read_text().splitlines()
    assert len(lines) == report.rejected
    rejects = [json.loads(x) for x in lines]
    assert all({"file", "row", "line", "field", "reason", "message", "value"} <= set(r) for r in rejects)
    inter_rows = {r["row"] for r in rejects if r["file"].endswith("interactions.csv")}
    assert inter_rows == corrupted["rows"]["interactions"]
    by_row = {(Path(r["file"]).name, r["row"]): r for r in rejects}
    assert by_row[("interactions.csv", 10)]["field"] == "product_id" and by_row[("interactions.csv", 10)]["value"] == "NOPE"
    assert by_row[("interactions.csv", 4)]["field"] == "order" and by_row[("interactions.csv", 4)]["line"] == 5
    assert by_row[("interactions.csv", 18)]["message"].startswith(f"duplicate of {corrupted['dir'] / 'interactions.csv'} row 1")
    assert by_row[("products.jsonl", 30)]["reason"] == "bad_encoding" and "\\xff" in by_row[("products.jsonl", 30)]["value"]
    summary = json.loads(Path(report.report_path).read_text())
    assert (summary["read"], summary["loaded"], summary["rejected"]) == (report.read, report.loaded, report.rejected)

    # what reached the graph
    counts = store.counts()
    lost_products, lost_users = corrupted["lost"]
    assert counts["Product"] == 4385 - lost_products
    assert counts["User"] == 8442 - lost_users + corrupted["created_users"]
    assert report.created.get("user", 0) == corrupted["created_users"]
    assert counts["PURCHASED"] == files["interactions"].loaded

    # re-ingest: the same rows rejected again, nothing added, every table unchanged
    before = _tables(store)
    store2, again = _run(corrupted["dir"], tmp_path / "store")
    assert (again.read, again.loaded, again.rejected) == (report.read, report.loaded, report.rejected)
    assert set(again.added().values()) == {0}
    assert _tables(store2) == before


class CrashingStore(EmbeddedStore):
    """An embedded store that dies (raises) on its ``crash_at``-th upsert, like a killed process."""

    def __init__(self, root, crash_at: int) -> None:
        super().__init__(root)
        self.calls, self.crash_at = 0, crash_at

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")

    def upsert_nodes(self, label, frame):
        self._tick()
        return super().upsert_nodes(label, frame)

    def upsert_edges(self, rel, frame):
        self._tick()
        return super().upsert_edges(rel, frame)


def test_killed_ingest_resumes_to_the_same_graph(corrupted, tmp_path):
    settings = {"chunk_bytes": 200_000, "flush_rows": 15_000}
    _, clean = _run(corrupted["dir"], tmp_path / "clean", **settings)
    assert clean.flushes >= 4

    crashing = CrashingStore(tmp_path / "crashed", crash_at=12)
    with pytest.raises(KeyboardInterrupt):
        Ingestor(crashing, IngestConfig(state_dir=tmp_path / "crashed" / "_ingest", **settings)).run(
            discover([corrupted["dir"]]).sources)
    checkpoint = json.loads((tmp_path / "crashed" / "_ingest" / "checkpoint.json").read_text())
    assert checkpoint["status"] == "running" and checkpoint["completed_flushes"] >= 1

    store, resumed = _run(corrupted["dir"], tmp_path / "crashed", **settings)
    assert resumed.resumed_flushes == checkpoint["completed_flushes"]
    assert (resumed.read, resumed.loaded, resumed.rejected) == (clean.read, clean.loaded, clean.rejected)
    assert _tables(store) == _tables(EmbeddedStore(tmp_path / "clean"))
    assert json.loads((tmp_path / "crashed" / "_ingest" / "checkpoint.json").read_text())["status"] == "complete"

    # other settings are another run: no resume, a full (idempotent) pass
    _, other = _run(corrupted["dir"], tmp_path / "crashed", chunk_bytes=300_000, flush_rows=15_000)
    assert other.resumed_flushes == 0 and set(other.added().values()) == {0}


def test_incremental_events(tiny_tables, tmp_path):
    from kgrec.ingest.tables import write_tables

    write_tables(tiny_tables, tmp_path / "tables")
    store, first = _run(tmp_path / "tables", tmp_path / "store")
    assert first.rejected == 0 and store.counts()["PURCHASED"] == 60
    new = tmp_path / "new" / "events.csv"
    new.parent.mkdir()
    old = tiny_tables.interactions.iloc[:2]
    rows = [f"{u},{p},{e},{o}" for u, p, e, o in old.itertuples(index=False)]  # already in the store
    rows += ["U0,P01,purchase,100", "U0,P02,purchase,101", "U9,P03,view,102", "U_new,P04,cart,0", "U1,P05,rating,7"]
    new.write_text("user_id,product_id,event,order\n" + "\n".join(rows) + "\n")
    store, report = _run(new.parent, tmp_path / "store")
    assert report.rejected == 0 and report.loaded == 7
    added = {k: v for k, v in report.added().items() if v}
    assert added == {"PURCHASED": 2, "VIEWED": 1, "ADDED_TO_CART": 1, "RATED": 1, "User": 1}


def test_load_tables_reports_instead_of_failing(tiny_tables, tmp_path):
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import CatalogTables

    bad = tiny_tables.interactions.copy()
    bad.loc[3, "product_id"] = "P99"
    bad.loc[4, "event"] = "teleport"
    summary = load_tables(CatalogTables(tiny_tables.products, tiny_tables.users, bad), EmbeddedStore(tmp_path), progress=False)
    assert (summary.rows_read, summary.rows_loaded, summary.rows_rejected) == (94, 92, 2)
    assert sorted((r["row"], r["reason"]) for r in summary.report.rejects) == [(4, "dangling"), (5, "unknown_event")]


KILLED_RUN = """
import sys, time
from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.sources import discover
from kgrec.kg.embedded import EmbeddedStore

class Slow(EmbeddedStore):
    def upsert_edges(self, rel, frame):
        time.sleep(0.15)
        return super().upsert_edges(rel, frame)

store, data = sys.argv[1], sys.argv[2]
Ingestor(Slow(store), IngestConfig(state_dir=store + "/_ingest", chunk_bytes=64, flush_rows=8)).run(discover([data]).sources)
"""


def test_sigkill_midway_then_rerun_gives_the_same_graph(tiny_tables, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from kgrec.ingest.tables import write_tables

    write_tables(tiny_tables, tmp_path / "tables")
    settings = {"chunk_bytes": 64, "flush_rows": 8}
    _, clean = _run(tmp_path / "tables", tmp_path / "clean", **settings)
    assert clean.flushes >= 8

    store_dir = tmp_path / "killed"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(store_dir), str(tmp_path / "tables")], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    checkpoint = store_dir / "_ingest" / "checkpoint.json"
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(checkpoint.read_text())["completed_flushes"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(checkpoint.read_text())
    assert state["status"] == "running" and 3 <= state["completed_flushes"] < clean.flushes

    store, resumed = _run(tmp_path / "tables", store_dir, **settings)
    assert resumed.resumed_flushes == state["completed_flushes"] and resumed.rejected == 0
    assert _tables(store) == _tables(EmbeddedStore(tmp_path / "clean"))
