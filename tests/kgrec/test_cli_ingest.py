"""``kgrec ingest``: exit statuses, the reject report, column mapping from the command line, usage errors."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.ingest.tables import write_tables


def test_ingest_reports_bad_rows_and_exit_status(tiny_tables, tmp_path):
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    (data / "interactions.csv").write_text("user_id,product_id,event,order\nU0,P00,purchase,0\nU0,NOPE,purchase,1\n")
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["ingest", str(data), "--store", str(store), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "36 rows read = 35 loaded + 1 rejected" in result.output
    assert "dangling" in result.output and "NOPE" in result.output
    report = json.loads((store / "_ingest" / "ingest-report.json").read_text())
    assert report["rejected"] == 1 and report["rejects_sample"][0]["row"] == 2
    assert report["rejects_sample"][0]["field"] == "product_id"
    again = CliRunner().invoke(app, ["ingest", str(data), "--store", str(store), "--no-progress", "--allow-rejects"])
    assert again.exit_code == 0, again.output
    assert json.loads((store / "_ingest" / "ingest-report.json").read_text())["added"]["PURCHASED"] == 0


def test_ingest_maps_columns_from_the_command_line(tmp_path):
    (tmp_path / "orders.csv").write_text("customer,sku,when\nc1,A,2024-01-01T00:00:00Z\nc1,B,2024-01-02T00:00:00Z\n")
    result = CliRunner().invoke(app, [
        "ingest", str(tmp_path / "orders.csv"), "--kind", "orders.csv=interactions", "--store", str(tmp_path / "s"),
        "--map", "user_id=customer", "--map", "interaction.product_id=sku", "--map", "timestamp=when",
        "--dangling", "product=create", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert "2 rows read = 2 loaded + 0 rejected" in result.output
    assert "PURCHASED" in result.output


def test_ingest_usage_errors(tmp_path):
    (tmp_path / "mystery.csv").write_text("a\n1\n")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "mystery.csv"), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2 and "cannot tell the record kind" in result.output
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "mystery.csv"), "--kind", "mystery.csv=users",
                                      "--store", "neo4j"], env={"KGREC_NEO4J_URI": ""})
    assert result.exit_code == 2 and "KGREC_NEO4J_URI" in result.output
    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "--map", "nonsense"])
    assert result.exit_code == 2 and "FIELD=COLUMN" in result.output


def test_ingest_into_neo4j_through_the_cli(bolt_target, neo4j_store, tiny_tables, tmp_path, monkeypatch):
    """`kgrec ingest --store neo4j` end to end against the Bolt test server: flags -> workflow -> a
    Neo4jStore configured from the KGREC_NEO4J_* environment -> the same report as the embedded store.
    The store uses the session's driver (the test server hangs a second connection's handshake)."""
    import kgrec.kg.neo4j_store as neo4j_module

    class SessionDriverStore(neo4j_module.Neo4jStore):
        def __init__(self, config=None, **kwargs):
            super().__init__(config, driver=bolt_target.driver, **kwargs)

    monkeypatch.setattr(neo4j_module, "Neo4jStore", SessionDriverStore)
    c = bolt_target.config
    env = {"KGREC_NEO4J_URI": c.uri, "KGREC_NEO4J_DIALECT": c.dialect, "KGREC_NEO4J_DATABASE": c.database or "",
           **({"KGREC_NEO4J_AUTH": "none"} if c.user is None else {"KGREC_NEO4J_USER": c.user,
                                                                   "KGREC_NEO4J_PASSWORD": c.password or ""})}
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    with bolt_target.reachable():
        result = CliRunner().invoke(app, ["ingest", str(data), "--store", "neo4j", "--state-dir", str(tmp_path / "state"),
                                          "--no-progress"], env=env)
        assert result.exit_code == 0, result.output
        assert "94 rows read = 94 loaded + 0 rejected" in result.output
        counts = neo4j_store.counts()
    embedded = tmp_path / "embedded"
    assert CliRunner().invoke(app, ["ingest", str(data), "--store", str(embedded), "--no-progress"]).exit_code == 0
    from kgrec.kg.embedded import EmbeddedStore

    assert counts == EmbeddedStore(embedded).counts()


def test_a_second_writer_gets_a_message_naming_the_holder(tiny_tables, tmp_path):
    import os

    from kgrec.kg.files import WriterLock

    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    store = tmp_path / "store"
    assert CliRunner().invoke(app, ["ingest", str(data), "--store", str(store), "--no-progress"]).exit_code == 0
    with WriterLock(store, timeout=0):
        result = CliRunner().invoke(app, ["ingest", str(data), "--store", str(store), "--lock-timeout", "0.2", "--no-progress"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(store) in result.output and str(os.getpid()) in result.output
