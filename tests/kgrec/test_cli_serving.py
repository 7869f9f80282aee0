"""The serving commands end to end on the tiny store: train, recommend, search, similar, explain, update."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.serving.api import Scorer


@pytest.fixture(scope="module")
def run():
    runner = CliRunner()

    def invoke(*args, ok=True):
        result = runner.invoke(app, [str(a) for a in args])
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
        return result

    return invoke


@pytest.fixture(scope="module")
def trained(run, tiny_store, tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    store = root / "store"
    shutil.copytree(tiny_store.root, store)  # the session store stays untouched
    artifact = root / "artifact"
    result = run("train", "--store", store, "--out", artifact, "--model", "fused", "--epochs", 2, "--batch-size", 64,
                 "--graph-dim", 8, "--text-model", tiny_bert_dir, "--cache", root / "cache", "--device", "cpu", "--json")
    return root, store, artifact, json.loads(result.stdout)


def test_train_writes_a_loadable_artifact(trained, run):
    root, store, artifact, payload = trained
    assert payload["artifact"] == str(artifact) and payload["epochs"] == 2 and payload["tasks"] == ["rec"]
    assert 0 <= payload["rec"]["test"]["ndcg@10"] <= 1
    assert Scorer.load(artifact).model.name == "fused"
    again = run("train", "--store", store, "--out", artifact, ok=False)
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_recommend_json_and_table(trained, run, tiny_snapshot):
    _, _, artifact, _ = trained
    out = json.loads(run("recommend", "U0", "stranger", "--artifact", artifact, "-k", 3, "--json").stdout)
    assert [r["source"] for r in out] == ["history", "popularity"] and all(len(r["items"]) == 3 for r in out)
    seen = Scorer.load(artifact).user_history("U0")
    assert not {i["product_id"] for i in out[0]["items"]} & set(seen)
    visitor = json.loads(run("recommend", "visitor", "-a", artifact, "--session", "P01,P02", "--brand", "Acme", "--json").stdout)
    assert visitor[0]["source"] == "session" and visitor[0]["items"]
    table = run("recommend", "U0", "-a", artifact, "-k", 2).stdout
    assert "U0 (from history)" in table and out[0]["items"][0]["product_id"] in table
    bad = run("recommend", "U0", "-a", artifact, "--session", "NOPE", ok=False)
    assert bad.exit_code == 2 and "NOPE" in bad.output


def test_search_similar_explain(trained, run):
    _, _, artifact, _ = trained
    found = json.loads(run("search", "drill red kit", "-a", artifact, "-k", 4, "--user", "U1", "--json").stdout)
    assert len(found["items"]) == 4 and found["user_id"] == "U1"
    lexical = json.loads(run("search", "drill red kit", "-a", artifact, "-k", 3, "--lexical-weight", 1.0, "--json").stdout)
    expected = Scorer.load(artifact).search("drill red kit", k=3, lexical_weight=1.0)
    assert [i["product_id"] for i in lexical["items"]] == [p for p, _ in expected]
    assert run("search", "drill", "-a", artifact, "--lexical-weight", 2, ok=False).exit_code == 2
    near = json.loads(run("similar", "P03", "-a", artifact, "-k", 5, "--json").stdout)
    assert near[0]["product_id"] == "P03" and "P03" not in {i["product_id"] for i in near[0]["items"]}
    top = json.loads(run("recommend", "U2", "-a", artifact, "-k", 1, "--json").stdout)[0]["items"][0]["product_id"]
    why = json.loads(run("explain", "U2", top, "-a", artifact, "--json").stdout)
    assert why["user_id"] == "U2" and why["product_id"] == top
    text = run("explain", "U2", top, "-a", artifact).stdout
    assert f"U2 -> {top}" in text
    if why["paths"]:
        assert "MATCH p = " in text and ":params {" in text
    broken = run("similar", "P03", "-a", artifact.parent / "missing", ok=False)
    assert broken.exit_code != 0 and "artifact folder not found" in broken.output


def test_update_ingests_fine_tunes_and_reports(trained, run, tmp_path):
    root, store, artifact, _ = trained
    csv = tmp_path / "new.csv"
    pd.DataFrame(
        [("U0", "P03", "purchase", 10), ("U0", "P04", "view", 11), ("U1", "P05", "purchase", 10),
         ("U99", "P01", "purchase", 0), ("U99", "P02", "purchase", 1), ("U99", "P03", "purchase", 2)],
        columns=["user_id", "product_id", "event", "order"],
    ).to_csv(csv, index=False)
    out = root / "artifact-2"
    report = json.loads(run("update", "-a", artifact, "--store", store, "--interactions", csv, "--out", out,
                            "--epochs", 2, "--full-epochs", 2, "--device", "cpu", "--json").stdout)
    assert report["new_interactions"] == 6 and report["new_users"] == 1
    assert report["updated_users"] == 3  # U0, U1 and U99 now end with a new interaction
    for key in ("before", "after", "full", "before_updated", "after_updated", "full_updated"):
        assert 0 <= report[key]["ndcg@10"] <= 1
    assert report["update_epochs"] == 2 and report["full_epochs"] == 2 and report["full_seconds"] > 0
    assert report["warm_start"]["rows_fresh"] >= 1 and report["warm_start"]["fresh"] == []
    scorer = Scorer.load(out)
    assert "U99" in scorer.user_ids and scorer.user_history("U0")[-1] == "P03"  # P04 (order 11) is U0's test target
    assert scorer.artifact.config["extra"]["parent"]["path"] == str(artifact)
    # the store now holds them, so the old artifact no longer matches it
    again = run("update", "-a", artifact, "--store", store, "--interactions", csv, "--out", tmp_path / "x", ok=False)
    assert again.exit_code == 2 and "trained on data" in again.output
    unknown = tmp_path / "bad.csv"
    unknown.write_text("user_id,product_id,event,order\nU0,P01,purchase,1\nU0,ZZZ,purchase,2\n")
    bad = run("update", "-a", out, "--store", store, "--interactions", unknown, "--out", tmp_path / "y", ok=False)
    assert bad.exit_code == 2 and "row 2" in bad.output and "'ZZZ'" in bad.output
