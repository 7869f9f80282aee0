"""Write-back of a trained model into the Neo4j store (FalkorDB's Bolt server in CI)."""
import pytest
import torch

from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.ingest.load import load_tables
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import save_artifact
from kgrec.serving.writeback import recommendation_frame, write_back


@pytest.fixture(scope="module")
def scorer(tiny_snapshot, tiny_store, tmp_path_factory):
    text = torch.randn(tiny_snapshot.num_products, 8, generator=torch.Generator().manual_seed(0))
    model = build_model("text-only", ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8))
    fit(model, tiny_snapshot, TrainConfig(epochs=1, batch_size=32, device="cpu"), progress=False)
    path = save_artifact(model, tiny_snapshot, tmp_path_factory.mktemp("wb") / "a", products=tiny_store.nodes("Product"))
    return Scorer.load(path)


def test_write_back_into_neo4j(neo4j_store, scorer, tiny_tables):
    neo4j_store.batch_size = 3  # FalkorDB's Bolt layer fails on parameters over about 4 KB
    load_tables(tiny_tables, neo4j_store, progress=False)
    summary = write_back(scorer, neo4j_store, k=3, model_version="t1", batch_size=4, progress=False)
    assert (summary.products, summary.users, summary.recommendations) == (24, 10, 30)
    written = neo4j_store.recommendations()
    expected = recommendation_frame(scorer, scorer.user_ids, 3, "t1")
    assert written[["user_id", "product_id", "rank"]].values.tolist() == expected.sort_values(
        ["user_id", "rank"])[["user_id", "product_id", "rank"]].values.tolist()
    # scores travel with 6 significant digits through FalkorDB's Bolt layer
    assert written["score"].to_numpy() == pytest.approx(expected.sort_values(["user_id", "rank"])["score"].to_numpy(), rel=1e-5)
    # the product vectors went in, and the vector index finds a product from its own vector
    vector = scorer.state["products"][5].tolist()
    nearest = neo4j_store.similar("Product", vector, k=1)
    assert nearest["id"].tolist() == [scorer.product_ids[5]]
    # a rerun of the same version replaces, it does not add
    write_back(scorer, neo4j_store, k=2, model_version="t1", batch_size=4, progress=False)
    assert len(neo4j_store.recommendations()) == 20


def test_write_back_needs_a_store_that_takes_it(scorer, tiny_store):
    with pytest.raises(TypeError, match="use the Neo4j store"):
        write_back(scorer, tiny_store, progress=False)
