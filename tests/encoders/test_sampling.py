"""Tests for kgrec.encoders.sampling: CSRGraph and the plain-torch NeighborSampler.

Expected values come from independent computations: a dense adjacency for the CSR,
a breadth-first search over edge lists for the k-hop in-neighbourhood.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch_geometric.data import HeteroData

from kgrec.encoders.sampling import CSRGraph, NeighborSampler, SampledSubgraph, drop_edges, pyg_sampling_available

UA = ("a", "to", "b")
BA = ("b", "back", "a")
AA = ("a", "self", "a")


def random_graph(seed: int = 0, n_a: int = 12, n_b: int = 9, isolated_b: int = 8) -> HeteroData:
    """Two node types, three edge types, multi-edges allowed; node ``b[isolated_b]`` has no
    in-edges and no out-edges."""
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data["a"].num_nodes, data["b"].num_nodes = n_a, n_b
    b_ids = torch.tensor([i for i in range(n_b) if i != isolated_b])

    def edges(src_pool, dst_pool, count):
        src = src_pool[torch.randint(0, len(src_pool), (count,), generator=g)]
        dst = dst_pool[torch.randint(0, len(dst_pool), (count,), generator=g)]
        return torch.stack([src, dst])

    a_ids = torch.arange(n_a)
    data[UA].edge_index = edges(a_ids, b_ids, 40)
    data[BA].edge_index = edges(b_ids, a_ids, 30)
    data[AA].edge_index = edges(a_ids, a_ids, 25)
    return data


def edge_multiset(data: HeteroData, edge_type) -> Counter:
    return Counter(map(tuple, data[edge_type].edge_index.T.tolist()))


def sampled_multiset(sub: SampledSubgraph, edge_type) -> Counter:
    return Counter(map(tuple, sub.global_edge_index(edge_type).T.tolist()))


def in_neighbourhood(data: HeteroData, seeds: dict[str, list[int]], hops: int):
    """BFS against the edge direction: (nodes per type, {node: distance}) within ``hops``."""
    dist = {(t, v): 0 for t, vs in seeds.items() for v in vs}
    frontier = set(dist)
    for h in range(1, hops + 1):
        nxt = set()
        for (src_t, _, dst_t), index in data.edge_index_dict.items():
            for s, d in index.T.tolist():
                if (dst_t, d) in frontier and (src_t, s) not in dist:
                    nxt.add((src_t, s))
        for node in nxt:
            dist[node] = h
        frontier = nxt
    nodes = {t: {v for (tt, v) in dist if tt == t} for t in data.node_types}
    return nodes, dist


def test_csr_matches_dense_adjacency():
    data = random_graph()
    csr = CSRGraph.from_hetero(data)
    for edge_type, index in data.edge_index_dict.items():
        src_t, _, dst_t = edge_type
        n_src, n_dst = data[src_t].num_nodes, data[dst_t].num_nodes
        dense = torch.zeros(n_dst, n_src, dtype=torch.long)
        dense.index_put_((index[1], index[0]), torch.ones(index.shape[1], dtype=torch.long), accumulate=True)
        assert csr.rowptr[edge_type].shape == (n_dst + 1,) and int(csr.rowptr[edge_type][-1]) == index.shape[1]
        for v in range(n_dst):
            got = torch.bincount(csr.in_neighbours(edge_type, v), minlength=n_src)
            assert torch.equal(got, dense[v]), (edge_type, v)
        assert torch.equal(csr.degree(edge_type, torch.arange(n_dst)), dense.sum(1))
        # perm maps CSR positions back to the original edge columns
        assert torch.equal(index[0, csr.perm[edge_type]], csr.col[edge_type])
        assert bool((index[1, csr.perm[edge_type]].diff() >= 0).all())


def test_csr_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\('a', 'to', 'b'\).*destination ids"):
        CSRGraph({UA: torch.tensor([[0], [5]])}, {"a": 2, "b": 3})
    with pytest.raises(ValueError, match="node type 'c'"):
        CSRGraph({("a", "x", "c"): torch.tensor([[0], [0]])}, {"a": 2})


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_all_neighbours_give_exactly_the_k_hop_in_neighbourhood(hops):
    data = random_graph(seed=1)
    seeds = {"b": [3, 0], "a": [5]}
    sub = NeighborSampler(data, [-1] * hops, backend="torch").sample({t: torch.tensor(v) for t, v in seeds.items()})
    nodes, dist = in_neighbourhood(data, seeds, hops)
    for t in data.node_types:
        assert set(sub.n_id[t].tolist()) == nodes[t]
        assert sub.n_id[t].unique().numel() == sub.n_id[t].numel()
    # edges: every in-edge of every node closer than `hops`, with multiplicity, and nothing else
    for edge_type in data.edge_types:
        src_t, _, dst_t = edge_type
        expected = Counter(
            (s, d) for s, d in data[edge_type].edge_index.T.tolist() if dist.get((dst_t, d), hops) < hops
        )
        assert sampled_multiset(sub, edge_type) == expected


def test_seeds_come_first_in_their_order_and_nodes_by_hop():
    data = random_graph(seed=2)
    seeds = {"a": torch.tensor([7, 2, 9]), "b": torch.tensor([4])}
    sub = NeighborSampler(data, [-1, -1], backend="torch").sample(seeds)
    assert sub.num_seeds == {"a": 3, "b": 1}
    assert sub.n_id["a"][:3].tolist() == [7, 2, 9] and sub.n_id["b"][:1].tolist() == [4]
    _, dist = in_neighbourhood(data, {t: v.tolist() for t, v in seeds.items()}, 2)
    for t in ("a", "b"):
        hop = [dist[(t, v)] for v in sub.n_id[t].tolist()]
        assert hop == sorted(hop)  # nodes join hop by hop


def sample_hops(sub: SampledSubgraph) -> dict[tuple[str, int], int]:
    """The hop at which each node was expanded, read off the sampled edges: seeds 0, and
    1 + the smallest hop among the nodes it sends a sampled edge to."""
    hop = {(t, v): 0 for t, ids in sub.n_id.items() for v in ids[: sub.num_seeds[t]].tolist()}
    edges = [(e, sub.global_edge_index(e).T.tolist()) for e in sub.edge_index_dict]
    changed = True
    while changed:
        changed = False
        for (src_t, _, dst_t), pairs in edges:
            for s, d in pairs:
                if (dst_t, d) in hop and hop.get((src_t, s), 1 << 30) > hop[(dst_t, d)] + 1:
                    hop[(src_t, s)] = hop[(dst_t, d)] + 1
                    changed = True
    return hop


@pytest.mark.parametrize("fanouts", [[2], [3, 1], [1, 2, 2]])
def test_fanout_limits_per_node_and_edge_type(fanouts):
    data = random_graph(seed=3)
    csr = CSRGraph.from_hetero(data)
    seeds = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([0, 1, 2])}
    sub = NeighborSampler(data, fanouts, backend="torch", seed=5).sample(seeds)
    hop = sample_hops(sub)
    assert set(hop) == {(t, v) for t, ids in sub.n_id.items() for v in ids.tolist()}
    for edge_type in data.edge_types:
        src_t, _, dst_t = edge_type
        got = sampled_multiset(sub, edge_type)
        assert not got - edge_multiset(data, edge_type)  # every sampled edge exists (with multiplicity)
        per_dst = Counter(d for (_, d), c in got.items() for _ in range(c))
        for v in sub.n_id[dst_t].tolist():
            h = hop[(dst_t, v)]
            if h < len(fanouts):
                # without replacement: min(fanout, degree) in-edges of every expanded node
                deg = int(csr.degree(edge_type, torch.tensor([v])))
                assert per_dst[v] == min(fanouts[h], deg), (edge_type, v, h)
            else:
                assert per_dst[v] == 0  # the last hop's nodes are not expanded


def test_with_replacement_draws_exactly_the_fanout():
    data = random_graph(seed=4)
    csr = CSRGraph.from_hetero(data)
    seeds = torch.arange(data["b"].num_nodes)
    sub = NeighborSampler(data, [5], replace=True, backend="torch", seed=0).sample({"b": seeds})
    got = sampled_multiset(sub, UA)
    per_dst = Counter(d for (_, d), c in got.items() for _ in range(c))
    deg = csr.degree(UA, seeds)
    for v in seeds.tolist():
        assert per_dst[v] == (5 if deg[v] > 0 else 0)
    assert set(got) <= set(edge_multiset(data, UA))


def test_sampling_is_uniform_over_in_edges():
    """Node b0's in-edges drawn 2 at a time, 2000 times: each edge in about 2/deg of the draws."""
    data = HeteroData()
    data["a"].num_nodes, data["b"].num_nodes = 6, 1
    data[UA].edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]])
    sampler = NeighborSampler(data, [2], backend="torch", seed=0)
    counts = torch.zeros(6)
    for _ in range(2000):
        sub = sampler.sample({"b": torch.tensor([0])})
        src = sub.global_edge_index(UA)[0]
        assert src.unique().numel() == 2  # without replacement
        counts[src] += 1
    assert torch.allclose(counts / 2000, torch.full((6,), 2 / 6), atol=0.04)


def test_determinism_with_a_seed():
    data = random_graph(seed=5)
    seeds = {"a": torch.tensor([1, 4, 6])}

    def run(seed):
        sampler = NeighborSampler(data, [2, 2], backend="torch", seed=seed)
        return [sampler.sample(seeds) for _ in range(3)]

    first, again, other = run(11), run(11), run(12)
    for x, y in zip(first, again):
        assert all(torch.equal(x.n_id[t], y.n_id[t]) for t in x.n_id)
        assert all(torch.equal(x.edge_index_dict[e], y.edge_index_dict[e]) for e in x.edge_index_dict)
    assert any(
        not torch.equal(x.edge_index_dict[e], y.edge_index_dict[e])
        for x, y in zip(first, other)
        for e in x.edge_index_dict
    )


def test_empty_seeds_give_an_empty_subgraph_with_every_type():
    data = random_graph()
    for seeds in ({}, {"a": torch.empty(0, dtype=torch.long)}):
        sub = NeighborSampler(data, [3, 3], backend="torch").sample(seeds)
        assert set(sub.n_id) == {"a", "b"} and all(v.numel() == 0 for v in sub.n_id.values())
        assert set(sub.edge_index_dict) == set(data.edge_types)
        assert all(v.shape == (2, 0) for v in sub.edge_index_dict.values())
        assert sub.num_seeds == {"a": 0, "b": 0}


def test_node_without_neighbours_is_alone():
    data = random_graph(isolated_b=8)
    sub = NeighborSampler(data, [-1, -1], backend="torch").sample({"b": torch.tensor([8])})
    assert sub.n_id["b"].tolist() == [8] and sub.n_id["a"].numel() == 0
    assert all(v.shape == (2, 0) for v in sub.edge_index_dict.values())


def test_excluded_edges_are_never_sampled():
    data = random_graph(seed=6)
    index = data[UA].edge_index
    exclude = {UA: index[:, :10], BA: data[BA].edge_index[:, :5]}
    seeds = {"b": torch.arange(data["b"].num_nodes), "a": torch.arange(data["a"].num_nodes)}
    full = NeighborSampler(data, [-1], backend="torch").sample(seeds, exclude=exclude)
    for edge_type, pairs in exclude.items():
        banned = set(map(tuple, pairs.T.tolist()))
        expected = Counter({k: c for k, c in edge_multiset(data, edge_type).items() if k not in banned})
        assert sampled_multiset(full, edge_type) == expected  # all other edges, every copy
    limited = NeighborSampler(data, [2, 2], backend="torch", seed=0).sample(seeds, exclude=exclude)
    for edge_type, pairs in exclude.items():
        assert not set(sampled_multiset(limited, edge_type)) & set(map(tuple, pairs.T.tolist()))
    # the post-sampling filter (used for the pyg backend) gives the same edge set
    unfiltered = NeighborSampler(data, [-1], backend="torch").sample(seeds)
    dropped = drop_edges(unfiltered, exclude)
    for edge_type in data.edge_types:
        assert sampled_multiset(dropped, edge_type) == sampled_multiset(full, edge_type)


def test_bad_input_is_named():
    data = random_graph()
    sampler = NeighborSampler(data, [2], backend="torch")
    with pytest.raises(ValueError, match="duplicates"):
        sampler.sample({"a": torch.tensor([1, 1])})
    with pytest.raises(ValueError, match="'zzz'"):
        sampler.sample({"zzz": torch.tensor([0])})
    with pytest.raises(ValueError, match=r"seeds of 'b' must be in \[0, 9\)"):
        sampler.sample({"b": torch.tensor([9])})
    with pytest.raises(ValueError, match="fanouts"):
        NeighborSampler(data, [0])
    with pytest.raises(ValueError, match="backend"):
        NeighborSampler(data, [1], backend="dgl")


@pytest.mark.skipif(pyg_sampling_available(), reason="pyg-lib / torch-sparse is installed")
def test_pyg_backend_without_extensions_says_what_to_do():
    with pytest.raises(ImportError, match=r"pyg-lib.*backend='torch'"):
        NeighborSampler(random_graph(), [2], backend="pyg")
    assert NeighborSampler(random_graph(), [2], backend="auto").backend == "torch"


def test_snapshot_graph(tiny_snapshot):
    """On the tiny knowledge graph: 2 hops from two products reach users, categories, brands."""
    data = tiny_snapshot.message_passing("train")
    seeds = {"product": torch.tensor([5, 0])}
    sub = NeighborSampler(data, [-1, -1], backend="torch").sample(seeds)
    nodes, _ = in_neighbourhood(data, {"product": [5, 0]}, 2)
    assert {t: set(v.tolist()) for t, v in sub.n_id.items()} == nodes
    assert sub.n_id["product"][:2].tolist() == [5, 0]
