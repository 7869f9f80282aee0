"""kgrec.serving.update.warm_start: weights copied by name and shape; id-indexed rows matched by
external id (the same catalogue, grown) or left fresh with the buffers (another catalogue)."""
from __future__ import annotations

import pytest
import torch

from kgrec.fusion.models import FusedConfig, ModelInputs
from kgrec.fusion.registry import build_model
from kgrec.serving.update import id_indexed_keys, warm_start

OLD_EDGES = [("user", "interacted", "product"), ("product", "rev_interacted", "user"),
             ("product", "in_category", "category"), ("category", "rev_in_category", "product")]
NEW_EDGES = OLD_EDGES[:2] + [("entity", "describes", "product"), ("product", "rev_describes", "entity")]


def model(users: int, products: int, edges, seed: int):
    nodes = {"user": users, "product": products, **{t: 3 for e in edges for t in (e[0], e[2]) if t not in ("user", "product")}}
    torch.manual_seed(seed)
    inputs = ModelInputs(users, products, num_nodes=nodes, edge_types=edges, text_features=torch.randn(products, 8))
    fused = build_model("fused", inputs, FusedConfig(graph_dim=4, max_history=5))
    with torch.no_grad():  # move the zero-initialised adapters too, so a copy shows
        for p in fused.parameters():
            p.add_(torch.randn_like(p))
    return fused


def test_id_indexed_keys_are_the_embedding_tables():
    keys = id_indexed_keys(model(3, 4, OLD_EDGES, 0))
    assert keys == {"graph.embedding.user.weight", "graph.embedding.product.weight", "graph.embedding.category.weight"}


@pytest.mark.parametrize("match_ids", [True, False])
def test_warm_start(match_ids):
    old = model(3, 4, OLD_EDGES, 0)
    new = model(4, 5, OLD_EDGES if match_ids else NEW_EDGES, 1)
    start = {k: v.clone() for k, v in new.state_dict().items()}
    old_maps = {"user": ["a", "b", "c"], "product": ["p", "q", "r", "s"]}
    new_maps = {"user": ["b", "z", "a", "c"], "product": ["s", "p", "x", "q", "r"]}
    report = warm_start(new, old.state_dict(), old_maps, new_maps, match_ids=match_ids)
    state, before = new.state_dict(), old.state_dict()
    for key in ("text_adapter.weight", "query_adapter.bias", "gate.weight", "recency", "user_ffn.0.weight", "graph_proj.weight",
                "graph.convs.0.convs.<user___interacted___product>.lin_l.weight"):
        assert key in report["copied_keys"] and torch.equal(state[key], before[key])
    users = state["graph.embedding.user.weight"]
    if match_ids:  # rows of the users both maps know come from the old table, "z" keeps its start
        assert torch.equal(users[[0, 2, 3]], before["graph.embedding.user.weight"][[1, 0, 2]])
        assert torch.equal(users[1], start["graph.embedding.user.weight"][1])
        assert report["rows_fresh"] == 1 + 1  # user z, product x
        assert report["rebuilt"] == ["text"] and report["dropped"] == []
    else:  # another catalogue: id tables and the text buffer keep what the new model was built with
        for key in ("graph.embedding.user.weight", "graph.embedding.product.weight", "graph.embedding.entity.weight"):
            assert key in report["fresh"] and torch.equal(state[key], start[key])
        assert report["rows_copied"] == 0 and report["rebuilt"] == ["text"] and torch.equal(state["text"], start["text"])
        assert any("<entity___describes___product>" in k for k in report["fresh"])
        assert "graph.embedding.category.weight" in report["dropped"]
        assert any("<product___in_category___category>" in k for k in report["dropped"])
    assert not set(report["fresh"]) & set(report["copied_keys"])
    assert report["copied"] == len(report["copied_keys"])


def test_skipped_prefixes_are_left_alone():
    old, new = model(3, 4, OLD_EDGES, 0), model(3, 4, OLD_EDGES, 1)
    start = new.state_dict()["gate.weight"].clone()
    report = warm_start(new, old.state_dict(), {}, {}, match_ids=False, skip=("gate.",))
    assert torch.equal(new.state_dict()["gate.weight"], start)
    assert not any(k.startswith("gate.") for k in report["copied_keys"] + report["fresh"] + report["dropped"])
