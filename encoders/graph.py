"""Graph encoders over PyG graphs (full batch or sampled subgraphs; no compiled samplers needed).

* :class:`HeteroGraphEncoder`: a heterogeneous GraphSAGE over the whole knowledge
  graph (products, users, categories, brands and every relation between them), or
  over a sampled subgraph of it (``n_id``; see :mod:`kgrec.encoders.sampling`).
* :class:`RelationalGraphEncoder`: R-GCN with basis decomposition over the same graph
  flattened into one node space: one weight per relation *name*, shared by every edge
  type that carries it (a KG relation between two products and between a product and
  an entity is one relation), built from a few shared bases.
* :class:`LightGCNEncoder`: LightGCN over the user–product bipartite graph.

Both take message-passing edges only (``edge_index``); what they are trained to
predict (``edge_label_index``) is the caller's business.
"""
from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch_geometric.nn import HeteroConv, LightGCN, RGCNConv, SAGEConv

EdgeType = tuple[str, str, str]


class _NodeInputs(nn.Module):
    """What both heterogeneous encoders start from: per node type an ID embedding
    (``std=0.1``) and a linear projection of its input features, ``feature_only`` types
    starting from the projection alone (arguments as in :class:`HeteroGraphEncoder`)."""

    def __init__(self, num_nodes: dict[str, int], edge_types: list[EdgeType], dim: int,
                 input_dims: dict[str, int] | None, feature_only: tuple[str, ...] | list[str]) -> None:
        super().__init__()
        self.node_types = sorted(num_nodes)
        self.num_nodes = {t: int(n) for t, n in num_nodes.items()}
        self.edge_types = [tuple(e) for e in edge_types]
        self.feature_only = tuple(sorted(feature_only))
        missing = [t for t in self.feature_only if t not in (input_dims or {})]
        if missing:
            raise ValueError(f"feature_only node types {missing} have no input features (input_dims)")
        self.embedding = nn.ModuleDict(
            {t: nn.Embedding(n, dim) for t, n in num_nodes.items() if t not in self.feature_only}
        )
        for emb in self.embedding.values():
            nn.init.normal_(cast(nn.Embedding, emb).weight, std=0.1)
        self.input_proj = nn.ModuleDict({t: nn.Linear(d, dim) for t, d in (input_dims or {}).items()})

    def input_vectors(
        self, features: dict[str, torch.Tensor] | None, n_id: dict[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Layer-0 vectors per node type (``{type: [N_t, dim]}``, or ``[n_t, dim]`` for the
        nodes of ``n_id``) and the number of rows per type; arguments as in
        :meth:`HeteroGraphEncoder.forward`."""
        device = next(self.parameters()).device
        if n_id is None:
            x: dict[str, torch.Tensor] = {t: cast(nn.Embedding, self.embedding[t]).weight for t in self.embedding}
            sizes = dict(self.num_nodes)
        else:
            empty = torch.empty(0, dtype=torch.long, device=device)
            ids = {t: n_id[t].to(device) if t in n_id else empty for t in self.node_types}
            x = {t: self.embedding[t](ids[t]) for t in self.embedding}
            sizes = {t: int(ids[t].numel()) for t in self.node_types}
        for t, proj in self.input_proj.items():
            if features is None or t not in features:
                raise ValueError(f"node type {t!r} was built with input features; pass them")
            feats = features[t] if n_id is None else features[t][ids[t].to(features[t].device)]
            x[t] = proj(feats) if t in self.feature_only else x[t] + proj(feats)
        return x, sizes


class HeteroGraphEncoder(_NodeInputs):
    """Heterogeneous GraphSAGE with learnable node embeddings.

    Each node type starts from an ID embedding (``[N_t, dim]``); node types with
    input features (e.g. product text vectors) add a linear projection of them, and
    ``feature_only`` types start from that projection alone: they have no ID embedding,
    so a node never seen in training is encoded like one that was (inductive).
    Each layer runs one ``SAGEConv`` per edge type and sums per destination type;
    the output is the mean of the input and all layer outputs (as in LightGCN),
    which keeps the ID signal for nodes with few neighbours.

    Args:
        num_nodes: node type -> number of nodes.
        edge_types: the edge types of the message-passing graph.
        dim: embedding size (default 64).
        num_layers: message-passing layers (default 2).
        input_dims: node type -> feature size for types that get input features.
        dropout: dropout on hidden layers (default 0.1).
        feature_only: node types (all in ``input_dims``) without ID embeddings (default none).
        quiet: edge types whose convolutions start at zero (all their weights and biases), so they
            send nothing until training opens them: an untrained encoder with extra relations
            (e.g. a knowledge graph's) computes what it computes without them (default none).
    """

    def __init__(
        self,
        num_nodes: dict[str, int],
        edge_types: list[EdgeType],
        dim: int = 64,
        num_layers: int = 2,
        input_dims: dict[str, int] | None = None,
        dropout: float = 0.1,
        feature_only: tuple[str, ...] | list[str] = (),
        quiet: tuple[EdgeType, ...] | list[EdgeType] = (),
    ) -> None:
        super().__init__(num_nodes, edge_types, dim, input_dims, feature_only)
        self.convs = nn.ModuleList(
            HeteroConv({e: SAGEConv((dim, dim), dim) for e in self.edge_types}, aggr="sum")
            for _ in range(num_layers)
        )
        quiet_types = {tuple(e) for e in quiet}
        for conv in self.convs:
            for edge_type, sage in cast(HeteroConv, conv).convs.items():
                if edge_type in quiet_types:
                    for p in sage.parameters():
                        nn.init.zeros_(p)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        edge_index_dict: dict[EdgeType, torch.Tensor],
        features: dict[str, torch.Tensor] | None = None,
        n_id: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Node representations per type, ``{type: [N_t, dim]}`` (``[n_t, dim]`` with ``n_id``).

        Args:
            edge_index_dict: ``{edge_type: [2, E]}``; types absent here send no messages.
                With ``n_id`` the ids are local (rows of ``n_id[src]`` / ``n_id[dst]``).
            features: ``{type: [N_t, input_dim]}`` for the types given in ``input_dims``,
                always indexed by global id (with ``n_id`` only the rows ``n_id[t]`` are read).
            n_id: ``{type: [n_t]}`` global ids of the nodes of a subgraph (default None: the
                whole graph). ID embeddings and features are gathered for those nodes only and
                the output has one row per local node; a type missing here has no nodes.
                On a :class:`~kgrec.encoders.sampling.NeighborSampler` subgraph of ``num_layers`` hops
                with every fanout ``-1`` (and every edge type present, possibly empty), the
                seeds' rows equal their full-graph rows.
        """
        x, _ = self.input_vectors(features, n_id)
        layers = [x]
        edges = {e: i for e, i in edge_index_dict.items() if tuple(e) in set(self.edge_types)}
        for i, conv in enumerate(self.convs):
            out = conv(x, edges)
            # node types that receive no messages keep their previous representation
            x = {t: out.get(t, x[t]) for t in self.node_types}
            if i < len(self.convs) - 1:
                x = {t: self.dropout(torch.relu(v)) for t, v in x.items()}
            layers.append(x)
        return {t: torch.stack([layer[t] for layer in layers]).mean(0) for t in self.node_types}


class RelationalGraphEncoder(_NodeInputs):
    """R-GCN (Schlichtkrull et al., 2018) with basis decomposition over a heterogeneous graph.

    Node types keep their own ID embeddings (and input-feature projections, as in
    :class:`HeteroGraphEncoder`); for message passing they are stacked into one node space
    (types in sorted order) and every edge carries the id of its relation *name*
    (``edge_type[1]``), so ``('product', 'film_genre', 'entity')`` and ``('product',
    'film_genre', 'product')`` share one relation. Each layer is one :class:`RGCNConv`:
    a mean over each relation's neighbours times that relation's weight (a learned mix
    of ``num_bases`` shared matrices), plus a root weight, summed. The output is the mean
    of the input and every layer's output, as in :class:`HeteroGraphEncoder`.

    Args:
        num_nodes, edge_types, dim, num_layers, input_dims, dropout, feature_only: as in
            :class:`HeteroGraphEncoder`.
        num_bases: shared basis matrices of the relation weights (default 4; None = one full
            matrix per relation).
        quiet: edge types whose relation (by name) starts with a zero weight (its basis
            coefficients, or its matrix), sending nothing until training opens it (default none).
    """

    def __init__(
        self,
        num_nodes: dict[str, int],
        edge_types: list[EdgeType],
        dim: int = 64,
        num_layers: int = 2,
        input_dims: dict[str, int] | None = None,
        dropout: float = 0.1,
        feature_only: tuple[str, ...] | list[str] = (),
        num_bases: int | None = 4,
        quiet: tuple[EdgeType, ...] | list[EdgeType] = (),
    ) -> None:
        super().__init__(num_nodes, edge_types, dim, input_dims, feature_only)
        self.relations = sorted({e[1] for e in self.edge_types})
        self.relation_id = {r: i for i, r in enumerate(self.relations)}
        bases = None if num_bases is None else min(int(num_bases), max(len(self.relations), 1))
        self.convs = nn.ModuleList(
            RGCNConv(dim, dim, max(len(self.relations), 1), num_bases=bases, aggr="mean") for _ in range(num_layers)
        )
        quiet_ids = sorted({self.relation_id[e[1]] for e in quiet if tuple(e) in set(self.edge_types)})
        with torch.no_grad():
            for conv in self.convs:
                rgcn = cast(RGCNConv, conv)
                cast(torch.Tensor, rgcn.comp if rgcn.num_bases is not None else rgcn.weight)[quiet_ids] = 0.0
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        edge_index_dict: dict[EdgeType, torch.Tensor],
        features: dict[str, torch.Tensor] | None = None,
        n_id: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Node representations per type, ``{type: [N_t, dim]}``; arguments as in
        :meth:`HeteroGraphEncoder.forward` (edge types this encoder was not built with are ignored)."""
        device = next(self.parameters()).device
        x, sizes = self.input_vectors(features, n_id)
        offsets, start = {}, 0
        for t in self.node_types:
            offsets[t], start = start, start + sizes[t]
        h = torch.cat([x[t] for t in self.node_types])
        known = set(self.edge_types)
        parts = [(index, self.relation_id[e[1]], offsets[e[0]], offsets[e[2]])
                 for e, index in edge_index_dict.items() if tuple(e) in known]
        if parts:
            edge_index = torch.cat([torch.stack([i[0] + s, i[1] + d]) for i, _, s, d in parts], dim=1).to(device)
            edge_type = torch.cat([torch.full((i.shape[1],), r, dtype=torch.long) for i, r, _, _ in parts]).to(device)
        else:
            edge_index = torch.empty(2, 0, dtype=torch.long, device=device)
            edge_type = torch.empty(0, dtype=torch.long, device=device)
        layers = [h]
        for i, conv in enumerate(self.convs):
            h = conv(h, edge_index, edge_type)
            if i < len(self.convs) - 1:
                h = self.dropout(torch.relu(h))
            layers.append(h)
        out = torch.stack(layers).mean(0)
        return {t: out[offsets[t] : offsets[t] + sizes[t]] for t in self.node_types}


class LightGCNEncoder(nn.Module):
    """LightGCN (He et al., 2020) on the user–product graph, via PyG's implementation.

    Users are nodes ``0..U-1`` and products ``U..U+P-1`` of one homogeneous graph.

    Args:
        num_users, num_products: node counts.
        dim: embedding size (default 64).
        num_layers: propagation layers (default 3).
    """

    def __init__(self, num_users: int, num_products: int, dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        self.num_users, self.num_products = num_users, num_products
        self.model = LightGCN(num_users + num_products, dim, num_layers)

    def homogeneous_edges(self, user_product: torch.Tensor) -> torch.Tensor:
        """``[2, E]`` user→product indices -> undirected ``[2, 2E]`` in the joint index space."""
        src, dst = user_product[0], user_product[1] + self.num_users
        return torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)

    def forward(self, user_product: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users [U, dim], products [P, dim])`` after propagation."""
        emb = self.model.get_embedding(self.homogeneous_edges(user_product))
        return emb[: self.num_users], emb[self.num_users :]
