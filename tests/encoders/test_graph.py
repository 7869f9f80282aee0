"""Tests for the graph encoders of kgrec.encoders.graph, full batch and on sampled subgraphs (``n_id``)."""
from __future__ import annotations

import pytest
import torch

from kgrec.encoders.graph import HeteroGraphEncoder, RelationalGraphEncoder
from kgrec.encoders.sampling import NeighborSampler

ENCODERS = [HeteroGraphEncoder, RelationalGraphEncoder]


def make_encoder(graph, num_layers: int = 2, input_dims=None, seed: int = 0, feature_only=(), cls=HeteroGraphEncoder):
    torch.manual_seed(seed)
    enc = cls(
        {t: graph[t].num_nodes for t in graph.node_types}, list(graph.edge_types), dim=8,
        num_layers=num_layers, input_dims=input_dims, feature_only=feature_only,
    )
    with torch.no_grad():  # non-zero biases everywhere, so a missing message would show
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc.eval()


@pytest.fixture(scope="module")
def graph(tiny_snapshot):
    return tiny_snapshot.message_passing("train")


@pytest.mark.parametrize("cls", ENCODERS)
def test_without_n_id_nothing_changes(graph, cls):
    enc = make_encoder(graph, cls=cls)
    full = enc(graph.edge_index_dict)
    # the whole graph given as a "subgraph" in identity order is the same computation
    everything = {t: torch.arange(graph[t].num_nodes) for t in graph.node_types}
    same = enc(graph.edge_index_dict, n_id=everything)
    assert set(full) == set(graph.node_types)
    for t in graph.node_types:
        assert full[t].shape == (graph[t].num_nodes, 8)
        assert torch.allclose(full[t], same[t], atol=1e-6)


def test_feature_only_types_have_no_id_embedding_and_are_inductive(graph, tiny_snapshot):
    features = {"product": torch.randn(tiny_snapshot.num_products, 5, generator=torch.Generator().manual_seed(1))}
    enc = make_encoder(graph, 1, input_dims={"product": 5}, feature_only=("product",))
    assert "product" not in enc.embedding and "user" in enc.embedding
    assert enc.num_nodes["product"] == tiny_snapshot.num_products
    # two products with the same features and the same neighbours get the same vector
    edges = {e: i for e, i in graph.edge_index_dict.items() if "product" not in (e[0], e[2])}
    same = dict(features)
    same["product"] = features["product"].clone()
    same["product"][3] = same["product"][8]
    out = enc(edges, same)["product"]
    assert torch.allclose(out[3], out[8], atol=1e-6)
    assert not torch.allclose(out[3], out[4], atol=1e-3)
    # with ID embeddings the same two products differ
    with_ids = make_encoder(graph, 1, input_dims={"product": 5})(edges, same)["product"]
    assert not torch.allclose(with_ids[3], with_ids[8], atol=1e-3)
    with pytest.raises(ValueError, match="no input features"):
        HeteroGraphEncoder({"product": 3}, [], dim=4, feature_only=("product",))


@pytest.mark.parametrize("cls", ENCODERS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("with_features", [False, True, "feature_only"])
def test_sampled_seeds_equal_full_batch(graph, tiny_snapshot, num_layers, with_features, cls):
    """All neighbours, one hop per layer: the seeds' outputs are exactly the full-graph ones."""
    features = {"product": torch.randn(tiny_snapshot.num_products, 5, generator=torch.Generator().manual_seed(1))}
    enc = make_encoder(graph, num_layers, input_dims={"product": 5} if with_features else None,
                       feature_only=("product",) if with_features == "feature_only" else (), cls=cls)
    feats = features if with_features else None
    full = enc(graph.edge_index_dict, feats)
    seeds = {"product": torch.tensor([7, 0, 19]), "user": torch.tensor([4, 2]), "brand": torch.tensor([1])}
    sub = NeighborSampler(graph, [-1] * num_layers, backend="torch").sample(seeds)
    if num_layers == 1:  # a proper subgraph, not the whole graph in another order
        assert sum(v.numel() for v in sub.n_id.values()) < sum(graph[t].num_nodes for t in graph.node_types)
    local = enc(sub.edge_index_dict, feats, n_id=sub.n_id)
    for t, ids in seeds.items():
        assert local[t].shape == (sub.n_id[t].numel(), 8)
        assert torch.allclose(local[t][: ids.numel()], full[t][ids], atol=1e-5), t


def test_too_few_hops_are_not_exact(graph):
    """The check above is sensitive: one hop for a 2-layer encoder misses 2-hop messages."""
    enc = make_encoder(graph, 2)
    full = enc(graph.edge_index_dict)
    seeds = {"product": torch.arange(6)}
    sub = NeighborSampler(graph, [-1], backend="torch").sample(seeds)
    local = enc(sub.edge_index_dict, n_id=sub.n_id)
    assert not torch.allclose(local["product"][:6], full["product"][:6], atol=1e-3)


def test_gradients_reach_only_the_sampled_rows(graph):
    enc = make_encoder(graph).train()
    sub = NeighborSampler(graph, [2, 2], backend="torch", seed=0).sample({"product": torch.tensor([3])})
    out = enc(sub.edge_index_dict, n_id=sub.n_id)
    out["product"][0].sum().backward()
    grad = enc.embedding["product"].weight.grad
    touched = set(torch.nonzero(grad.abs().sum(1)).squeeze(1).tolist())
    assert 3 in touched and touched <= set(sub.n_id["product"].tolist())


@pytest.mark.parametrize("cls", ENCODERS)
def test_missing_node_types_have_no_nodes(graph, cls):
    enc = make_encoder(graph, cls=cls)
    edges = {e: torch.empty(2, 0, dtype=torch.long) for e in graph.edge_types}
    out = enc(edges, n_id={"product": torch.tensor([2, 5])})
    assert out["product"].shape == (2, 8) and out["user"].shape == (0, 8)


def test_features_are_required_with_n_id_too(graph):
    enc = make_encoder(graph, input_dims={"product": 5})
    with pytest.raises(ValueError, match="'product' was built with input features"):
        enc(graph.edge_index_dict, n_id={"product": torch.tensor([0])})


def test_relational_encoder_has_one_weight_per_relation_name():
    """An edge type's relation name picks its weight: the same relation between other node types
    shares it, and renaming a relation changes the messages."""
    num_nodes = {"product": 4, "entity": 3}
    pp = torch.tensor([[0, 1], [1, 2]])
    pe = torch.tensor([[0, 3], [0, 1]])
    types = [("product", "genre", "product"), ("product", "genre", "entity"), ("entity", "rev_genre", "product"),
             ("product", "actor", "entity")]
    torch.manual_seed(0)
    enc = RelationalGraphEncoder(num_nodes, types, dim=6, num_layers=1, num_bases=2).eval()
    assert enc.relations == ["actor", "genre", "rev_genre"]
    assert enc.convs[0].comp.shape == (3, 2) and enc.convs[0].weight.shape == (2, 6, 6)
    edges = {types[0]: pp, types[1]: pe, types[2]: pe.flip(0)}
    out = enc(edges)
    assert out["product"].shape == (4, 6) and out["entity"].shape == (3, 6)
    # the same edges under another relation name give other vectors to the nodes they reach
    renamed = enc({types[0]: pp, ("product", "actor", "entity"): pe, types[2]: pe.flip(0)})
    assert torch.allclose(renamed["product"], out["product"], atol=1e-6)
    assert not torch.allclose(renamed["entity"][0], out["entity"][0], atol=1e-4)
    assert torch.allclose(renamed["entity"][2], out["entity"][2], atol=1e-6)  # entity 2 gets no messages
    # an edge type the encoder was not built with sends nothing
    ignored = enc({**edges, ("entity", "unknown", "entity"): torch.tensor([[0], [2]])})
    assert torch.allclose(ignored["entity"], out["entity"])


@pytest.mark.parametrize("cls", ENCODERS)
def test_quiet_relations_send_nothing_until_trained(graph, cls):
    """Knowledge-graph relations that start quiet leave products and users as they are without them;
    one training step opens them."""
    num_nodes = {t: graph[t].num_nodes for t in graph.node_types} | {"entity": 4}
    kg = {("product", "genre", "entity"): torch.tensor([[0, 1, 2, 5], [0, 0, 1, 3]]),
          ("entity", "rev_genre", "product"): torch.tensor([[0, 0, 1, 3], [0, 1, 2, 5]])}
    torch.manual_seed(0)
    # the relation into products starts quiet; the one into entities does not (entities must carry
    # something for the quiet relation that reads them to get a gradient)
    enc = cls(num_nodes, [*graph.edge_types, *kg], dim=8, num_layers=2, quiet=[("entity", "rev_genre", "product")]).eval()
    with_kg = enc({**graph.edge_index_dict, **kg})
    without = enc(graph.edge_index_dict)
    for t in ("product", "user"):
        assert torch.allclose(with_kg[t], without[t], atol=1e-6)
    enc.train()
    enc({**graph.edge_index_dict, **kg})["product"][:3].sum().backward()
    if cls is HeteroGraphEncoder:  # the quiet convolution's own weights get a gradient
        grad = enc.convs[-1].convs[("entity", "rev_genre", "product")].lin_l.weight.grad
    else:  # the quiet relation's basis coefficients do
        grad = enc.convs[-1].comp.grad[enc.relation_id["rev_genre"]]
    assert grad is not None and grad.abs().sum() > 0
    loud = cls(num_nodes, [*graph.edge_types, *kg], dim=8, num_layers=2).eval()
    assert not torch.allclose(loud({**graph.edge_index_dict, **kg})["product"], loud(graph.edge_index_dict)["product"])
