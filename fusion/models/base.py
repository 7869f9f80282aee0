"""Recommenders behind one contract, so one trainer and one evaluator serve them all.

The contract (:class:`Recommender`):

* ``set_graph(graph)`` — the message-passing graph to use from now on (the
  evaluator passes the graph visible before the split it scores);
* ``loss(batch) -> Tensor`` — a scalar training loss for a :class:`~kgrec.fusion.data.RecBatch`;
* ``score_all(batch) -> [B, P]`` — scores of every product for each example;
* ``score(batch, products [B, K]) -> [B, K]`` — scores of given products;
* ``product_embeddings() -> [P, d]`` — the product vectors that ``score_all``
  multiplies with (for models that are a dot product).

Graph models hide each batch's supervision edges from message passing in
:meth:`Recommender.loss`, so a target edge never tells the model its own answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch_geometric.data import HeteroData

from kgrec.fusion.data import RecBatch, SearchBatch
from kgrec.kg.export import GraphSnapshot

INTERACTION_EDGE = ("user", "interacted", "product")
#: query -> product judgements in a search graph (:mod:`kgrec.search.examples`)
QUERY_EDGE = ("query", "judged", "product")
REV_QUERY_EDGE = ("product", "rev_judged", "query")
REV_INTERACTION_EDGE = ("product", "rev_interacted", "user")

EdgeType = tuple[str, str, str]


@dataclass
class ModelInputs:
    """What a model is built from: sizes, the graph's schema and the frozen features.

    Attributes:
        num_users, num_products: sizes of the user and product id spaces.
        num_nodes: node type -> count of the message-passing graph (graph models).
        edge_types: the edge types of the message-passing graph (graph models).
        text_features: ``[P, d_text]`` product text vectors (text models).
        query_dim: text-vector size of queries (search with a model that has no text tower).
        node_features: ``{type: [N_t, d]}`` input features of other node types (search graph queries).
        text_tower: a trainable text encoder (:class:`kgrec.encoders.tuning.TunedTextEncoder`).
        product_texts: ``[P]`` product strings the text tower reads.
    """

    num_users: int
    num_products: int
    num_nodes: dict[str, int] | None = None
    edge_types: list[EdgeType] | None = None
    text_features: torch.Tensor | None = None
    query_dim: int | None = None
    node_features: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    text_tower: nn.Module | None = field(default=None, repr=False)
    product_texts: list[str] | None = field(default=None, repr=False)

    @classmethod
    def from_graph(cls, graph: HeteroData, num_users: int, num_products: int, **extra: Any) -> ModelInputs:
        """Sizes and schema of a message-passing graph (node counts, edge types) plus ``extra``."""
        num_nodes = {t: int(graph[t].num_nodes) for t in graph.node_types}
        return cls(num_users, num_products, num_nodes=num_nodes, edge_types=[tuple(e) for e in graph.edge_types], **extra)

    @classmethod
    def from_snapshot(cls, snapshot: GraphSnapshot, text_features: torch.Tensor | None = None, **extra: Any) -> ModelInputs:
        """The inputs of a model of ``snapshot``'s training graph (``extra``: the other fields)."""
        return cls.from_graph(snapshot.message_passing("train"), snapshot.num_users, snapshot.num_products,
                              text_features=text_features, **extra)

    def need_text(self, model: str) -> torch.Tensor:
        if self.text_features is None:
            raise ValueError(f"model {model!r} needs product text features")
        return self.text_features


def drop_pairs(
    edges: dict[tuple[str, str, str], torch.Tensor],
    edge_type: tuple[str, str, str],
    reverse_type: tuple[str, str, str] | None,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> dict[tuple[str, str, str], torch.Tensor]:
    """``edges`` with every ``(src[i], dst[i])`` edge of ``edge_type`` (and its mirror in
    ``reverse_type``) removed: supervision pairs must not be message-passing edges.
    Pairs with a negative id are ignored."""
    index = edges.get(edge_type)
    keep_pairs = (src >= 0) & (dst >= 0)
    if index is None or not bool(keep_pairs.any()):
        return edges
    src, dst = src[keep_pairs].to(index.device), dst[keep_pairs].to(index.device)
    width = int(max(int(index[1].max()) if index.numel() else 0, int(dst.max()))) + 1
    keep = ~torch.isin(index[0] * width + index[1], src * width + dst)
    edges = dict(edges)
    edges[edge_type] = index[:, keep]
    if reverse_type is not None and reverse_type in edges:
        edges[reverse_type] = index[:, keep].flip(0)
    return edges


class Recommender(nn.Module):
    """Base class: the contract above plus graph bookkeeping."""

    name = "recommender"

    def __init__(self, num_users: int, num_products: int) -> None:
        super().__init__()
        self.num_users, self.num_products = num_users, num_products
        self.edge_index_dict: dict[tuple[str, str, str], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_graph(self, graph: HeteroData) -> None:
        """Use the ``edge_index`` tensors of ``graph`` for message passing."""
        self.edge_index_dict = {tuple(k): v.to(self.device) for k, v in graph.edge_index_dict.items()}

    def config_dict(self) -> dict:
        """The typed config that rebuilds this model (saved in artifacts)."""
        return {}

    def init_args(self) -> dict[str, Any]:
        """JSON sizes that rebuild this model with :meth:`inputs_from_init` (saved in artifacts)."""
        return {"num_users": self.num_users, "num_products": self.num_products}

    @staticmethod
    def inputs_from_init(init: dict[str, Any], text_features: torch.Tensor | None = None) -> ModelInputs:
        """:class:`ModelInputs` from :meth:`init_args`; tensors are zeros of the saved shapes
        (the weights are loaded over them) unless ``text_features`` is given."""
        num_products = int(init["num_products"])
        if text_features is None and "text_dim" in init:
            text_features = torch.zeros(num_products, int(init["text_dim"]))
        num_nodes = {k: int(v) for k, v in init["num_nodes"].items()} if "num_nodes" in init else None
        features = {t: torch.zeros(num_nodes[t] if num_nodes else 0, int(d)) for t, d in init.get("node_feature_dims", {}).items()}
        return ModelInputs(
            int(init["num_users"]), num_products, num_nodes=num_nodes,
            edge_types=[tuple(e) for e in init["edge_types"]] if "edge_types" in init else None,
            text_features=text_features, query_dim=init.get("query_dim"), node_features=features or None,
        )

    def loss(self, batch: RecBatch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not trained")

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch: RecBatch, products: torch.Tensor) -> torch.Tensor:
        return self.score_all(batch).gather(1, products)

    def product_embeddings(self) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no product embeddings")

    def forward(self, batch: RecBatch, search: SearchBatch | None = None, search_weight: float = 1.0) -> torch.Tensor:
        """The training loss (what :class:`~torch.nn.parallel.DistributedDataParallel` calls):
        ``loss(batch)``, plus ``search_weight * search_loss(search)`` for models that search."""
        if search is not None:
            raise NotImplementedError(f"{self.name} is not trained for search")
        return self.loss(batch)

    def _edges_without(self, batch: RecBatch) -> dict[tuple[str, str, str], torch.Tensor]:
        """The message-passing edges minus the batch's (user, target) supervision pairs."""
        return drop_pairs(dict(self.edge_index_dict), INTERACTION_EDGE, REV_INTERACTION_EDGE, batch.users, batch.targets)

    # -- serving (kgrec.serving.artifact, kgrec.serving.api): score with no graph and no store -------------
    #: keys of a serving state that hold one row per product (``add_products`` extends them)
    SERVING_PRODUCT_PREFIX = "product"

    @torch.no_grad()
    def serving_state(self) -> dict[str, torch.Tensor]:
        """Tensors that score every user under the current graph, with no graph at hand.

        ``state["products"]`` is ``[P, d]`` and for every batch
        ``score_all(batch) == serving_users(state, batch) @ state["products"].T``.
        Keys starting with ``"product"`` hold one row per product. Call in eval mode.
        """
        return {"products": self.product_embeddings().detach().float().cpu().clone()}

    def serving_users(self, state: dict[str, torch.Tensor], batch: RecBatch) -> torch.Tensor:
        """``[B, d]`` user vectors from a serving state; ``batch.users == -1`` marks a user the
        model has never seen (scored from ``batch.history`` alone)."""
        raise NotImplementedError(f"{self.name} cannot score from a serving state")

    @torch.no_grad()
    def serving_add_products(
        self, state: dict[str, torch.Tensor], text: torch.Tensor | None, neighbours: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The state with N new products appended, without retraining.

        Args:
            text: ``[N, d_text]`` text-encoder vectors of the new products (None when the
                model reads no text).
            neighbours: ``[N, P]`` row-stochastic weights over the existing products (the
                products that share the new product's category / brand).

        Default: each per-product tensor of the new product is the weighted mean of its
        neighbours' rows.
        """
        out = dict(state)
        for key, value in state.items():
            if key.startswith(self.SERVING_PRODUCT_PREFIX):
                out[key] = torch.cat([value, neighbours.to(value) @ value.flatten(1)]).reshape(-1, *value.shape[1:])
        return out

    def serving_query(self, state: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """``[B, d]`` unit query vectors in the space of ``state["products"]`` from ``[B, d_text]``
        text-encoder vectors (search). Models without a text tower raise NotImplementedError."""
        raise NotImplementedError(f"{self.name} has no text tower: it cannot encode a query")
