"""Explanations: every path exists in the knowledge graph, scores follow the heuristic, Cypher is clean."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.kg.schema import NODE_TYPES, REL_TYPES
from kgrec.serving.api import Scorer
from kgrec.serving.artifact import save_artifact
from kgrec.serving.explain import SESSION

LINT = Path(__file__).resolve().parents[2] / "tools" / "cypher-lint"


@pytest.fixture(scope="module")
def scorer(tiny_snapshot, tiny_store, tmp_path_factory):
    text = torch.randn(tiny_snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))
    model = build_model("fused", ModelInputs.from_snapshot(tiny_snapshot, text), FusedConfig(graph_dim=8))
    fit(model, tiny_snapshot, TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu"), progress=False)
    path = save_artifact(model, tiny_snapshot, tmp_path_factory.mktemp("explain") / "fused", products=tiny_store.nodes("Product"))
    return Scorer.load(path)


@pytest.fixture(scope="module")
def explanations(scorer):
    """Every (user, product) pair outside the user's history."""
    out = []
    for user in scorer.user_ids:
        seen = set(scorer.user_history(user))
        for product in scorer.product_ids:
            if product not in seen:
                out.append(scorer.explain(user, product, max_paths=50))
    return out


def _has_edge(graph, a, rel, b):
    return any(d["type"] == rel for d in (graph.get_edge_data(a, b) or {}).values())


def test_every_path_exists_in_the_store_graph(explanations, tiny_store):
    graph = tiny_store.graph()
    kinds = set()
    for exp in explanations:
        for path in exp.paths:
            kinds.add(path.kind)
            assert path.nodes[0] == ("User", exp.user_id) and path.nodes[-1] == ("Product", exp.product_id)
            assert len(path.rels) == len(path.nodes) - 1
            for a, (rel, direction), b in zip(path.nodes, path.rels, path.nodes[1:]):
                src, dst = (a, b) if direction == "->" else (b, a)
                assert _has_edge(graph, src, rel, dst), (path.text, src, rel, dst)
    assert kinds == {"brand", "category", "co_purchase"}


def test_paths_follow_the_documented_heuristic(explanations, scorer, tiny_snapshot):
    visible = tiny_snapshot.visible("test")
    users, products = tiny_snapshot.id_maps["user"], tiny_snapshot.id_maps["product"]
    buyers = {}
    for u, p in zip(visible["user"], visible["product"]):
        buyers.setdefault(products[p], set()).add(users[u])
    unit = F.normalize(scorer.state["products"], dim=-1)
    checked = 0
    for exp in explanations[:60]:
        user = F.normalize(scorer._users([exp.user_id])[0][0], dim=-1)
        # best path of each history product first (distinct vias), then the rest; each part by score
        cut = len({p.via for p in exp.paths})
        head, tail = exp.paths[:cut], exp.paths[cut:]
        assert len({p.via for p in head}) == cut
        for part in (head, tail):
            assert [p.score for p in part] == sorted((p.score for p in part), reverse=True)
        assert exp.model_score == pytest.approx(scorer.score([(exp.user_id, exp.product_id)])[0], abs=1e-5)
        for path in exp.paths:
            x, y = unit[scorer.product_ids.index(path.via)], unit[scorer.product_ids.index(exp.product_id)]
            base = max(float(user @ x), 0.0) * max(float(x @ y), 0.0)
            if path.kind == "co_purchase":
                n = len((buyers[path.via] & buyers[exp.product_id]) - {exp.user_id})
                assert path.support == n > 0
                assert path.score == pytest.approx(base * n / (n + 1), abs=1e-5)
            else:
                assert path.score == pytest.approx(base, abs=1e-5)
                field = {"brand": scorer.brand, "category": scorer.category}[path.kind]
                assert field[scorer.product_ids.index(path.via)] == field[scorer.product_ids.index(exp.product_id)] == path.nodes[2][1]
            checked += 1
    assert checked > 20


def test_cypher_uses_parameters_and_schema_names_only(explanations):
    labels, rels = set(NODE_TYPES), set(REL_TYPES)
    seen = set()
    for exp in explanations:
        for path in exp.paths:
            if path.kind in seen:
                continue
            seen.add(path.kind)
            assert set(re.findall(r"\$([A-Za-z_]\w*)", path.cypher)) == set(path.params)
            for value in path.params.values():
                if isinstance(value, str):
                    assert value not in path.cypher
            assert set(re.findall(r":`(\w+)`\s*[{)]", path.cypher)) <= labels
            assert {r for group in re.findall(r"\[:([^\]]+)\]", path.cypher) for r in re.findall(r"`(\w+)`", group)} <= rels
            assert path.browser_params().startswith(":params {") and json.dumps(exp.user_id) in path.browser_params()
    assert seen == {"brand", "category", "co_purchase"}


def test_cypher_passes_the_neo4j_linter(explanations, scorer):
    if not (LINT / "node_modules" / "@neo4j-cypher" / "language-support").is_dir():
        pytest.skip("tools/cypher-lint is not installed (`make setup`)")
    session = scorer.explain("visitor", "P05", session=scorer.user_history("U1"), max_paths=50)
    queries = {}
    for exp in [*explanations, session]:
        for path in exp.paths:
            key = (path.kind, path.rels[0][0] == SESSION)
            queries.setdefault(key, (path.cypher, list(path.params)))
    assert len(queries) >= 4
    payload = {
        "schema": {"labels": sorted(NODE_TYPES), "relationshipTypes": sorted(REL_TYPES),
                   "propertyKeys": sorted({nt.key for nt in NODE_TYPES.values()} | {"order"})},
        "statements": [{"name": f"{k}-{s}", "query": q, "parameters": p} for (k, s), (q, p) in queries.items()],
    }
    proc = subprocess.run(["node", str(LINT / "lint.mjs")], input=json.dumps(payload), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert {r["name"]: r["diagnostics"] for r in json.loads(proc.stdout)} == {n: [] for n in (s["name"] for s in payload["statements"])}


def test_session_user_and_errors(scorer):
    exp = scorer.explain("visitor", "P05", session=scorer.user_history("U1"))
    assert exp.source == "session"
    for path in exp.paths:
        assert path.rels[0] == (SESSION, "->") and "user_id" not in path.params and "$user_id" not in path.cypher
    with pytest.raises(ValueError, match="'visitor'"):
        scorer.explain("visitor", "P05")
    with pytest.raises(ValueError, match="'NOPE'"):
        scorer.explain("U1", "NOPE")
    assert scorer.explain("U1", scorer.user_history("U1")[-1]).paths is not None  # a seen product: no crash
