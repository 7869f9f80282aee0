"""The fused text + knowledge-graph scorer (:class:`FusedRecommender`) and its config."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import HeteroData

from kgrec.encoders.graph import HeteroGraphEncoder, RelationalGraphEncoder
from kgrec.fusion.data import RecBatch, SearchBatch
from kgrec.fusion.models.base import (
    INTERACTION_EDGE,
    QUERY_EDGE,
    REV_INTERACTION_EDGE,
    REV_QUERY_EDGE,
    ModelInputs,
    Recommender,
    drop_pairs,
)
from kgrec.fusion.models.user_tower import CausalUserTower
from kgrec.kg.schema import REL_TYPES

#: Relations of the message-passing graph that are not knowledge-graph relations: interactions,
#: search judgements and the static schema's catalogue relations, each with its ``rev_`` twin.
CORE_RELATIONS = frozenset(
    name for base in ("interacted", "judged", *(rt.name.lower() for rt in REL_TYPES.values() if not rt.interaction))
    for name in (base, f"rev_{base}")
)


def kg_edge_types(edge_types, into: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """The edge types of ``edge_types`` that carry knowledge-graph relations (not :data:`CORE_RELATIONS`),
    only those ending at a node type of ``into`` when given. The KG relations into products and users
    are the ones that start quiet: those into entities keep their random start, so an entity's vector
    is not zero and the quiet relations that read it get a gradient from the first step."""
    return [tuple(e) for e in edge_types if e[1] not in CORE_RELATIONS and (into is None or e[2] in into)]


#: Graph encoders of the fused scorer (``FusedConfig.graph_encoder``).
GRAPH_ENCODERS = ("sage", "rgcn")
#: User towers of the fused scorer (``FusedConfig.user_tower``).
USER_TOWERS = ("recency", "transformer")


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
        personalize_search: search adds the user's tower vector to the query vector with a
            learned weight that starts at 0 (default True; only used when a search batch has
            users with history).
        feature_ids: node types with input features (products with ``graph_text_input``,
            query nodes) also learn an ID embedding in the GNN (default True). False makes them
            feature-only: the GNN encodes a product or query it never saw in training like one
            it did. Use False for search on Home Depot, where most relevant test products were
            judged for no train query: there ID embeddings learn "was judged in training" and
            validation NDCG falls after the first epoch (``benchmarks/search.py --feature-ids``
            shows the curve). Keep True for recommendation, where every test product was seen
            in training.
        catalogue_loss: with a trainable text tower, add this weight times a second listwise
            loss over the whole catalogue, scored against the cached product text: the
            products' side carries no tower gradient (no fresh-vs-stale shortcut), the queries'
            side does (search) or the users', built from freshly encoded history items
            (recommendation, ``tuned_history``), and adapters and GNN see every product as a
            negative, as with a frozen BERT. The in-batch loss (fresh products) stays. Default
            0.0: in-batch only.
        tuned_history: with a trainable text tower in recommendation training, the most recent
            history items re-encoded with grad each step, besides the targets (default 5).
        graph_encoder: ``"sage"`` (:class:`~kgrec.encoders.graph.HeteroGraphEncoder`, one SAGE
            convolution per edge type) or ``"rgcn"`` (:class:`~kgrec.encoders.graph.RelationalGraphEncoder`,
            one weight per relation built from ``gnn_bases`` shared bases). Default ``"sage"``.
        gnn_bases: basis matrices of the ``"rgcn"`` encoder (default 4).
        kg_quiet_start: knowledge-graph relations into products and users (edge types whose
            relation is not an interaction, a search judgement or a catalogue relation of the static
            schema) start with zero convolution weights, so the untrained model computes for products
            and users what it computes without the KG, and training opens each relation as far as
            it helps (default True).
        degree_gate: the gate also reads ``log(1 + n)``, ``n`` the product's interaction and
            judgement edges in the message-passing graph, so it can lean on text where a product
            has little graph evidence (default True).
        graph_dropout: in training, the share of products whose graph branch (and degree) is
            zeroed, as if they had no graph evidence: the text branch learns to rank them alone
            (default 0.0).
        text_prior: at scoring time only (eval mode: ``score``, ``score_all``, serving), the
            recommendation score adds this weight times the untrained text score, the cosine
            between the recency-weighted mean of the history's raw text vectors and the product's
            raw text vector (what :class:`TextZeroShot` ranks by), over ``temperature``. Training
            never sees it, so the towers cannot learn to cancel it: it keeps products whose text
            resembles the history in reach whatever their graph evidence (cold products). The
            workflow chooses it on the validation users after training
            (:func:`kgrec.workflow.models.choose_text_prior`). Requires ``use_text``. Default 0.0: off.
        cold_text_prior: at scoring time only, products with fewer than ``cold_below``
            interaction and judgement edges in the message-passing graph (cold products; every
            product added at serving time) get this weight of the same untrained text score on
            top of ``text_prior``: a new-arrivals boost by text. It trades warm targets for cold
            ones (``benchmarks/cold_frontier.py`` measures the trade); the workflow never
            chooses it, the user does (``--cold-boost``). Requires ``use_text``. Default 0.0: off.
        cold_below: the evidence below which ``cold_text_prior`` applies (default 5, the
            evaluation report's cold threshold).
        text_only_below: products with fewer than this many interaction and judgement edges in
            the message-passing graph are their text alone, with no graph vector, in training and
            in scoring. A product's ID embedding that a handful of interactions trained as a
            positive and every softmax trained as a negative points away from every user and
            sinks the product whatever its text says. Default 0: off.
        user_tower: ``"recency"`` (the learned recency-weighted mean and a feed-forward layer)
            or ``"transformer"`` (that, plus a causal transformer over the ordered history,
            :class:`~kgrec.fusion.models.user_tower.CausalUserTower`). Default ``"recency"``.
        tower_dim, tower_layers, tower_heads, tower_dropout: the transformer's width (default
            64), blocks (2), heads (2) and dropout (0.2).
        sequence_training: :meth:`FusedRecommender.loss` reads an example's history plus target as
            one sequence and scores every position's next item (SASRec's objective; the user
            vector at position ``j`` is exactly the one the prefix ending at ``j`` gets), and
            the trainer builds one example per user's train sequence
            (:func:`kgrec.fusion.data.training_sequences`) instead of one per interaction: the
            same predictions, the history read once. Default False.
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
    personalize_search: bool = True
    feature_ids: bool = True
    catalogue_loss: float = 0.0
    tuned_history: int = 5
    graph_encoder: str = "sage"
    gnn_bases: int = 4
    kg_quiet_start: bool = True
    degree_gate: bool = True
    graph_dropout: float = 0.0
    text_only_below: int = 0
    text_prior: float = 0.0
    cold_text_prior: float = 0.0
    cold_below: int = 5
    user_tower: str = "recency"
    tower_dim: int = 64
    tower_layers: int = 2
    tower_heads: int = 2
    tower_dropout: float = 0.2
    sequence_training: bool = False

    def __post_init__(self) -> None:
        if self.graph_encoder not in GRAPH_ENCODERS:
            raise ValueError(f"graph_encoder must be one of {GRAPH_ENCODERS}, got {self.graph_encoder!r}")
        if self.user_tower not in USER_TOWERS:
            raise ValueError(f"user_tower must be one of {USER_TOWERS}, got {self.user_tower!r}")
        if not 0 <= self.text_prior < float("inf") or (self.text_prior > 0 and not self.use_text):
            raise ValueError(f"text_prior must be finite, >= 0 and needs use_text, got {self.text_prior} (use_text={self.use_text})")
        if not 0 <= self.cold_text_prior < float("inf") or (self.cold_text_prior > 0 and not self.use_text):
            raise ValueError(f"cold_text_prior must be finite, >= 0 and needs use_text, got {self.cold_text_prior} "
                             f"(use_text={self.use_text})")
        if self.cold_below < 1:
            raise ValueError(f"cold_below must be >= 1, got {self.cold_below}")
        if self.text_only_below < 0:
            raise ValueError(f"text_only_below must be >= 0, got {self.text_only_below}")
        if not 0 <= self.graph_dropout < 1:
            raise ValueError(f"graph_dropout must be in [0, 1), got {self.graph_dropout}")
        if self.tower_dim % self.tower_heads:
            raise ValueError(f"tower_dim {self.tower_dim} is not a multiple of tower_heads {self.tower_heads}")
        if not self.catalogue_loss >= 0:
            raise ValueError(f"catalogue_loss must be >= 0, got {self.catalogue_loss}")
        if self.tuned_history < 0:
            raise ValueError(f"tuned_history must be >= 0, got {self.tuned_history}")
        if not (self.use_text or self.use_graph):
            raise ValueError("FusedConfig needs use_text or use_graph")
        if not 0 < self.recency_decay <= 1:
            raise ValueError(f"recency_decay must be in (0, 1], got {self.recency_decay}")


class FusedRecommender(Recommender):
    """The joint text + knowledge-graph scorer.

    Product tower: ``p = g * T(text) + (1 - g) * G(graph)`` with a learned,
    per-dimension gate ``g = sigmoid(W [T(text); G(graph); log(1 + n)] + b)``; ``T`` is the
    frozen text vector plus a trained residual adapter, ``G`` a projection of the GNN's
    product vector (:class:`~kgrec.encoders.graph.HeteroGraphEncoder` or the relational
    :class:`~kgrec.encoders.graph.RelationalGraphEncoder`, over users, catalogue and KG
    relations), ``n`` the product's interactions in the message-passing graph
    (``degree_gate``; ``text_only_below`` and ``graph_dropout`` act on ``G`` by evidence).

    User tower: a learned recency-weighted mean of the fused vectors of the
    user's history, plus a residual feed-forward layer, plus (``user_tower="transformer"``)
    a causal transformer over the ordered history, plus (``user_graph``) a projection of
    the user's own vector from the GNN.

    Score: the cosine of user and product over ``temperature``, plus, at scoring time only
    (``text_prior``), a fixed weight times the untrained text cosine of history and product. The loss is
    the softmax cross-entropy over all products (one target per example, or every
    position of a sequence with ``sequence_training``).

    Initialisation keeps the text signal: adapters, graph projections into the
    user, the transformer's output and the KG relations into products start at zero and
    the gate leans towards text, so an untrained model ranks like :class:`TextZeroShot`
    (so does the text prior); training moves it from there.

    Args:
        num_users, num_products: sizes.
        config: :class:`FusedConfig`.
        text_features: ``[P, d_text]`` product text vectors (frozen), required when ``use_text``.
        num_nodes, edge_types: knowledge-graph node counts and edge types, required when ``use_graph``.
        query_dim: text-vector size of queries for a graph-only model (a linear query tower).
        node_features: ``{type: [N_t, d]}`` input features of other node types (e.g. the
            ``query`` nodes of a search graph), fed to the GNN.
        text_tower: a trainable text encoder (:class:`kgrec.encoders.tuning.TunedTextEncoder`): in
            training the batch's products and queries are re-encoded with grad, the rest of the
            catalogue comes from the ``text`` cache (:meth:`refresh_text`). None = frozen text.
        product_texts: ``[P]`` product strings the text tower reads (required with it).
    """

    name = "fused"
    text: torch.Tensor  # [P, d_text] unit text vectors (a buffer: saved, moved with the model)
    text_tower: Any
    graph: HeteroGraphEncoder | RelationalGraphEncoder

    def __init__(
        self,
        num_users: int,
        num_products: int,
        config: FusedConfig,
        text_features: torch.Tensor | None = None,
        num_nodes: dict[str, int] | None = None,
        edge_types: list[tuple[str, str, str]] | None = None,
        query_dim: int | None = None,
        node_features: dict[str, torch.Tensor] | None = None,
        text_tower: nn.Module | None = None,
        product_texts: list[str] | None = None,
    ) -> None:
        super().__init__(num_users, num_products)
        self.config = config
        if config.use_text:
            if text_features is None:
                raise ValueError("use_text needs text_features")
            self.register_buffer("text", F.normalize(text_features.float(), dim=-1))
            d = text_features.shape[1]
            self.text_adapter = _zero_linear(d, d)
            # queries and product titles are different kinds of text: a query-side residual
            self.query_adapter = _zero_linear(d, d)
        else:
            d = config.graph_dim
            if query_dim is not None:  # graph-only search: query text -> graph space
                self.query_proj = nn.Linear(query_dim, d)
        self.dim = d
        self.search_user_weight = nn.Parameter(torch.zeros(()))
        # input features of other node types (e.g. the query nodes of a search graph)
        node_features = node_features or {}
        self.feature_types = sorted(node_features)
        for t in self.feature_types:
            self.register_buffer(f"features_{t}", F.normalize(node_features[t].float(), dim=-1))
        if text_tower is not None:
            if not config.use_text:
                raise ValueError("a text_tower needs use_text")
            if product_texts is None or len(product_texts) != num_products:
                raise ValueError("a text_tower needs product_texts, one per product")
        self.text_tower = text_tower
        self._fresh_rows: torch.Tensor | None = None
        self.product_texts = list(product_texts) if product_texts is not None else None
        if config.use_graph:
            if num_nodes is None or edge_types is None:
                raise ValueError("use_graph needs num_nodes and edge_types")
            input_dims = {"product": int(self.text.shape[1])} if config.use_text and config.graph_text_input else {}
            input_dims.update({t: int(node_features[t].shape[1]) for t in self.feature_types})
            encoder_options: dict[str, Any] = {"input_dims": input_dims, "dropout": config.dropout,
                               "feature_only": () if config.feature_ids else tuple(input_dims),
                               "quiet": kg_edge_types(edge_types, into=("product", "user")) if config.kg_quiet_start else ()}
            if config.graph_encoder == "rgcn":
                self.graph = RelationalGraphEncoder(num_nodes, edge_types, config.graph_dim, config.gnn_layers,
                                                    num_bases=config.gnn_bases, **encoder_options)
            else:
                self.graph = HeteroGraphEncoder(num_nodes, edge_types, config.graph_dim, config.gnn_layers,
                                                **encoder_options)
            self.graph_proj = nn.Linear(config.graph_dim, d)
            self.user_graph_proj = _zero_linear(config.graph_dim, d)
        if config.use_text and config.use_graph:
            self.gate = nn.Linear(2 * d + int(config.degree_gate), d)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, config.gate_bias)
            # the graph branch starts at zero, so the untrained fused model ranks like text alone
            nn.init.zeros_(self.graph_proj.weight)
            nn.init.zeros_(self.graph_proj.bias)
        age = torch.arange(config.max_history - 1, -1, -1, dtype=torch.float32)
        self.recency = nn.Parameter(age * math.log(config.recency_decay))
        self.user_ffn = nn.Sequential(nn.Linear(d, d), nn.GELU(), _zero_linear(d, d))
        self.tower = None
        if config.user_tower == "transformer":
            self.tower = CausalUserTower(d, config.tower_dim, config.tower_layers, config.tower_heads,
                                         config.max_history, config.tower_dropout)
        self._cache: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._evidence: torch.Tensor | None = None  # [P] graph_evidence of the current graph

    @classmethod
    def build(cls, inputs: ModelInputs, config: FusedConfig) -> FusedRecommender:
        return cls(
            inputs.num_users, inputs.num_products, config,
            text_features=inputs.need_text("fused") if config.use_text else None,
            num_nodes=inputs.num_nodes if config.use_graph else None,
            edge_types=inputs.edge_types if config.use_graph else None,
            query_dim=inputs.query_dim,
            node_features=inputs.node_features if config.use_graph else None,
            text_tower=inputs.text_tower, product_texts=inputs.product_texts,
        )

    def config_dict(self) -> dict:
        return asdict(self.config)

    def init_args(self) -> dict[str, Any]:
        init = super().init_args()
        if self.config.use_text:
            init["text_dim"] = int(self.text.shape[1])
        if self.config.use_graph:
            init["num_nodes"] = dict(self.graph.num_nodes)
            init["edge_types"] = [list(e) for e in self.graph.edge_types]
        if hasattr(self, "query_proj"):
            init["query_dim"] = int(self.query_proj.in_features)
        if self.feature_types:
            init["node_feature_dims"] = {t: int(getattr(self, f"features_{t}").shape[1]) for t in self.feature_types}
        return init

    def set_graph(self, graph: HeteroData) -> None:
        super().set_graph(graph)
        self._cache = self._evidence = None

    def train(self, mode: bool = True) -> FusedRecommender:
        self._cache = self._evidence = None
        return super().train(mode)

    @property
    def uses_text_prior(self) -> bool:
        """True when scores add the untrained text score (``text_prior`` or ``cold_text_prior`` > 0)."""
        return self.config.text_prior > 0 or self.config.cold_text_prior > 0

    def cold_products(self) -> torch.Tensor:
        """``[P]`` 1.0 for products with fewer than ``cold_below`` interaction and judgement edges in
        the current message-passing graph, else 0.0 (the evidence is cached until the graph or the mode changes)."""
        if self._evidence is None:
            self._evidence = self.graph_evidence(getattr(self, "edge_index_dict", {}), self.num_products, self.text.device)
        return (self._evidence < math.log1p(self.config.cold_below)).float()

    def _prior_columns(self, text: torch.Tensor, cold: torch.Tensor) -> torch.Tensor:
        """The product side of the text prior in a dot-product layout: ``[P, d_text]`` raw text
        vectors, with ``cold_text_prior`` also ``[P, d_text]`` of them times the cold flag ``cold`` ``[P]``."""
        if self.config.cold_text_prior > 0:
            return torch.cat([text, cold.to(text).unsqueeze(1) * text], dim=1)
        return text

    def _with_prior(self, products: torch.Tensor) -> torch.Tensor:
        """``[P, d]`` unit product vectors with the text prior's product side appended
        (:meth:`_prior_columns` of the catalogue) when :attr:`uses_text_prior`."""
        if not self.uses_text_prior:
            return products
        return torch.cat([products, self._prior_columns(self.text, self.cold_products())], dim=1)

    def _encode(self, edges: dict, text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(products ``[P, d]``, user graph vectors ``[U, d]`` or None); ``text`` overrides the
        ``[P, d_text]`` unit text matrix (fresh tower vectors during fine-tuning)."""
        if text is None and self.config.use_text:
            text = self.text
        t = text + self.text_adapter(text) if text is not None and self.config.use_text else None
        if not self.config.use_graph:
            if t is None:
                raise ValueError(f"{self.name} has neither a text nor a graph tower")
            return t, None
        nodes = self._graph_nodes(edges, text)
        graph_p = self.graph_proj(nodes["product"])
        users = self.user_graph_proj(nodes["user"]) if "user" in nodes else None
        if t is None:
            return graph_p, users
        return self.fuse(t, graph_p, self.graph_evidence(edges, graph_p.shape[0], graph_p.device)), users

    def fuse(self, text: torch.Tensor, graph: torch.Tensor, evidence: torch.Tensor | None = None) -> torch.Tensor:
        """``g * text + (1 - g) * graph`` with the learned per-dimension gate ``g`` (``[N, d]`` each);
        ``evidence`` ``[N]`` is :meth:`graph_evidence` (zeros when None: no graph evidence). Rows
        with less evidence than ``text_only_below`` interactions lose their graph vector; in
        training, ``graph_dropout`` of the rows lose their graph vector and evidence."""
        if evidence is None:
            evidence = text.new_zeros(text.shape[0])
        if self.config.text_only_below > 0:
            scarce = evidence < math.log1p(self.config.text_only_below)
            graph = graph.masked_fill(scarce.unsqueeze(1), 0.0)
        if self.training and self.config.graph_dropout > 0:
            dropped = torch.rand(graph.shape[0], device=graph.device) < self.config.graph_dropout
            graph = graph.masked_fill(dropped.unsqueeze(1), 0.0)
            evidence = evidence.masked_fill(dropped, 0.0)
        inputs = [text, graph]
        if self.config.degree_gate:
            inputs.append(evidence.to(text.dtype).unsqueeze(1))
        g = torch.sigmoid(self.gate(torch.cat(inputs, dim=-1)))
        return g * text + (1 - g) * graph

    @staticmethod
    def graph_evidence(edges: dict, num_products: int, device: torch.device | None = None) -> torch.Tensor:
        """``[P]`` ``log(1 + n)``, ``n`` the product's interaction and judgement edges in ``edges``."""
        count = torch.zeros(num_products, device=device)
        for edge_type in (INTERACTION_EDGE, QUERY_EDGE):
            index = edges.get(edge_type)
            if index is not None and index.numel():
                count = count + torch.bincount(index[1], minlength=num_products)[:num_products].to(count)
        return torch.log1p(count)

    def _graph_nodes(self, edges: dict, text: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The GNN's node vectors (with text and other node features as inputs when configured)."""
        features = {t: getattr(self, f"features_{t}") for t in self.feature_types}
        if self.config.graph_text_input and self.config.use_text:
            features["product"] = self.text if text is None else text
        return self.graph(edges, features or None)

    def _fresh_text(self, products: torch.Tensor) -> torch.Tensor | None:
        """With a trainable text tower in training: the text matrix with the rows of
        ``products`` re-encoded (with grad); the other rows come from the cache
        :meth:`refresh_text` fills. None otherwise (use the cache as it is)."""
        self._fresh_rows = None
        tower = self.text_tower
        if tower is None or not self.training or not getattr(tower, "trainable", False):
            return None
        rows = torch.unique(products[products >= 0])
        self._fresh_rows = rows
        texts = self.product_texts or []
        vectors = F.normalize(tower([texts[i] for i in rows.tolist()]).float(), dim=-1)
        return self.text.index_put((rows.to(self.text.device),), vectors.to(self.text.device))

    @torch.no_grad()
    def refresh_text(self, batch_size: int | None = None, progress: bool = False) -> None:
        """Re-encode every product title with the text tower into the ``text`` cache (the
        trainer calls it after each epoch, before validation; the buffer is saved with the
        weights, so restoring the best epoch restores its matching cache)."""
        if self.text_tower is None:
            return
        vectors = self.text_tower.encode(self.product_texts, batch_size=batch_size, progress=progress)
        self.text.copy_(F.normalize(vectors.float(), dim=-1).to(self.text.device))
        self._cache = None

    def _towers(self, batch: RecBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.training:
            text = self._fresh_text(batch.targets) if batch is not None else None
            return self._encode(self._edges_without(batch) if batch is not None else self.edge_index_dict, text)
        if self._cache is None:
            with torch.no_grad():
                self._cache = self._encode(self.edge_index_dict)
        return self._cache

    @property
    def trains_on_sequences(self) -> bool:
        """True when :meth:`loss` scores every position of an example (``sequence_training``):
        :func:`~kgrec.fusion.train.fit` then gives it one example per user's train sequence."""
        return self.config.sequence_training

    def _history_items(self, history: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` unit product vectors of ``history`` (padding rows are product 0's; mask them)."""
        # index_select, not advanced indexing: the latter's backward accumulates with atomic adds
        # across threads on the CPU, and training would not repeat bit for bit
        items = F.normalize(products, dim=-1).index_select(0, history.clamp(min=0).flatten())
        return items.view(*history.shape, -1)

    def _recency_weights(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` learned recency weights of a left-padded history (zeros for an empty one)."""
        logits = self.recency[-history.shape[1] :].unsqueeze(0).masked_fill(history < 0, float("-inf"))
        return torch.softmax(logits, dim=1).nan_to_num(0.0)

    def _sequence_weights(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, L, L]``: row ``j`` holds the recency weights of the history up to position ``j``."""
        length, most = history.shape[1], self.config.max_history
        position = torch.arange(length, device=history.device)
        age = position.unsqueeze(1) - position.unsqueeze(0)  # [j, i]
        index = (most - 1 - age).clamp(0, most - 1).flatten()
        logits = self.recency.index_select(0, index).view(length, length).unsqueeze(0)
        allowed = (age >= 0).unsqueeze(0) & (history >= 0).unsqueeze(1)
        return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)

    def _text_users(self, history: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Unit text users of :attr:`FusedConfig.text_prior`: ``weights`` (``[B, L]`` or ``[B, L, L]``)
        times the raw text rows of ``history`` (``text`` ``[P, d_text]``, unit)."""
        items = text.index_select(0, history.clamp(min=0).flatten()).view(*history.shape, -1)
        equation = "bl,bld->bd" if weights.dim() == 2 else "bji,bid->bjd"
        return F.normalize(torch.einsum(equation, weights, items), dim=-1)

    def _score(self, users: torch.Tensor, products: torch.Tensor, text_users: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, P]`` scores: cosine of user and product vectors over ``temperature``, plus the text
        score when ``text_users`` (``[N, d_text]``, unit) are given."""
        logits = F.normalize(users, dim=-1) @ F.normalize(products, dim=-1).T
        if text_users is not None:
            text_scores = text_users @ self.text.T
            weight = self.config.text_prior + self.config.cold_text_prior * self.cold_products().unsqueeze(0)
            logits = logits + weight * text_scores
        return logits / self.config.temperature

    def _history_text_users(self, history: torch.Tensor) -> torch.Tensor | None:
        """The text users of the (last ``max_history`` of) ``history`` when the text prior applies
        (eval mode, :attr:`uses_text_prior`); None otherwise."""
        if self.training or not self.uses_text_prior:
            return None
        history = history[:, -self.config.max_history :]
        return self._text_users(history, self.text, self._recency_weights(history))

    def _users(self, batch: RecBatch, products: torch.Tensor, user_nodes: torch.Tensor | None) -> torch.Tensor:
        """``[B, d]`` user vectors after the whole history (the last position of :meth:`_user_sequence`)."""
        history = batch.history[:, -self.config.max_history :]
        mask = history >= 0
        weights = self._recency_weights(history)
        items = self._history_items(history, products)
        user = torch.einsum("bl,bld->bd", weights, items)
        user = user + self.user_ffn(user)
        if self.tower is not None:
            user = user + self.tower(items, mask)
        if user_nodes is not None and self.config.user_graph:
            user = user + user_nodes.index_select(0, batch.users)
        return user

    def _user_sequence(self, batch: RecBatch, products: torch.Tensor, user_nodes: torch.Tensor | None) -> torch.Tensor:
        """``[B, L, d]``: at position ``j`` the user vector of the history up to ``j`` (the
        recency mean over positions ``<= j`` with weights by age, the feed-forward layer, the
        causal tower's output at ``j``); padded positions hold zeros or junk, mask them."""
        history = batch.history[:, -self.config.max_history :]
        mask = history >= 0
        weights = self._sequence_weights(history)
        items = self._history_items(history, products)
        user = torch.einsum("bji,bid->bjd", weights, items)
        user = user + self.user_ffn(user)
        if self.tower is not None:
            user = user + self.tower(items, mask, all_positions=True)
        if user_nodes is not None and self.config.user_graph:
            user = user + user_nodes.index_select(0, batch.users).unsqueeze(1)
        return user

    def _sequence_loss(self, batch: RecBatch) -> torch.Tensor:
        """Cross-entropy of every position's next item (the next history item; the target after
        the last), over the whole catalogue; every (user, next item) pair leaves message passing."""
        history = batch.history[:, -self.config.max_history :]
        following = torch.cat([history[:, 1:], batch.targets.unsqueeze(1)], dim=1)
        following = torch.where(history >= 0, following, -1)
        flat = following.flatten()
        picked = torch.nonzero(flat >= 0).squeeze(1)
        targets = flat.index_select(0, picked)
        pairs = RecBatch(batch.users.repeat_interleave(history.shape[1]).index_select(0, picked), history[:0], targets)
        if self.training:
            products, user_nodes = self._encode(self._edges_without(pairs), self._fresh_text(targets))
        else:
            products, user_nodes = self._towers(None)
        users = self._user_sequence(RecBatch(batch.users, history, batch.targets), products, user_nodes)
        users = users.flatten(0, 1).index_select(0, picked)
        logits, targets = self._in_batch(self._score(users, products), targets)
        return F.cross_entropy(logits, targets)

    def _logits(self, batch: RecBatch) -> torch.Tensor:
        products, user_nodes = self._towers(batch)
        users = self._users(batch, products, user_nodes)
        return self._score(users, products, self._history_text_users(batch.history))

    def _in_batch(self, logits: torch.Tensor, products: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """With a trainable text tower in training, keep only the columns of the products
        re-encoded this step (in-batch negatives): the cached rows were encoded by an older
        tower, and a softmax that mixes them lets the tower tell fresh from stale instead of
        relevant from not. ``products`` are remapped to column positions (-1 stays -1)."""
        rows = self._fresh_rows if self.training else None
        if rows is None:
            return logits, products
        rows = rows.to(logits.device)
        position = torch.searchsorted(rows, products.clamp(min=0))
        return logits[:, rows], torch.where(products >= 0, position, products)

    def loss(self, batch: RecBatch) -> torch.Tensor:
        if self.config.sequence_training:
            return self._sequence_loss(batch)
        if self.training and self.text_tower is not None and getattr(self.text_tower, "trainable", False):
            return self._tuned_loss(batch)
        logits, targets = self._in_batch(self._logits(batch), batch.targets)
        return F.cross_entropy(logits, targets)

    def _tuned_loss(self, batch: RecBatch) -> torch.Tensor:
        """Training loss with a trainable text tower: targets and the ``tuned_history`` most recent
        history items are re-encoded with grad; softmax over the re-encoded products (in-batch),
        plus ``catalogue_loss`` times the softmax of the same users over the whole catalogue from
        the cached text (the tower learns through the users' fresh history rows only)."""
        recent = batch.history[:, -self.config.tuned_history :] if self.config.tuned_history > 0 else batch.history[:, :0]
        edges = self._edges_without(batch)
        products, user_nodes = self._encode(edges, self._fresh_text(torch.cat([batch.targets, recent.flatten()])))
        users = self._users(batch, products, user_nodes)
        logits, targets = self._in_batch(self._score(users, products), batch.targets)
        loss = F.cross_entropy(logits, targets)
        if self.config.catalogue_loss > 0:
            cached, _ = self._encode(edges)
            logits = self._score(users, cached)
            loss = loss + self.config.catalogue_loss * F.cross_entropy(logits, batch.targets)
        return loss

    def score_all(self, batch: RecBatch) -> torch.Tensor:
        return self._logits(batch)

    def product_embeddings(self) -> torch.Tensor:
        """``[P, d]`` unit product vectors; with the text prior the raw text vectors appended
        (``[P, d + d_text]``, what ``score_all`` multiplies users ``[û / T, w û_text / T]`` with), and
        with ``cold_text_prior`` also the cold products' text (``[P, d + 2 d_text]``, users
        ``[..., w_cold û_text / T]``)."""
        return self._with_prior(F.normalize(self._towers(None)[0], dim=-1))

    # -- search: the same product tower, a query tower over the same text encoder ----------

    def query_vectors(self, queries: torch.Tensor, texts: list[str] | None = None) -> torch.Tensor:
        """``[B, d]`` query vectors in the product space from ``[B, d_text]`` text vectors.

        With a text tower and ``texts``, the tower re-encodes ``texts`` instead (with grad when it
        trains): ``queries`` come from the base encoder, while the product cache holds the
        tower's vectors, and a query must live in the space of the products it is scored with."""
        tower = self.text_tower
        if tower is not None and texts is not None:
            if self.training and getattr(tower, "trainable", False):
                queries = tower(list(texts))
            else:
                queries = tower.encode(list(texts)).to(queries.device)
        q = F.normalize(queries.float(), dim=-1)
        if self.config.use_text:
            return q + self.text_adapter(q) + self.query_adapter(q)
        if not hasattr(self, "query_proj"):
            raise NotImplementedError(f"{self.name} was built without query_dim: it cannot encode a query")
        return self.query_proj(q)

    def _search_edges(self, batch: SearchBatch, rec: RecBatch | None = None) -> dict:
        """The message-passing edges without the batches' supervision pairs (training)."""
        edges = dict(self.edge_index_dict)
        if rec is not None:
            edges = drop_pairs(edges, INTERACTION_EDGE, REV_INTERACTION_EDGE, rec.users, rec.targets)
        judged = batch.products.shape[1]
        edges = drop_pairs(edges, INTERACTION_EDGE, REV_INTERACTION_EDGE,
                           batch.users.repeat_interleave(judged), batch.products.flatten())
        return drop_pairs(edges, QUERY_EDGE, REV_QUERY_EDGE,
                          batch.query_nodes.repeat_interleave(judged), batch.products.flatten())

    def _search_products(self, batch: SearchBatch, rec: RecBatch | None = None,
                         edges: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Product tower for a search (and recommendation) batch: in training the batches'
        supervision pairs leave the message-passing graph and fresh text rows are encoded."""
        if not self.training:
            return self._towers(None)
        edges = self._search_edges(batch, rec) if edges is None else edges
        fresh = batch.products.flatten() if rec is None else torch.cat([batch.products.flatten(), rec.targets])
        return self._encode(edges, self._fresh_text(fresh))

    def _search_logits(self, batch: SearchBatch, products: torch.Tensor, user_nodes: torch.Tensor | None,
                       queries: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, P]`` logits; ``queries``: the batch's ``query_vectors`` when already computed."""
        q = self.query_vectors(batch.queries, batch.texts) if queries is None else queries
        q = F.normalize(q, dim=-1)
        has_history = (batch.history >= 0).any(1, keepdim=True)
        if self.config.personalize_search and bool(has_history.any()):
            user = self._users(RecBatch(batch.users.clamp(min=0), batch.history, batch.users), products, user_nodes)
            q = q + self.search_user_weight * torch.where(has_history, F.normalize(user, dim=-1), 0.0)
        return F.normalize(q, dim=-1) @ F.normalize(products, dim=-1).T / self.config.temperature

    def search_logits(self, batch: SearchBatch) -> torch.Tensor:
        """``[B, P]`` search scores of every product: cosine between the (optionally
        personalised) query vector and the fused product vectors, over ``temperature``."""
        products, user_nodes = self._search_products(batch)
        return self._search_logits(batch, products, user_nodes)

    def _graded_loss(self, logits: torch.Tensor, batch: SearchBatch, in_batch: bool = True) -> torch.Tensor:
        judged = batch.products >= 0
        gains = torch.where(judged, torch.pow(2.0, batch.grades.float()) - 1.0, 0.0)
        total = gains.sum(1)
        keep = total > 0
        if not bool(keep.any()):
            return logits.sum() * 0.0
        target = gains / total.clamp(min=1e-12).unsqueeze(1)
        products = batch.products
        if in_batch:
            logits, products = self._in_batch(logits, products)
        picked = torch.log_softmax(logits.float(), dim=-1).gather(1, products.clamp(min=0))
        return -(target * picked).sum(1)[keep].mean()

    def _search_term(self, batch: SearchBatch, rec: RecBatch | None = None):
        """(search loss, products, user nodes) of one step: the listwise loss, plus
        ``catalogue_loss`` times its whole-catalogue twin on cached text while a trainable
        text tower trains."""
        edges = self._search_edges(batch, rec) if self.training else None
        products, user_nodes = self._search_products(batch, rec, edges)
        queries = self.query_vectors(batch.queries, batch.texts)
        loss = self._graded_loss(self._search_logits(batch, products, user_nodes, queries), batch)
        if edges is not None and self._fresh_rows is not None and self.config.catalogue_loss > 0:
            cached, cached_users = self._encode(edges)  # the cache: no tower gradient on the product side
            logits = self._search_logits(batch, cached, cached_users, queries)
            loss = loss + self.config.catalogue_loss * self._graded_loss(logits, batch, in_batch=False)
        return loss, products, user_nodes

    def search_loss(self, batch: SearchBatch) -> torch.Tensor:
        """Listwise softmax cross-entropy over all products against the target distribution
        ``∝ 2^grade - 1`` of each query's judged products (queries with no gain skipped)."""
        return self._search_term(batch)[0]

    def forward(self, batch: RecBatch | None, search: SearchBatch | None = None, search_weight: float = 1.0) -> torch.Tensor:
        """Multi-task loss with one shared product tower (one graph pass for both tasks):
        ``loss(batch) + search_weight * search_loss(search)``; either part may be None."""
        if search is None:
            if batch is None:
                raise ValueError("forward needs a recommendation batch, a search batch or both")
            return self.loss(batch)
        search_loss, products, user_nodes = self._search_term(search, batch)
        loss = search_weight * search_loss
        if batch is not None and len(batch):
            users = self._users(batch, products, user_nodes)
            logits = self._score(users, products, self._history_text_users(batch.history))
            logits, targets = self._in_batch(logits, batch.targets)
            loss = loss + F.cross_entropy(logits, targets)
        return loss

    @torch.no_grad()
    def serving_state(self) -> dict[str, torch.Tensor]:
        """``products`` (unit fused vectors, with the text prior followed by the raw text vectors),
        ``product_text`` (``T``), ``product_graph`` (``G``) and, with ``user_graph``, the users'
        projected GNN vectors, under the current graph."""
        products, user_nodes = self._encode(self.edge_index_dict)
        state = {"products": self._with_prior(F.normalize(products, dim=-1))}
        if self.config.use_text:
            state["product_text"] = self.text + self.text_adapter(self.text)
        if self.config.use_graph:
            state["product_graph"] = self.graph_proj(self._graph_nodes(self.edge_index_dict)["product"])
        if self.config.use_graph and self.config.user_graph and user_nodes is not None:
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
        vectors = state["products"][rows]
        d = self.dim
        user = self._users(RecBatch(users, history, batch.targets), vectors[:, :d], user_nodes)
        user = F.normalize(user, dim=-1) / self.config.temperature
        if self.uses_text_prior:
            window = history[:, -self.config.max_history :]
            raw_text = vectors[:, d : d + int(self.text.shape[1])]
            text_users = self._text_users(window, raw_text, self._recency_weights(window)) / self.config.temperature
            parts = [user, self.config.text_prior * text_users]
            if self.config.cold_text_prior > 0:
                parts.append(self.config.cold_text_prior * text_users)
            user = torch.cat(parts, dim=1)
        return user

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
            fused = self.fuse(parts["product_text"], parts["product_graph"])  # new: no graph evidence
        else:
            fused = next(iter(parts.values()))
        parts["products"] = F.normalize(fused, dim=-1)
        if self.uses_text_prior:  # a new product has no graph evidence: it is cold
            raw = F.normalize(text.float(), dim=-1).to(device)
            parts["products"] = torch.cat([parts["products"], self._prior_columns(raw, raw.new_ones(raw.shape[0]))], dim=1)
        out = dict(state)
        for key, value in parts.items():
            out[key] = torch.cat([state[key], value])
        return out

    def serving_query(self, state: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """The query tower (:meth:`query_vectors`) applied to ``[B, d_text]`` text vectors,
        unit length (cosine against the fused product vectors)."""
        if not self.config.use_text and not hasattr(self, "query_proj"):
            raise NotImplementedError(f"{self.name} has no text tower: it cannot encode a query")
        with torch.no_grad():
            query = F.normalize(self.query_vectors(text.to(state["products"].device)), dim=-1)
        if self.uses_text_prior:  # search scores the fused part only
            query = F.pad(query, (0, state["products"].shape[1] - query.shape[1]))
        return query


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer that starts as the zero map (a residual branch that starts off)."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
