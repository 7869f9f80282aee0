import json

from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.ingest.tables import write_tables


def test_demo_end_to_end_on_tiny_data(tiny_tables, tiny_bert_dir, tmp_path):
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["demo", "--quick", "--data", str(data), "--out", str(out), "--text-model", tiny_bert_dir,
         "--models", "popularity,mf-bpr,text-zero-shot,fused"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in payload["results"]}
    assert list(rows) == ["popularity", "mf-bpr", "text-zero-shot", "fused"]
    for row in rows.values():
        for split in ("valid", "test"):
            assert 0.0 <= row[split]["ndcg@10"] <= row[split]["recall@10"] <= row[split]["recall@20"] <= 1.0
    assert rows["popularity"]["parameters"] == 0 and rows["fused"]["parameters"] > 0
    assert rows["fused"]["epochs"] == 2 and rows["fused"]["config"]["model"]["use_graph"] is True
    assert "| fused | " in (out / "report.md").read_text()
    assert "ndcg@10" in result.output
    assert "94 rows read = 94 loaded + 0 rejected" in result.output  # the ingest report of the real pipeline


def test_ingest_reports_bad_rows(tiny_tables, tmp_path):
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    (data / "interactions.csv").write_text("user_id,product_id,event,order\nU0,P00,purchase,0\nU0,NOPE,purchase,1\n")
    result = CliRunner().invoke(app, ["ingest", str(data), "--store", str(tmp_path / "store"), "--no-progress"])
    assert result.exit_code == 1 and "dangling" in result.output
    rejects = [json.loads(line) for line in (tmp_path / "store" / "_ingest" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"], r["reason"]) for r in rejects] == [(2, "product_id", "dangling")]
