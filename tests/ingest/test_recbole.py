"""RecBole atomic files with a knowledge graph: ingest -> export -> typed edges -> train + evaluate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kgrec.ingest.pipeline import IngestConfig, Ingestor
from kgrec.ingest.recbole import recbole_header
from kgrec.ingest.sources import discover
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.export import export_snapshot

RELATIONS = ("film.film.directed_by", "film.film.genre", "starring")


def test_recbole_header():
    assert recbole_header(["user_id:token", "item_id_list:token_seq", "plain"]) == ["user_id", "item_id_list", "plain"]


def test_recbole_kg_to_typed_edges_and_training(tmp_path, recbole_kg):
    from kgrec.evaluation.recommendation import evaluate
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import ModelInputs, build_model
    from kgrec.fusion.train import TrainConfig, fit

    wrote = recbole_kg(tmp_path / "toy")
    found = discover([tmp_path / "toy"])
    assert found.adapters == ["recbole"]
    assert sorted(s.kind for s in found.sources) == ["interaction", "link", "product", "triple", "user"]
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig(dangling=found.dangling)).run(found.sources)
    assert report.rejected == 0 and report.errors == []
    assert report.read == wrote["interactions"] + wrote["triples"] + 2 * wrote["items"] + wrote["users"]

    # every relation became its own UPPER_SNAKE relationship type, listed in KgRelation nodes
    counts = store.counts()
    assert counts["RATED"] == wrote["interactions"] and counts["DESCRIBES"] == wrote["items"]
    assert {"FILM_FILM_DIRECTED_BY", "FILM_FILM_GENRE", "STARRING"} <= set(counts)
    assert counts["FILM_FILM_DIRECTED_BY"] == 20 and counts["STARRING"] == 40
    assert counts["Entity"] == 20 + 4 + 3 + 5
    relations = store.nodes("KgRelation").set_index("rel_type")["name"].to_dict()
    assert relations == {"FILM_FILM_DIRECTED_BY": RELATIONS[0], "FILM_FILM_GENRE": RELATIONS[1], "STARRING": RELATIONS[2]}
    products = store.nodes("Product").set_index("product_id")
    assert products.loc["3", "title"] == "movie number 3" and products.loc["3", "release_year"] == "1993"
    edges = store.edges("RATED")
    assert set(edges.columns) >= {"order", "timestamp", "weight"}

    # a fresh process (a new store object) finds the relations again; the export types the edges
    reopened = EmbeddedStore(tmp_path / "store")
    snapshot = export_snapshot(reopened)
    graph = snapshot.message_passing("train")
    types = set(graph.edge_types)
    # a linked movie entity is its product: the relations start at the product (no DESCRIBES hop)
    for rel in ("film_film_directed_by", "film_film_genre", "starring"):
        assert ("product", rel, "entity") in types and ("entity", f"rev_{rel}", "product") in types
    assert not any("describes" in rel for _, rel, _ in types)
    assert graph["entity"].num_nodes == 4 + 3 + 5  # directors, genres, actors; the 20 movie entities merged
    assert graph["product", "starring", "entity"].edge_index.shape == (2, 40)

    # the fused model trains and evaluates on it, messages flowing through the KG relations
    torch.manual_seed(0)
    text = torch.randn(snapshot.num_products, 16)
    model = build_model("fused", ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=16, gnn_layers=2))
    assert ("product", "starring", "entity") in model.graph.edge_types
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: OpenMP threads only contend on a shared CPU
    try:
        history = fit(model, snapshot, TrainConfig(epochs=2, batch_size=32, device="cpu", patience=5), progress=False)
        result = evaluate(model, snapshot, "test", ks=(5, 10))
    finally:
        torch.set_num_threads(threads)
    assert len(history.losses) == 2 and all(np.isfinite(history.losses))
    assert 0.0 <= result.metrics["ndcg@10"] <= 1.0 and 0.0 <= result.metrics["recall@10"] <= 1.0

    # re-ingest: nothing added
    again = Ingestor(EmbeddedStore(tmp_path / "store"), IngestConfig(dangling=found.dangling)).run(discover([tmp_path / "toy"]).sources)
    assert sum(again.added().values()) == 0 and again.rejected == 0


def test_recbole_without_item_file_creates_products(tmp_path, recbole_kg):
    recbole_kg(tmp_path / "toy")
    (tmp_path / "toy" / "toy.item").unlink()
    (tmp_path / "toy" / "toy.link").unlink()
    found = discover([tmp_path / "toy"])
    assert found.dangling == {"product": "create"}
    store = EmbeddedStore(tmp_path / "store")
    report = Ingestor(store, IngestConfig(dangling=found.dangling)).run(found.sources)
    used = {line.split("\t")[1] for line in (tmp_path / "toy" / "toy.inter").read_text().splitlines()[1:]}
    assert report.rejected == 0 and store.counts()["Product"] == len(used) == report.created["product"]


@pytest.mark.parametrize(
    "bad, reason",
    [("u1\t3\tfive\t1600000000", "not_number"), ("u1\t3\t4.0", "field_count"), ("\t3\t4.0\t1600000000", "missing")],
)
def test_recbole_bad_rows_are_reported(tmp_path, bad, reason, recbole_kg):
    recbole_kg(tmp_path / "toy")
    path = tmp_path / "toy" / "toy.inter"
    path.write_text(path.read_text() + bad + "\n")
    found = discover([tmp_path / "toy"])
    report = Ingestor(EmbeddedStore(tmp_path / "store"), IngestConfig(dangling=found.dangling)).run(found.sources)
    inter = next(f for f in report.files if f.kind == "interaction")
    assert (inter.read, inter.rejected, inter.reasons) == (73, 1, {reason: 1})
    assert report.rejects[0]["row"] == 73 and report.rejects[0]["line"] == 74
