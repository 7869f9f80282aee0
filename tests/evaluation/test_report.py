"""`kgrec evaluate` end to end on the tiny catalogue, and the pieces of the report."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.evaluation.metrics import metrics_from_position
from kgrec.evaluation.recommendation import evaluate, evaluate_detailed
from kgrec.evaluation.report import Document, breakdown, bucketize, write_report
from kgrec.fusion.models import MatrixFactorization, Popularity
from kgrec.ingest.tables import write_tables

# no graph model: keeps the test fast (test_cli.py runs the fused model end to end); mf-bpr is the reference
MODELS = "popularity,text-zero-shot,mf-bpr"


def _store(tables, tmp):
    """The tables ingested into an embedded store through `kgrec ingest`; returns the store folder."""
    store = tmp / "store"
    result = CliRunner().invoke(app, ["ingest", str(tables), "--store", str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def report_run(tiny_tables, tiny_bert_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = tmp / "tables"
    write_tables(tiny_tables, data)
    out = tmp / "report"
    result = CliRunner().invoke(
        app,
        ["evaluate", "--quick", "--store", str(_store(data, tmp)), "--out", str(out), "--text-model", tiny_bert_dir,
         "--models", MODELS, "--reference", "mf-bpr", "--bootstrap", "200", "--sampled", "5", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_evaluate_writes_report_and_per_user(report_run):
    out, output = report_run
    for name in ("report.md", "report.html", "results.json", "per_user.parquet", "significance.csv",
                 "figures/metric_at_k.png", "figures/training.png", "figures/by_history.png", "figures/by_popularity.png"):
        assert (out / name).exists(), name
    md = (out / "report.md").read_text()
    for section in ("## Protocol", "## Test results", "## Significance: mf-bpr against each model", "## Metric@K",
                    "## Training curves", "by the user's history length", "cold to warm", "## Configuration",
                    "## Sampled protocol"):
        assert section in md, section
    assert "| mf-bpr | " in md and "[" in md.split("| mf-bpr | ")[1].split("\n")[0]  # a CI in the row
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 4
    assert "report.html" in output

    payload = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in payload["results"]] == MODELS.split(",")
    assert payload["histories"]["mf-bpr"]["losses"] and payload["facts"]["leakage"]
    assert all(v == 0 for v in payload["facts"]["leakage"].values())
    frame = pd.read_parquet(out / "per_user.parquet")
    full = frame[frame["protocol"] == "full"]
    assert len(full) == 3 * 10 and set(frame["protocol"]) == {"full", "sampled-5"}
    # the stored positions reproduce the means in results.json
    for r in payload["results"]:
        part = full[full["model"] == r["model"]]
        m = metrics_from_position(torch.as_tensor(part["position"].to_numpy().astype(np.int64)), (10, 20))
        for name in ("ndcg@10", "recall@20", "mrr@20"):
            assert float(m[name].mean()) == pytest.approx(r["test"][name], abs=1e-6)
        assert part["auc"].mean() == pytest.approx(r["test"]["auc"], abs=1e-6)
        assert 0.0 < r["test"]["coverage@10"] <= 1.0
    sig = pd.read_csv(out / "significance.csv")
    assert set(sig["baseline"]) == {"popularity", "text-zero-shot"} and (sig["p_holm"] >= sig["p_bootstrap"]).all()


def test_from_run_recomputes_the_same_report(report_run, tmp_path):
    out, _ = report_run
    result = CliRunner().invoke(app, ["evaluate", "--from-run", str(out), "--out", str(tmp_path), "--bootstrap", "200",
                                         "--reference", "mf-bpr"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.md").read_text().replace(str(tmp_path), "") == (out / "report.md").read_text().replace(str(out), "")


def test_bare_results_json_gives_a_table_only_report(report_run, tmp_path):
    out, _ = report_run
    payload = json.loads((out / "results.json").read_text())
    bare = {k: payload[k] for k in ("created", "torch", "python", "threads", "command", "results")}
    (tmp_path / "demo.json").write_text(json.dumps(bare))
    written = write_report(tmp_path / "demo.json", tmp_path / "rep")
    md = written["markdown"].read_text()
    assert "No per-user results" in md and "| mf-bpr | " in md and "Significance" not in md


def test_detailed_evaluation_ranks_like_evaluate(tiny_snapshot):
    torch.manual_seed(0)
    for model in (MatrixFactorization(tiny_snapshot.num_users, tiny_snapshot.num_products, dim=8),
                  Popularity(tiny_snapshot.num_users, tiny_snapshot.num_products)):
        plain = evaluate(model, tiny_snapshot, "test", ks=(5, 10))
        rich = evaluate_detailed(model, tiny_snapshot, "test", ks=(5, 10), coverage_ks=(10,))
        assert torch.equal(plain.topk, rich.topk[:, :10])
        for name, value in plain.metrics.items():
            assert rich.metrics[name] == pytest.approx(value)
        assert rich.history_length.tolist() == [5] * 10 and not rich.target_seen.any()
        assert ((rich.rank >= 1) & (rich.rank <= rich.num_candidates)).all()
        assert 0 <= rich.aggregate["gauc"] <= 1 and rich.per_user["arp@10"].shape == (10,)


def test_buckets_and_breakdown():
    assert bucketize(np.array([0, 1, 4, 5, 6, 7, 100]), (1, 5, 7)).tolist() == [-1, 0, 0, 1, 1, 2, 2]
    frame = pd.DataFrame({"model": ["a"] * 4, "protocol": "full", "position": [1, 0, 3, 0], "history_length": [1, 2, 8, 9]})
    table = breakdown(frame, "history_length", (1, 5), n_boot=50)
    assert table["bucket"].tolist() == ["1-4", "5+"] and table["n"].tolist() == [2, 2]
    assert table["mean"].tolist() == pytest.approx([0.5, 0.25])


def test_document_renders_both_ways(tmp_path):
    doc = Document("t")
    doc.heading("h")
    doc.paragraph("a `code` and **bold** <tag>")
    doc.table(["m", "x"], [["a", "1"]], "note")
    md, page = doc.to_markdown(tmp_path), doc.to_html()
    assert "| m | x |" in md and "## h" in md
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page and "&lt;tag&gt;" in page


def _messy_snapshot(tiny_snapshot, seed=0):
    """Repeat purchases, several targets per user, users without history, rows not sorted by user."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    n = 120
    inter = pd.DataFrame({
        "user": rng.integers(0, tiny_snapshot.num_users, size=n),
        "product": rng.integers(0, 6, size=n),  # few products: many repeats
        "order": rng.permutation(n),
        "rel": "PURCHASED",
        "split": rng.choice(["train", "valid", "test"], size=n, p=[0.6, 0.2, 0.2]),
    })
    return replace(tiny_snapshot, interactions=inter)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_inputs_equal_evaluation_examples(tiny_snapshot, seed):
    from kgrec.evaluation.recommendation import evaluation_inputs, exclusion_mask, rank_top_k
    from kgrec.fusion.data import evaluation_examples

    for snap in (tiny_snapshot, _messy_snapshot(tiny_snapshot, seed)):
        for split in ("valid", "test"):
            for max_history in (2, 50):
                batch, histories = evaluation_examples(snap, split, max_history)
                fast, rows, cols = evaluation_inputs(snap, split, max_history)
                assert torch.equal(batch.users, fast.users) and torch.equal(batch.targets, fast.targets)
                assert torch.equal(batch.history, fast.history)
                mask = torch.zeros(len(batch), snap.num_products, dtype=torch.bool)
                mask[rows, cols] = True
                assert torch.equal(mask, exclusion_mask(histories, snap.num_products))
        torch.manual_seed(seed)
        model = MatrixFactorization(snap.num_users, snap.num_products, dim=4)
        for bs in (3, 2048):
            a = evaluate(model, snap, "test", ks=(3, 5), batch_size=bs)
            batch, histories = evaluation_examples(snap, "test")
            reference = rank_top_k(model, batch, exclusion_mask(histories, snap.num_products), 5, bs)
            assert torch.equal(a.topk, reference) and torch.equal(a.users, batch.users)
        rich = evaluate_detailed(model, snap, "test", ks=(3,), coverage_ks=(3,), batch_size=4)
        assert torch.equal(rich.topk[:, :3], a.topk[:, :3])
        _, histories = evaluation_examples(snap, "test")
        assert rich.history_length.tolist() == [len(h) for h in histories]
        assert rich.target_seen.tolist() == [int(t) in set(h.tolist()) for t, h in zip(rich.targets, histories)]
        assert (rich.position[rich.target_seen] == 0).all() and (rich.per_user["auc"][rich.target_seen] == 0).all()


def test_evaluate_temporal_protocol(tiny_tables, tmp_path):
    data = tmp_path / "tables"
    write_tables(tiny_tables, data)
    inter = pd.read_csv(data / "interactions.csv")
    base = {u: 100 * i for i, u in enumerate(sorted(inter["user_id"].unique()))}
    inter["timestamp"] = [base[u] + 37 * o for u, o in zip(inter["user_id"], inter["order"])]
    inter.to_csv(data / "interactions.csv", index=False)
    out = tmp_path / "report"
    store = _store(data, tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--store", str(store), "--out", str(out), "--models", "popularity",
                                      "--protocol", "temporal", "--temporal-quantile", "0.7", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    payload = json.loads((out / "results.json").read_text())
    assert payload["protocol"]["name"] == "temporal" and all(v == 0 for v in payload["facts"]["leakage"].values())
    md = (out / "report.md").read_text()
    assert "Recommendation split: **temporal**" in md and "No significance tests" in md
    # no timestamps on the interactions: a clear error
    write_tables(tiny_tables, data)
    plain = tmp_path / "plain"
    plain.mkdir()
    bad = CliRunner().invoke(app, ["evaluate", "--store", str(_store(data, plain)), "--out", str(out), "--models", "popularity",
                                   "--protocol", "temporal"])
    assert bad.exit_code == 2 and "timestamps" in bad.output and "Traceback" not in bad.output
