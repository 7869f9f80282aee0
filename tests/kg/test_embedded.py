"""The embedded store under concurrency: real processes writing and reading one store folder.

Two ingests into one store at once both finish with every row (the second waits for the
first's writer lock), a writer that cannot get the lock in time fails with an error naming
the store and the holder's pid, and readers polling while writers rewrite tables always
read whole tables.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.files import LOCK_NAME, StoreLockedError

ROOT = Path(__file__).resolve().parents[2]

#: argv: store, interactions csv, lock timeout. One ingest into the store, state in STORE/_ingest
#: as the CLI does, many small flushes so two runs would interleave their table rewrites.
INGEST = """
import json, sys
from pathlib import Path
from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source
from kgrec.kg.embedded import EmbeddedStore

store, csv, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
config = IngestConfig(state_dir=Path(store) / "_ingest", chunk_bytes=2048, flush_rows=40, dangling={"product": "create"})
report = Ingestor(EmbeddedStore(store, lock_timeout=timeout), config).run([Source("interaction", path=Path(csv))])
print(json.dumps({"read": report.read, "loaded": report.loaded, "rejected": report.rejected}))
"""

#: argv: store, ready file, release file. Holds the store's writer lock until the release file exists.
HOLDER = """
import sys, time
from pathlib import Path
from kgrec.kg.embedded import EmbeddedStore

store = EmbeddedStore(sys.argv[1])
with store.writing():
    Path(sys.argv[2]).write_text("held")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.02)
"""

#: argv: store, rounds. Rewrites PURCHASED with 1, 2, ... rounds rows (one new row per round).
REWRITER = """
import sys
import pandas as pd
from kgrec.kg.embedded import EmbeddedStore

store = EmbeddedStore(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.upsert_edges("PURCHASED", pd.DataFrame({"source": ["u"] * (i + 1), "target": [f"p{j}" for j in range(i + 1)],
                                                  "order": list(range(i + 1)), "note": ["x" * 200] * (i + 1)}))
"""


def _python(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _interactions(path: Path, prefix: str, users: int, per_user: int) -> int:
    rows = [f"{prefix}{u},P{(u * 7 + k) % 50:02d},purchase,{k}" for u in range(users) for k in range(per_user)]
    path.write_text("user_id,product_id,event,order\n" + "\n".join(rows) + "\n")
    return len(rows)


def _poll(store_dir: Path, procs: list[subprocess.Popen]) -> list[int]:
    """Read the PURCHASED table in a fresh store object until the writers exit; its row counts."""
    seen = []
    while any(p.poll() is None for p in procs):
        edges = EmbeddedStore(store_dir).edges("PURCHASED")  # raises on a half-written table
        assert list(edges.columns[:3]) == ["source", "target", "order"]
        seen.append(len(edges))
        time.sleep(0.01)
    return seen


def test_two_ingests_into_one_store_both_keep_every_row(tmp_path):
    store_dir = tmp_path / "store"
    EmbeddedStore(store_dir)
    rows_a = _interactions(tmp_path / "a.csv", "a", users=40, per_user=12)
    rows_b = _interactions(tmp_path / "b.csv", "b", users=40, per_user=12)
    procs = [_python(INGEST, store_dir, tmp_path / f"{name}.csv", 300) for name in ("a", "b")]
    seen = _poll(store_dir, procs)
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert reports == [{"read": rows_a, "loaded": rows_a, "rejected": 0}, {"read": rows_b, "loaded": rows_b, "rejected": 0}]

    store = EmbeddedStore(store_dir)
    counts = store.counts()
    assert counts["PURCHASED"] == rows_a + rows_b == 960
    assert counts["User"] == 80 and counts["Product"] == 50
    edges = store.edges("PURCHASED")
    assert edges.duplicated(["source", "target", "order"]).sum() == 0
    assert sorted(edges["source"].str[0].value_counts().to_dict().items()) == [("a", rows_a), ("b", rows_b)]
    # readers saw whole tables that only grew (a lost update would shrink the table)
    assert seen == sorted(seen) and all(0 <= n <= rows_a + rows_b for n in seen)
    assert not [p.name for p in store_dir.rglob(".tmp-*")]
    report = json.loads((store_dir / "_ingest" / "ingest-report.json").read_text())
    assert report["read"] in (rows_a, rows_b) and report["errors"] == []


def test_a_writer_that_cannot_get_the_lock_fails_naming_the_store_and_holder(tmp_path):
    from kgrec.ingest.pipeline import IngestConfig, Ingestor, Source

    store_dir = tmp_path / "store"
    EmbeddedStore(store_dir).upsert_nodes("User", pd.DataFrame({"user_id": ["u1"]}))
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = _python(HOLDER, store_dir, ready, release)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read() if holder.stderr else ""
            time.sleep(0.02)
        rows = _interactions(tmp_path / "a.csv", "a", users=2, per_user=2)
        store = EmbeddedStore(store_dir, lock_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(StoreLockedError) as info:
            Ingestor(store, IngestConfig(dangling={"product": "create"})).run([Source("interaction", path=tmp_path / "a.csv")])
        assert time.monotonic() - started >= 0.3
        message = str(info.value)
        assert str(store_dir) in message and f"process {holder.pid}" in message and LOCK_NAME in message
        assert info.value.holder == holder.pid
        with pytest.raises(StoreLockedError):
            store.upsert_nodes("User", pd.DataFrame({"user_id": ["u2"]}))
        # the store stays readable while it is locked, and nothing was written
        assert store.counts()["User"] == 1 and store.counts()["PURCHASED"] == 0
    finally:
        release.write_text("go")
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    report = Ingestor(store, IngestConfig(dangling={"product": "create"})).run([Source("interaction", path=tmp_path / "a.csv")])
    assert (report.loaded, store.counts()["PURCHASED"], store.counts()["User"]) == (rows, rows, 3)


def test_readers_polling_while_two_writers_rewrite_see_whole_tables(tmp_path):
    store_dir = tmp_path / "store"
    EmbeddedStore(store_dir)
    rounds = 40
    procs = [_python(REWRITER, store_dir, rounds) for _ in range(2)]
    seen = _poll(store_dir, procs)
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert set(seen) <= set(range(rounds + 1))
    final = EmbeddedStore(store_dir).edges("PURCHASED")
    assert len(final) == rounds and final["note"].str.len().eq(200).all()


def test_the_lock_is_reentrant_and_a_second_store_object_waits(tmp_path):
    first, second = EmbeddedStore(tmp_path, lock_timeout=0), EmbeddedStore(tmp_path, lock_timeout=0)
    with first.writing(), first.writing():
        first.upsert_nodes("User", pd.DataFrame({"user_id": ["u1"]}))
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(StoreLockedError, match=f"process {os.getpid()}"):
            second.upsert_nodes("User", pd.DataFrame({"user_id": ["u2"]}))
    second.upsert_nodes("User", pd.DataFrame({"user_id": ["u2"]}))
    assert sorted(second.nodes("User")["user_id"]) == ["u1", "u2"]


def test_a_killed_writers_temporary_files_are_removed_by_the_next_writer(tmp_path):
    store = EmbeddedStore(tmp_path)
    stale = tmp_path / "edges" / ".tmp-PURCHASED.parquet.abc123"
    stale.write_bytes(b"PAR1 half")
    store.upsert_nodes("User", pd.DataFrame({"user_id": ["u1"]}))
    assert not stale.exists()
    assert store.counts()["User"] == 1


def test_a_file_is_not_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        EmbeddedStore(tmp_path / "file")
