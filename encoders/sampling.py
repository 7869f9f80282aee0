"""Layer-wise neighbour sampling for mini-batch GNN training, in plain torch.

PyG's own samplers need the compiled extensions ``pyg-lib`` or ``torch-sparse``,
which do not install from PyPI for every torch build. This module samples over a
CSR built with torch ops only, and uses PyG's sampler when those extensions are
present (``backend="auto"``).

* :class:`CSRGraph`: per edge type a CSR keyed by the DESTINATION node, so the
  in-neighbours of a node are one slice of ``col``.
* :class:`NeighborSampler`: ``sample(seeds) -> SampledSubgraph``; hop ``h`` draws up
  to ``fanouts[h]`` in-neighbours per frontier node and edge type, uniformly without
  replacement (``-1`` = all of them), vectorised over nodes.

A GNN with ``L`` layers run on a subgraph of ``L`` hops with every fanout ``-1``
computes exactly the full-graph outputs of the seeds: a node first reached at hop
``d`` has all its in-edges when ``d < L``, which is all that the seeds' ``L``-layer
outputs read (nodes of the last hop only contribute their input embedding).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch_geometric.data import HeteroData

if TYPE_CHECKING:
    from torch_geometric.sampler import NeighborSampler as PyGNeighborSampler

EdgeType = tuple[str, str, str]


def _edge_type(key: Sequence[str]) -> EdgeType:
    """``key`` (an edge type as a tuple, or a list as read from JSON) as an :data:`EdgeType` tuple."""
    src, rel, dst = key
    return (src, rel, dst)


class CSRGraph:
    """Destination-keyed CSR of every edge type of a heterogeneous graph.

    For edge type ``(src, rel, dst)`` the in-neighbours (source ids) of destination
    node ``v`` are ``col[e][rowptr[e][v] : rowptr[e][v + 1]]``; ``perm[e]`` maps each
    CSR position back to the column of the original ``edge_index``. Multi-edges are
    kept (each is a separate position). Built with sort / bincount / cumsum only.

    Args:
        edge_index_dict: ``{edge_type: [2, E] long}`` (row 0 = source, row 1 = destination).
        num_nodes: node type -> number of nodes (every type named by an edge type).

    Attributes:
        rowptr: ``{edge_type: [N_dst + 1] long}``.
        col: ``{edge_type: [E] long}`` source ids, grouped by destination (stable order).
        perm: ``{edge_type: [E] long}`` original edge positions.
    """

    def __init__(self, edge_index_dict: Mapping[EdgeType, torch.Tensor], num_nodes: Mapping[str, int]) -> None:
        self.num_nodes = {t: int(n) for t, n in num_nodes.items()}
        self.edge_types: list[EdgeType] = []
        self.rowptr: dict[EdgeType, torch.Tensor] = {}
        self.col: dict[EdgeType, torch.Tensor] = {}
        self.perm: dict[EdgeType, torch.Tensor] = {}
        for key, index in edge_index_dict.items():
            edge_type = _edge_type(key)
            src_t, _, dst_t = edge_type
            for t in (src_t, dst_t):
                if t not in self.num_nodes:
                    raise ValueError(f"edge type {edge_type} names node type {t!r}, which has no node count")
            if index.dim() != 2 or index.shape[0] != 2:
                raise ValueError(f"edge type {edge_type}: edge_index must be [2, E], got {tuple(index.shape)}")
            index = index.long()
            src, dst = index[0], index[1]
            for name, ids, t in (("source", src, src_t), ("destination", dst, dst_t)):
                if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_nodes[t]):
                    raise ValueError(
                        f"edge type {edge_type}: {name} ids must be in [0, {self.num_nodes[t]}) "
                        f"(got min {int(ids.min())}, max {int(ids.max())})"
                    )
            perm = torch.argsort(dst, stable=True)
            counts = torch.bincount(dst, minlength=self.num_nodes[dst_t])
            rowptr = torch.zeros(self.num_nodes[dst_t] + 1, dtype=torch.long, device=index.device)
            rowptr[1:] = torch.cumsum(counts, 0)
            self.edge_types.append(edge_type)
            self.rowptr[edge_type], self.col[edge_type], self.perm[edge_type] = rowptr, src[perm], perm

    @classmethod
    def from_hetero(cls, graph: HeteroData) -> CSRGraph:
        """The CSR of ``graph.edge_index_dict`` with ``graph[t].num_nodes`` per node type."""
        return cls(graph.edge_index_dict, {t: graph[t].num_nodes for t in graph.node_types})

    @property
    def device(self) -> torch.device:
        for value in self.rowptr.values():
            return value.device
        return torch.device("cpu")

    def degree(self, edge_type: EdgeType, nodes: torch.Tensor) -> torch.Tensor:
        """``[N]`` in-degree of destination ``nodes`` under ``edge_type``."""
        rowptr = self.rowptr[_edge_type(edge_type)]
        return rowptr[nodes + 1] - rowptr[nodes]

    def in_neighbours(self, edge_type: EdgeType, node: int) -> torch.Tensor:
        """Source ids of the in-edges of one destination ``node`` (with multiplicity)."""
        key = _edge_type(edge_type)
        rowptr = self.rowptr[key]
        return self.col[key][rowptr[node] : rowptr[node + 1]]


@dataclass
class SampledSubgraph:
    """A sampled subgraph in local ids.

    Attributes:
        n_id: node type -> ``[n_t]`` global ids of the subgraph's nodes; the seeds of a
            type come first, in the order given. Every node type of the graph is present
            (possibly empty).
        edge_index_dict: edge type -> ``[2, E_s]`` sampled edges in LOCAL ids (row 0 indexes
            ``n_id[src]``, row 1 indexes ``n_id[dst]``). Every edge type of the graph is
            present (possibly empty), so a heterogeneous conv treats node types exactly as on
            the full graph.
        num_seeds: node type -> number of seeds of that type (the first rows of ``n_id``).
    """

    n_id: dict[str, torch.Tensor]
    edge_index_dict: dict[EdgeType, torch.Tensor]
    num_seeds: dict[str, int]

    def to(self, device: torch.device | str) -> SampledSubgraph:
        return SampledSubgraph(
            {t: v.to(device) for t, v in self.n_id.items()},
            {e: v.to(device) for e, v in self.edge_index_dict.items()},
            dict(self.num_seeds),
        )

    def global_edge_index(self, edge_type: EdgeType) -> torch.Tensor:
        """``[2, E_s]`` the sampled edges of ``edge_type`` in global ids."""
        src_t, _, dst_t = edge_type
        local = self.edge_index_dict[edge_type]
        return torch.stack([self.n_id[src_t][local[0]], self.n_id[dst_t][local[1]]])


def pyg_sampling_available() -> bool:
    """Whether PyG's compiled neighbour sampling (pyg-lib or torch-sparse) is importable."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


class NeighborSampler:
    """Layer-wise uniform neighbour sampling over a heterogeneous graph.

    Hop ``h`` (``h = 0 .. len(fanouts) - 1``) takes the frontier (the seeds at hop 0,
    then the nodes first added at the previous hop) and, for every edge type whose
    destination type has frontier nodes, samples up to ``fanouts[h]`` in-edges per
    frontier node uniformly without replacement (``-1``: all in-edges; ``replace=True``:
    exactly ``fanouts[h]`` draws with replacement from nodes with any in-edge). The
    sources of sampled edges that are not yet in the subgraph join it and form the next
    frontier. The subgraph's edges are exactly the sampled edges.

    Args:
        graph: the message-passing graph (``edge_index_dict`` and ``num_nodes`` per type).
        fanouts: per hop, in-edges sampled per node and edge type (``-1`` = all).
        replace: sample with replacement (default False).
        backend: ``"torch"`` (this module's CSR sampler), ``"pyg"`` (PyG's compiled sampler;
            needs pyg-lib or torch-sparse) or ``"auto"`` (pyg when available, else torch).
        seed: seeds this sampler's own random generator (default None: the global torch RNG);
            torch backend only (the compiled samplers draw from their own generator).

    The torch backend runs on the device of the graph's ``edge_index`` tensors and keeps one
    ``[N_t]`` id map per node type per call (fine up to tens of millions of nodes).
    """

    def __init__(
        self,
        graph: HeteroData,
        fanouts: Sequence[int],
        replace: bool = False,
        backend: str = "auto",
        seed: int | None = None,
    ) -> None:
        self.fanouts = [int(f) for f in fanouts]
        if not self.fanouts:
            raise ValueError("fanouts must name at least one hop")
        bad = [f for f in self.fanouts if f < -1 or f == 0]
        if bad:
            raise ValueError(f"fanouts must be positive or -1 (all neighbours), got {list(fanouts)}")
        if backend not in ("auto", "torch", "pyg"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'pyg', got {backend!r}")
        if backend == "pyg" and not pyg_sampling_available():
            raise ImportError(
                "backend='pyg' needs PyG's compiled sampler: install pyg-lib (or torch-sparse) "
                "matching your torch build, or use backend='torch'"
            )
        self.backend = ("pyg" if pyg_sampling_available() else "torch") if backend == "auto" else backend
        self.replace = replace
        self.node_types = list(graph.node_types)
        self.edge_types: list[EdgeType] = [tuple(e) for e in graph.edge_types]
        self.num_nodes = {t: int(graph[t].num_nodes) for t in self.node_types}
        self.csr = CSRGraph(graph.edge_index_dict, self.num_nodes)
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator(device=self.csr.device)
            self.generator.manual_seed(seed)
        self._pyg: PyGNeighborSampler | None = None
        if self.backend == "pyg":
            from torch_geometric.sampler import NeighborSampler as PyGNeighborSampler

            self._pyg = PyGNeighborSampler(graph, num_neighbors=self.fanouts, replace=replace)

    def sample(
        self,
        seeds: Mapping[str, torch.Tensor],
        exclude: Mapping[EdgeType, torch.Tensor] | None = None,
    ) -> SampledSubgraph:
        """Sample the ``len(fanouts)``-hop in-neighbourhood of ``seeds``.

        Args:
            seeds: node type -> ``[S_t]`` unique global ids (types may be missing or empty).
            exclude: edge type -> ``[2, K]`` global (source, destination) pairs that must not
                be sampled (e.g. supervision edges); every copy of such an edge is excluded
                before the fanout is drawn, so the sample is a uniform sample of the graph
                without them. (The pyg backend removes them after sampling instead.)

        Returns:
            :class:`SampledSubgraph` with the seeds first in ``n_id``.
        """
        seeds = {t: torch.as_tensor(v, dtype=torch.long).reshape(-1) for t, v in seeds.items()}
        for t, ids in seeds.items():
            if t not in self.num_nodes:
                raise ValueError(f"seed node type {t!r} is not in the graph (types: {self.node_types})")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_nodes[t]):
                raise ValueError(
                    f"seeds of {t!r} must be in [0, {self.num_nodes[t]}), got min {int(ids.min())}, max {int(ids.max())}"
                )
            if torch.unique(ids).numel() != ids.numel():
                raise ValueError(f"seeds of {t!r} contain duplicates; pass torch.unique(seeds)")
        if self.backend == "pyg":
            sub = self._sample_pyg(seeds)
            return drop_edges(sub, exclude) if exclude else sub
        return self._sample_torch(seeds, exclude)

    # -- torch backend ------------------------------------------------------------------------
    def _sample_torch(
        self, seeds: dict[str, torch.Tensor], exclude: Mapping[EdgeType, torch.Tensor] | None
    ) -> SampledSubgraph:
        device = self.csr.device
        n_id = {t: [seeds.get(t, torch.empty(0, dtype=torch.long)).to(device)] for t in self.node_types}
        count = {t: int(n_id[t][0].numel()) for t in self.node_types}
        # global id -> local id (-1 = not in the subgraph yet); one dense map per type
        local = {t: torch.full((n,), -1, dtype=torch.long, device=device) for t, n in self.num_nodes.items()}
        for t in self.node_types:
            local[t][n_id[t][0]] = torch.arange(count[t], device=device)
        frontier = {t: n_id[t][0] for t in self.node_types}
        drop = {
            _edge_type(e): self._edge_keys(_edge_type(e), v.to(device))
            for e, v in (exclude or {}).items()
            if tuple(e) in self.csr.col
        }
        edges: dict[EdgeType, list[torch.Tensor]] = {e: [] for e in self.edge_types}
        for fanout in self.fanouts:
            new: dict[str, list[torch.Tensor]] = {t: [] for t in self.node_types}
            for edge_type in self.edge_types:
                src_t, _, dst_t = edge_type
                dst = frontier[dst_t]
                if dst.numel() == 0:
                    continue
                src, dst_g = self._sample_edges(edge_type, dst, fanout, drop.get(edge_type))
                if src.numel() == 0:
                    continue
                # new sources join the subgraph (each once, in order of first appearance)
                unseen = src[local[src_t][src] < 0]
                if unseen.numel():
                    fresh = _unique_in_order(unseen)
                    local[src_t][fresh] = torch.arange(count[src_t], count[src_t] + fresh.numel(), device=device)
                    count[src_t] += fresh.numel()
                    n_id[src_t].append(fresh)
                    new[src_t].append(fresh)
                edges[edge_type].append(torch.stack([local[src_t][src], local[dst_t][dst_g]]))
            frontier = {
                t: torch.cat(v) if v else torch.empty(0, dtype=torch.long, device=device) for t, v in new.items()
            }
        return SampledSubgraph(
            n_id={t: torch.cat(v) for t, v in n_id.items()},
            edge_index_dict={
                e: torch.cat(v, dim=1) if v else torch.empty(2, 0, dtype=torch.long, device=device)
                for e, v in edges.items()
            },
            num_seeds={t: int(seeds[t].numel()) if t in seeds else 0 for t in self.node_types},
        )

    def _edge_keys(self, edge_type: EdgeType, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[K]`` keys ``src * N_dst + dst`` of excluded pairs, ``[N_dst]`` bool: has an exclusion)."""
        pairs = pairs.long()
        has = torch.zeros(self.num_nodes[edge_type[2]], dtype=torch.bool, device=pairs.device)
        has[pairs[1]] = True
        return pairs[0] * self.num_nodes[edge_type[2]] + pairs[1], has

    def _sample_edges(
        self,
        edge_type: EdgeType,
        dst: torch.Tensor,
        fanout: int,
        drop: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(src [E_s], dst [E_s])`` global ids of the in-edges sampled for the ``dst`` nodes.

        Vectorised over nodes: the frontier's in-edges are laid out row by row (``row`` =
        position in ``dst``, ``pos`` = CSR position), excluded edges are removed, then
        each row keeps ``fanout`` of its edges.
        """
        rowptr, col = self.csr.rowptr[edge_type], self.csr.col[edge_type]
        device = dst.device
        start, deg = rowptr[dst], rowptr[dst + 1] - rowptr[dst]
        end = torch.cumsum(deg, 0)
        total = int(end[-1]) if end.numel() else 0
        slot = torch.arange(total, device=device)
        row = torch.searchsorted(end, slot, right=True)  # = repeat_interleave(arange, deg), faster on CPU
        first = end - deg  # offset of each row in the laid-out list
        pos = start[row] + (slot - first[row])
        if drop is not None and drop[0].numel():
            drop_keys, drop_dst = drop
            suspect = torch.nonzero(drop_dst[dst[row]]).squeeze(1)  # edges into a node with exclusions
            if suspect.numel():
                key = col[pos[suspect]] * self.num_nodes[edge_type[2]] + dst[row[suspect]]
                keep = torch.ones(row.numel(), dtype=torch.bool, device=device)
                keep[suspect[torch.isin(key, drop_keys)]] = False
                row, pos = row[keep], pos[keep]
        if fanout == -1 or row.numel() == 0:
            return col[pos], dst[row]
        deg = torch.bincount(row, minlength=dst.numel())
        first = torch.cumsum(deg, 0) - deg
        if self.replace:  # `fanout` uniform draws per row that has any edge
            owner = torch.nonzero(deg > 0).squeeze(1)
            draws = torch.rand(owner.numel(), fanout, generator=self.generator, device=device)
            offset = (draws * deg[owner].unsqueeze(1)).long().minimum(deg[owner].unsqueeze(1) - 1)
            picked = (first[owner].unsqueeze(1) + offset).reshape(-1)
            return col[pos[picked]], dst[row[picked]]
        # without replacement: random keys, sort within each row, keep the first `fanout`
        keys = torch.rand(row.numel(), generator=self.generator, device=device)
        order = torch.argsort(keys)
        order = order[torch.argsort(row[order], stable=True)]  # grouped by row, random within
        row, pos = row[order], pos[order]
        rank = torch.arange(row.numel(), device=device) - first[row]
        keep = rank < fanout
        return col[pos[keep]], dst[row[keep]]

    # -- pyg backend (needs pyg-lib or torch-sparse) --------------------------------------------
    def _sample_pyg(self, seeds: dict[str, torch.Tensor]) -> SampledSubgraph:
        """PyG's compiled heterogeneous sampler (``directional``: only sampled edges), remapped
        to :class:`SampledSubgraph`. Its node lists start with the seeds in the order given."""
        seed_dict = {t: v.cpu() for t, v in seeds.items() if v.numel()}
        if not seed_dict:
            return _empty_subgraph(self.node_types, self.edge_types)
        assert self._pyg is not None  # set in __init__ whenever backend == "pyg"
        out = self._pyg._sample(seed_dict)  # HeteroSamplerOutput (row = source, col = destination)
        empty = torch.empty(0, dtype=torch.long)
        n_id = {t: out.node.get(t, empty).long() for t in self.node_types}
        edge_index = {
            e: torch.stack([out.row[e].long(), out.col[e].long()]) if e in out.row else torch.empty(2, 0, dtype=torch.long)
            for e in self.edge_types
        }
        return SampledSubgraph(n_id, edge_index, {t: int(seeds[t].numel()) if t in seeds else 0 for t in self.node_types})


def _unique_in_order(ids: torch.Tensor) -> torch.Tensor:
    """The distinct values of ``ids`` in order of first appearance."""
    values, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((values.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return values[torch.argsort(first)]


def _empty_subgraph(node_types: list[str], edge_types: list[EdgeType]) -> SampledSubgraph:
    return SampledSubgraph(
        {t: torch.empty(0, dtype=torch.long) for t in node_types},
        {e: torch.empty(2, 0, dtype=torch.long) for e in edge_types},
        {t: 0 for t in node_types},
    )


def drop_edges(sub: SampledSubgraph, exclude: Mapping[EdgeType, torch.Tensor]) -> SampledSubgraph:
    """``sub`` without the edges whose global (source, destination) pair is in ``exclude``."""
    edges = dict(sub.edge_index_dict)
    for key, pairs in exclude.items():
        edge_type = tuple(key)
        if edge_type not in edges or pairs.numel() == 0:
            continue
        dst_t = edge_type[2]
        glob = sub.global_edge_index(edge_type)
        scale = int(sub.n_id[dst_t].max()) + 1 if sub.n_id[dst_t].numel() else 1
        scale = max(scale, int(pairs[1].max()) + 1)
        keep = ~torch.isin(glob[0] * scale + glob[1], pairs[0].to(glob) * scale + pairs[1].to(glob))
        edges[edge_type] = edges[edge_type][:, keep]
    return SampledSubgraph(sub.n_id, edges, sub.num_seeds)

