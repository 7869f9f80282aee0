"""The one path through the CLI alone, on small generated data of each kind a shop may have:
interactions only; interactions + KG triples (RecBole atomic files); judgements only (a search-only
shop); interactions + judgements (one multi-task scorer); and a catalogue with neither."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kgrec.cli import app
from kgrec.ingest.tables import write_tables
from kgrec.serving.api import Scorer


def kgrec(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def _files(kind: str, root: Path, tables, judgements, recbole_kg) -> Path:
    data = root / "data"
    if kind == "interactions + kg":
        recbole_kg(data)
        return data
    write_tables(tables, data)
    if kind in ("judgements", "interactions + judgements"):
        judgements.to_csv(data / "judgements.csv", index=False)
    if kind in ("judgements", "catalogue"):
        (data / "interactions.csv").unlink()
        (data / "users.csv").unlink()
    return data


KINDS = {  # data kind -> (tasks evaluate finds, models to run)
    "interactions": (["rec"], "popularity,text-zero-shot,fused"),
    "interactions + kg": (["rec"], "popularity,graph-only,fused"),
    "judgements": (["search"], "bm25,text-zero-shot,fused"),
    "interactions + judgements": (["rec", "search"], "popularity,bm25,fused"),
}


@pytest.fixture(scope="module", params=list(KINDS))
def run(request, tiny_tables, tiny_judgements, recbole_kg, tiny_bert_dir, tmp_path_factory):
    """ingest -> evaluate -> train for one data kind; returns what the commands wrote."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind.replace(" + ", "-"))
    data = _files(kind, root, tiny_tables, tiny_judgements, recbole_kg)
    store, report, artifact = root / "store", root / "report", root / "artifact"
    ingested = kgrec("ingest", data, "--store", store, "--no-progress")
    tasks, models = KINDS[kind]
    evaluated = kgrec("evaluate", "--store", store, "--out", report, "--models", models, "--epochs", 2, "--bpr-epochs", 2,
                      "--text-model", tiny_bert_dir, "--bootstrap", 50, "--device", "cpu", "--no-progress")
    trained = kgrec("train", "--store", store, "--out", artifact, "--epochs", 2, "--text-model", tiny_bert_dir,
                    "--device", "cpu", "--json", "--no-progress")
    return {"kind": kind, "tasks": tasks, "models": models.split(","), "ingest": ingested.output, "evaluate": evaluated.output,
            "results": json.loads((report / "results.json").read_text()), "report": (report / "report.md").read_text(),
            "train": json.loads(trained.stdout), "artifact": artifact, "store": store, "root": root}


def test_ingest_loads_every_row(run):
    assert " loaded + 0 rejected" in run["ingest"]


def test_evaluate_runs_the_tasks_the_store_supports(run):
    results = run["results"]
    assert results["facts"]["tasks"] == run["tasks"]
    rec_models = [r["model"] for r in results["results"]]
    search_models = [r["model"] for r in results["search"]]
    if "rec" in run["tasks"]:
        assert rec_models == [m for m in run["models"] if m != "bm25"]
        for row in results["results"]:
            assert 0.0 <= row["test"]["ndcg@10"] <= row["test"]["recall@10"] <= row["test"]["recall@20"] <= 1.0
        assert "## Test results" in run["report"] and "## Significance: fused against each model" in run["report"]
    else:
        assert rec_models == [] and "Not evaluated: recommendation — the store holds no interactions" in run["report"]
    if "search" in run["tasks"]:
        expected = [m for m in run["models"] if m in ("bm25", "text-zero-shot", "fused")] + ["fused + bm25"]
        assert search_models == expected
        for row in results["search"]:
            for protocol in ("full", "rerank"):
                assert 0.0 <= row["test"][protocol]["ndcg@10"] <= 1.0
        per_query = pd.read_parquet(run["root"] / "report" / "search_per_query.parquet")
        assert set(per_query["model"]) == set(search_models) and set(per_query["protocol"]) == {"full", "rerank"}
        full = per_query[(per_query["model"] == "fused") & (per_query["protocol"] == "full")]
        fused = next(r for r in results["search"] if r["model"] == "fused")
        assert full["ndcg@10"].mean() == pytest.approx(fused["test"]["full"]["ndcg@10"], abs=1e-6)
        assert fused["extra"]["vs_bm25_ndcg@10"]["p_bootstrap"] <= 1.0 and "## Search test results" in run["report"]
    else:
        assert search_models == []


def test_train_writes_one_artifact_for_those_tasks(run):
    payload = run["train"]
    assert payload["tasks"] == run["tasks"] and payload["model"] == "fused"
    scorer = Scorer.load(run["artifact"])
    assert scorer.serving_settings["tasks"] == run["tasks"]
    # the relational GNN where the graph holds KG triples (--graph-encoder auto), SAGE elsewhere
    assert scorer.model.config.graph_encoder == ("rgcn" if run["kind"] == "interactions + kg" else "sage")
    if "search" in run["tasks"]:
        # the weight chosen on the validation queries is saved, and the same choice as evaluate's hybrid
        hybrid = next(r for r in run["results"]["search"] if r["model"] == "fused + bm25")
        assert payload["serving"]["lexical_weight_source"] == "validation"
        assert scorer.lexical_weight == payload["serving"]["lexical_weight"] == hybrid["extra"]["lexical_weight"]
        assert 0 <= payload["search"]["test"]["ndcg@10"] <= 1
    if "rec" in run["tasks"]:
        assert 0 <= payload["rec"]["test"]["ndcg@10"] <= 1
        # the text prior is chosen on the validation users, saved, and the model scores with it
        curve = {float(w): v for w, v in payload["serving"]["text_prior_valid_curve"].items()}
        assert payload["serving"]["text_prior_source"] == "validation" and 0.0 in curve
        assert payload["serving"]["text_prior"] == max(curve, key=lambda w: (curve[w], -w))
        assert scorer.model.config.text_prior == payload["serving"]["text_prior"]
        assert payload["rec"]["valid"]["ndcg@10"] == pytest.approx(max(curve.values()), abs=1e-6)


def test_the_artifact_serves(run):
    artifact = run["artifact"]
    scorer = Scorer.load(artifact)
    if "rec" in run["tasks"]:
        user = scorer.user_ids[0]
        recs = json.loads(kgrec("recommend", user, "-a", artifact, "-k", 3, "--json").stdout)
        assert recs[0]["source"] == "history" and len(recs[0]["items"]) == 3
        assert not {i["product_id"] for i in recs[0]["items"]} & set(scorer.user_history(user))
    found = json.loads(kgrec("search", "drill", "-a", artifact, "-k", 4, "--json").stdout)
    assert len(found["items"]) == 4 and found["lexical_weight"] == scorer.lexical_weight
    assert [i["product_id"] for i in found["items"]] == [p for p, _ in scorer.search("drill", k=4)]


def test_a_catalogue_without_interactions_or_judgements(tiny_tables, tiny_judgements, recbole_kg, tiny_bert_dir, tmp_path):
    data = _files("catalogue", tmp_path, tiny_tables, tiny_judgements, recbole_kg)
    store = tmp_path / "store"
    kgrec("ingest", data, "--store", store, "--no-progress")
    nothing = kgrec("evaluate", "--store", store, "--out", tmp_path / "report", "--text-model", tiny_bert_dir, code=2)
    assert "nothing to evaluate" in nothing.output and "holds no interactions" in nothing.output
    asked = kgrec("train", "--store", store, "--out", tmp_path / "rec", "--tasks", "rec", code=2)
    assert "cannot train or evaluate recommendation: the store holds no interactions" in asked.output
    payload = json.loads(kgrec("train", "--store", store, "--out", tmp_path / "artifact", "--text-model", tiny_bert_dir,
                               "--json").stdout)
    assert payload["tasks"] == [] and payload["epochs"] == 0
    assert payload["serving"] == {"tasks": ["search"], "lexical_weight": 0.1, "lexical_weight_source": "default (no judgements)"}
    found = json.loads(kgrec("search", "saw", "-a", tmp_path / "artifact", "-k", 3, "--json").stdout)
    assert len(found["items"]) == 3


def test_a_store_smaller_than_the_cutoffs(tiny_bert_dir, tmp_path):
    """Six products and metrics @20: every product is ranked, the positions past the catalogue are misses."""
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"product_id": [f"p{i}" for i in range(6)], "title": [f"thing {i}" for i in range(6)]}).to_json(
        data / "products.jsonl", orient="records", lines=True)
    pd.DataFrame([(f"u{u}", f"p{(u + k) % 6}", "purchase", k) for u in range(5) for k in range(4)],
                 columns=["user_id", "product_id", "event", "order"]).to_csv(data / "interactions.csv", index=False)
    kgrec("ingest", data, "--store", tmp_path / "store", "--dangling", "user=create", "--no-progress")
    kgrec("evaluate", "--store", tmp_path / "store", "--out", tmp_path / "report", "--models", "popularity,mf-bpr",
          "--bpr-epochs", 1, "--bootstrap", 20)
    rows = json.loads((tmp_path / "report" / "results.json").read_text())["results"]
    for row in rows:
        assert row["test"]["recall@20"] == 1.0 or row["test"]["recall@20"] == row["test"]["recall@10"]
        assert row["test"]["precision@20"] == pytest.approx(row["test"]["recall@20"] / 20)


@pytest.mark.parametrize("run", ["interactions"], indirect=True)
def test_cold_boost_is_saved_and_served(run, tiny_bert_dir, tmp_path):
    out = tmp_path / "boosted"
    payload = json.loads(kgrec("train", "--store", run["root"] / "store", "--out", out, "--epochs", 1, "--cold-boost", 0.4,
                               "--text-model", tiny_bert_dir, "--device", "cpu", "--json", "--no-progress").stdout)
    assert payload["serving"]["cold_boost"] == 0.4 and payload["serving"]["text_prior_source"] == "validation"
    scorer = Scorer.load(out)
    config = scorer.model.config
    assert config.cold_text_prior == 0.4 and config.text_prior == payload["serving"]["text_prior"]
    # the served products carry the cold products' text part: fused d, raw text, cold text
    text_dim = scorer.model.text.shape[1]
    assert scorer.state["products"].shape[1] == scorer.model.dim + 2 * text_dim
    cold = scorer.model.cold_products().bool()
    cold_part = scorer.state["products"][:, scorer.model.dim + text_dim :]
    assert cold.any() and torch.equal(cold_part[~cold], torch.zeros_like(cold_part[~cold]))
    assert torch.allclose(cold_part[cold], scorer.model.text[cold])
