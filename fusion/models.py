"""Recommenders behind one contract, so one trainer and one evaluator serve them all.

The contract (:class:`Recommender`):

* ``set_graph(graph)`` — the message-passing graph to use from now on (the
  evaluator passes the graph visible before the split it scores);
* ``loss(batch) -> Tensor`` — a scalar training loss for a :class:`~fusion.data.RecBatch`;
* ``score_all(batch) -> [B, P]`` — scores of every product for each example;
* ``score(batch, products [B, K]) -> [B, K]`` — scores of given products;
* ``product_embeddings() -> [P, d]`` — the product vectors that ``score_all``
  multiplies with (for models that are a dot product).

Graph models hide each batch's supervision edges from message passing in
:meth:`Recommender.loss`, so a target edge never tells the model its own answer.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData

from encoders.graph import HeteroGraphEncoder, LightGCNEncoder
from fusion.data import RecBatch

INTERACTION_EDGE = ("user", "interacted", "product")
REV_INTERACTION_EDGE = ("product", "rev_interacted", "user")


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

    def loss(self, batch: RecBatch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} is not trained")

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch: RecBatch, products: torch.Tensor) -> torch.Tensor:
        return self.score_all(batch).gather(1, products)

    def product_embeddings(self) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no product embeddings")

    def _edges_without(self, batch: RecBatch) -> dict[tuple[str, str, str], torch.Tensor]:
        """The message-passing edges minus the batch's (user, target) supervision pairs."""
        edges = dict(self.edge_index_dict)
        inter = edges.get(INTERACTION_EDGE)
        if inter is None or batch.targets.numel() == 0:
            return edges
        key = inter[0] * self.num_products + inter[1]
        drop = batch.users * self.num_products + batch.targets
        keep = ~torch.isin(key, drop)
        edges[INTERACTION_EDGE] = inter[:, keep]
        if REV_INTERACTION_EDGE in edges:
            edges[REV_INTERACTION_EDGE] = inter[:, keep].flip(0)
        return edges

    # -- serving (fusion.artifact, fusion.api): score with no graph and no store -------------
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


class Popularity(Recommender):
    """Scores each product by its number of visible interactions."""

    name = "popularity"

    def __init__(self, num_users: int, num_products: int) -> None:
        super().__init__(num_users, num_products)
        self.register_buffer("counts", torch.zeros(num_products))

    def set_graph(self, graph: HeteroData) -> None:
        super().set_graph(graph)
        inter = self.edge_index_dict[INTERACTION_EDGE]
        self.counts = torch.bincount(inter[1], minlength=self.num_products).float().to(self.device)

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(batch), -1)

    @torch.no_grad()
    def serving_state(self) -> dict[str, torch.Tensor]:
        return {"products": self.counts.detach().float().cpu().unsqueeze(1).clone()}

    def serving_users(self, state: dict[str, torch.Tensor], batch: RecBatch) -> torch.Tensor:
        return state["products"].new_ones(len(batch), 1)

    @torch.no_grad()
    def serving_add_products(self, state, text, neighbours):
        """A new product has no interactions: popularity 0."""
        products = state["products"]
        return {**state, "products": torch.cat([products, products.new_zeros(neighbours.shape[0], 1)])}


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``-log sigmoid(pos - neg)``, averaged."""
    return F.softplus(neg - pos).mean()


class MatrixFactorization(Recommender):
    """MF trained with BPR and one uniform negative per positive (Rendle et al., 2009).

    Args:
        dim: embedding size (default 64). weight_decay: L2 on the batch's embeddings (default 1e-4).
    """

    name = "mf-bpr"

    def __init__(self, num_users: int, num_products: int, dim: int = 64, weight_decay: float = 1e-4) -> None:
        super().__init__(num_users, num_products)
        self.dim, self.weight_decay = dim, weight_decay
        self.users = nn.Embedding(num_users, dim)
        self.products = nn.Embedding(num_products, dim)
        nn.init.normal_(self.users.weight, std=0.1)
        nn.init.normal_(self.products.weight, std=0.1)

    def config_dict(self) -> dict:
        return {"dim": self.dim, "weight_decay": self.weight_decay}

    def _towers(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.users.weight, self.products.weight

    def loss(self, batch: RecBatch) -> torch.Tensor:
        users, products = self._towers()
        neg = torch.randint(0, self.num_products, batch.targets.shape, device=batch.targets.device)
        u, p, n = users[batch.users], products[batch.targets], products[neg]
        reg = self.weight_decay * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / len(batch)
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)) + reg

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        users, products = self._towers()
        return users[batch.users] @ products.T

    def product_embeddings(self) -> torch.Tensor:
        return self._towers()[1]

    @torch.no_grad()
    def serving_state(self) -> dict[str, torch.Tensor]:
        users, products = self._towers()
        return {"products": products.detach().float().cpu().clone(), "users": users.detach().float().cpu().clone()}

    def serving_users(self, state: dict[str, torch.Tensor], batch: RecBatch) -> torch.Tensor:
        """A known user's own vector; an unknown user is folded in as the mean vector of
        the products in ``batch.history`` (known users ignore the history)."""
        known = (batch.users >= 0).unsqueeze(-1)
        own = state["users"][batch.users.clamp(min=0)]
        mask = (batch.history >= 0).to(own.dtype).unsqueeze(-1)
        folded = (mask * state["products"][batch.history.clamp(min=0)]).sum(1) / mask.sum(1).clamp(min=1)
        return torch.where(known, own, folded)


class LightGCNRecommender(MatrixFactorization):
    """LightGCN over the visible user–product interactions, trained with BPR."""

    name = "lightgcn"

    def __init__(self, num_users: int, num_products: int, dim: int = 64, num_layers: int = 3, weight_decay: float = 1e-4) -> None:
        super().__init__(num_users, num_products, dim, weight_decay)
        del self.users, self.products
        self.num_layers = num_layers
        self.encoder = LightGCNEncoder(num_users, num_products, dim, num_layers)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def config_dict(self) -> dict:
        return {"dim": self.dim, "num_layers": self.num_layers, "weight_decay": self.weight_decay}

    def set_graph(self, graph: HeteroData) -> None:
        super().set_graph(graph)
        self._cache = None

    def train(self, mode: bool = True) -> "LightGCNRecommender":
        self._cache = None
        return super().train(mode)

    def _towers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            return self.encoder(self.edge_index_dict[INTERACTION_EDGE])
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.encoder(self.edge_index_dict[INTERACTION_EDGE])
        return self._cache


class TextZeroShot(Recommender):
    """Untrained text baseline: a user is the recency-weighted mean of the text
    vectors of their history (weight ``decay**age``); cosine scores.

    Args:
        text_features: ``[P, d]`` product text vectors.
        decay: weight ratio between consecutive history items (default 0.7).
    """

    name = "text-zero-shot"

    def __init__(self, num_users: int, text_features: torch.Tensor, decay: float = 0.7) -> None:
        super().__init__(num_users, text_features.shape[0])
        self.decay = decay
        self.register_buffer("text", F.normalize(text_features.float(), dim=-1))

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        length = batch.history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=batch.history.device, dtype=torch.float32)
        weights = (self.decay**age).unsqueeze(0) * (batch.history >= 0).float()
        vectors = self.text[batch.history.clamp(min=0)]
        user = (weights.unsqueeze(-1) * vectors).sum(1)
        return F.normalize(user, dim=-1) @ self.text.T

    def product_embeddings(self) -> torch.Tensor:
        return self.text

    def config_dict(self) -> dict:
        return {"decay": self.decay}

    def serving_users(self, state: dict[str, torch.Tensor], batch: RecBatch) -> torch.Tensor:
        text = state["products"]
        length = batch.history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=batch.history.device, dtype=torch.float32)
        weights = (self.decay**age).unsqueeze(0) * (batch.history >= 0).float()
        user = (weights.unsqueeze(-1) * text[batch.history.clamp(min=0)]).sum(1)
        return F.normalize(user, dim=-1)

    @torch.no_grad()
    def serving_add_products(self, state, text, neighbours):
        if text is None:
            raise ValueError(f"{self.name} needs the new products' text vectors")
        new = F.normalize(text.float(), dim=-1).to(state["products"])
        return {**state, "products": torch.cat([state["products"], new])}

    def serving_query(self, state: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        return F.normalize(text.float(), dim=-1)


@dataclass
class FusedConfig:
    """Configuration of :class:`FusedRecommender`.

    Attributes:
        graph_dim: size of the knowledge-graph encoder (default 64); the joint space
            has the text size when text is used, else this size.
        use_text: include the text tower (default True).
        use_graph: include the graph tower and the user's graph vector (default True).
        gnn_layers: message-passing layers of the knowledge-graph encoder (default 2).
        max_history: history length the user tower reads (default 50).
        recency_decay: initial weight ratio between consecutive history items (default 0.7).
        dropout: dropout in the graph encoder (default 0.1).
        temperature: softmax temperature on cosine scores (default 0.05).
        user_graph: add the user's own GNN vector to the user tower (default False: in
            training that vector has seen the user's later purchases, at test time it has
            not, and the model learns to lean on it and overfits).
        gate_bias: initial bias of the text/graph gate (default 1.0: about 73% text at the start;
            3.0 left the graph branch too little room in 8 epochs, 0.0 overfitted).
        graph_text_input: feed the product text vectors into the GNN as product input
            features, so categories, brands and users aggregate text too (default False).
    """

    graph_dim: int = 64
    use_text: bool = True
    use_graph: bool = True
    gnn_layers: int = 2
    max_history: int = 50
    recency_decay: float = 0.7
    dropout: float = 0.1
    temperature: float = 0.05
    user_graph: bool = False
    gate_bias: float = 1.0
    graph_text_input: bool = False

    def __post_init__(self) -> None:
        if not (self.use_text or self.use_graph):
            raise ValueError("FusedConfig needs use_text or use_graph")
        if not 0 < self.recency_decay <= 1:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")


class FusedRecommender(Recommender):
    """The joint text + knowledge-graph scorer.

    Product tower: ``p = g * T(text) + (1 - g) * G(graph)`` with a learned,
    per-dimension gate ``g = sigmoid(W [T(text); G(graph)] + b)``; ``T`` is the
    frozen text vector plus a trained residual adapter, ``G`` a projection of the
    heterogeneous GNN's product vector.

    User tower: a learned recency-weighted mean of the fused vectors of the
    user's history, plus a residual feed-forward layer, plus a projection of the
    user's own vector from the GNN.

    Initialisation keeps the text signal: adapters and graph projections into the
    user start at zero and the gate leans towards text, so an untrained model
    ranks like :class:`TextZeroShot`; training moves it from there. Scores are
    cosine similarities divided by ``temperature``; the loss is the softmax
    cross-entropy over all products.

    Args:
        num_users, num_products: sizes.
        config: :class:`FusedConfig`.
        text_features: ``[P, d_text]`` product text vectors (frozen), required when ``use_text``.
        num_nodes, edge_types: knowledge-graph node counts and edge types, required when ``use_graph``.
    """

    name = "fused"

    def __init__(
        self,
        num_users: int,
        num_products: int,
        config: FusedConfig,
        text_features: torch.Tensor | None = None,
        num_nodes: dict[str, int] | None = None,
        edge_types: list[tuple[str, str, str]] | None = None,
    ) -> None:
        super().__init__(num_users, num_products)
        self.config = config
        if config.use_text:
            if text_features is None:
                raise ValueError("use_text needs text_features")
            self.register_buffer("text", F.normalize(text_features.float(), dim=-1))
            d = text_features.shape[1]
            self.text_adapter = _zero_linear(d, d)
        else:
            d = config.graph_dim
        self.dim = d
        if config.use_graph:
            if num_nodes is None or edge_types is None:
                raise ValueError("use_graph needs num_nodes and edge_types")
            input_dims = {"product": text_features.shape[1]} if config.use_text and config.graph_text_input else None
            self.graph = HeteroGraphEncoder(
                num_nodes, edge_types, config.graph_dim, config.gnn_layers, input_dims=input_dims, dropout=config.dropout
            )
            self.graph_proj = nn.Linear(config.graph_dim, d)
            self.user_graph_proj = _zero_linear(config.graph_dim, d)
        if config.use_text and config.use_graph:
            self.gate = nn.Linear(2 * d, d)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, config.gate_bias)
            # the graph branch starts at zero, so the untrained fused model ranks like text alone
            nn.init.zeros_(self.graph_proj.weight)
            nn.init.zeros_(self.graph_proj.bias)
        age = torch.arange(config.max_history - 1, -1, -1, dtype=torch.float32)
        self.recency = nn.Parameter(age * math.log(config.recency_decay))
        self.user_ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), _zero_linear(d, d))
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def config_dict(self) -> dict:
        return asdict(self.config)

    def set_graph(self, graph: HeteroData) -> None:
        super().set_graph(graph)
        self._cache = None

    def train(self, mode: bool = True) -> "FusedRecommender":
        self._cache = None
        return super().train(mode)

    def _encode(self, edges: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(products ``[P, d]``, user graph vectors ``[U, d]`` or None)."""
        text = self.text + self.text_adapter(self.text) if self.config.use_text else None
        if not self.config.use_graph:
            return text, None
        nodes = self._graph_nodes(edges)
        graph_p = self.graph_proj(nodes["product"])
        users = self.user_graph_proj(nodes["user"])
        if text is None:
            return graph_p, users
        g = torch.sigmoid(self.gate(torch.cat([text, graph_p], dim=-1)))
        return g * text + (1 - g) * graph_p, users

    def _graph_nodes(self, edges: dict) -> dict[str, torch.Tensor]:
        """The GNN's node vectors (with product text as input features when configured)."""
        return self.graph(edges, {"product": self.text} if self.config.graph_text_input and self.config.use_text else None)

    def _towers(self, batch: RecBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.training:
            return self._encode(self._edges_without(batch) if batch is not None else self.edge_index_dict)
        if self._cache is None:
            with torch.no_grad():
                self._cache = self._encode(self.edge_index_dict)
        return self._cache

    def _users(self, batch: RecBatch, products: torch.Tensor, user_nodes: torch.Tensor | None) -> torch.Tensor:
        history = batch.history[:, -self.config.max_history :]
        mask = history >= 0
        logits = self.recency[-history.shape[1] :].unsqueeze(0).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # empty history -> zero weights
        user = torch.einsum("bl,bld->bd", weights, F.normalize(products, dim=-1)[history.clamp(min=0)])
        user = user + self.user_ffn(user)
        if user_nodes is not None and self.config.user_graph:
            user = user + user_nodes[batch.users]
        return user

    def _logits(self, batch: RecBatch) -> torch.Tensor:
        products, user_nodes = self._towers(batch)
        users = self._users(batch, products, user_nodes)
        return F.normalize(users, dim=-1) @ F.normalize(products, dim=-1).T / self.config.temperature

    def loss(self, batch: RecBatch) -> torch.Tensor:
        return F.cross_entropy(self._logits(batch), batch.targets)

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        return self._logits(batch)

    def product_embeddings(self) -> torch.Tensor:
        return F.normalize(self._towers(None)[0], dim=-1)

    @torch.no_grad()
    def serving_state(self) -> dict[str, torch.Tensor]:
        """``products`` (unit fused vectors), ``product_text`` (``T``), ``product_graph`` (``G``)
        and, with ``user_graph``, the users' projected GNN vectors, under the current graph."""
        products, user_nodes = self._encode(self.edge_index_dict)
        state = {"products": F.normalize(products, dim=-1)}
        if self.config.use_text:
            state["product_text"] = self.text + self.text_adapter(self.text)
        if self.config.use_graph:
            state["product_graph"] = self.graph_proj(self._graph_nodes(self.edge_index_dict)["product"])
        if self.config.use_graph and self.config.user_graph:
            state["user_graph"] = user_nodes
        return {k: v.detach().float().cpu().clone() for k, v in state.items()}

    def serving_users(self, state: dict[str, torch.Tensor], batch: RecBatch) -> torch.Tensor:
        """``normalize(user) / temperature``; unknown users (-1) get no GNN user vector."""
        users = batch.users
        user_nodes = state.get("user_graph") if self.config.user_graph else None
        if user_nodes is not None:  # the batch's rows; an unknown user (-1) gets zeros
            known = (users >= 0).unsqueeze(-1)
            user_nodes = torch.where(known, user_nodes[users.clamp(min=0)], 0.0)
            users = torch.arange(len(batch), device=users.device)
        # read only the history's rows (the user tower normalises the matrix it is given)
        rows, compact = torch.unique(batch.history.clamp(min=0), return_inverse=True)
        history = torch.where(batch.history >= 0, compact, batch.history)
        user = self._users(RecBatch(users, history, batch.targets), state["products"][rows], user_nodes)
        return F.normalize(user, dim=-1) / self.config.temperature

    @torch.no_grad()
    def serving_add_products(self, state, text, neighbours):
        """``T`` from the new text through the trained adapter; ``G`` = neighbours' mean of
        ``G`` (the GNN never saw the product); fused with the trained gate."""
        device = state["products"].device
        parts = {}
        if self.config.use_text:
            if text is None:
                raise ValueError(f"{self.name} needs the new products' text vectors")
            t = F.normalize(text.float(), dim=-1).to(device)
            parts["product_text"] = t + self.text_adapter(t)
        if self.config.use_graph:
            parts["product_graph"] = neighbours.to(device).float() @ state["product_graph"]
        if self.config.use_text and self.config.use_graph:
            t, g = parts["product_text"], parts["product_graph"]
            gate = torch.sigmoid(self.gate(torch.cat([t, g], dim=-1)))
            fused = gate * t + (1 - gate) * g
        else:
            fused = next(iter(parts.values()))
        parts["products"] = F.normalize(fused, dim=-1)
        out = dict(state)
        for key, value in parts.items():
            out[key] = torch.cat([state[key], value])
        return out

    def serving_query(self, state: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """The text tower applied to a query: ``T(q) = q + adapter(q)`` with ``q`` the unit
        text vector, then unit length (cosine against the fused product vectors)."""
        if not self.config.use_text:
            raise NotImplementedError(f"{self.name} has no text tower: it cannot encode a query")
        q = F.normalize(text.float(), dim=-1).to(state["products"].device)
        return F.normalize(q + self.text_adapter(q), dim=-1)


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer that starts as the zero map (a residual branch that starts off)."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
