"""Mini-batch training loss for :class:`~kgrec.fusion.models.FusedRecommender` on sampled subgraphs.

``FusedRecommender.loss`` runs the GNN over the whole graph every step and takes a
softmax over every product. :class:`SampledFusedLoss` does the same computation on
a sample:

1. candidates = unique(batch targets ∪ the products the user tower reads from the
   batch histories ∪ ``num_negatives`` uniform random products); all products when
   ``num_negatives >= num_products``;
2. a :class:`~kgrec.encoders.sampling.NeighborSampler` draws the ``len(fanouts)``-hop
   in-neighbourhood of the candidates (and of the batch users when the user tower
   reads their GNN vectors), never sampling a (batch user, batch target) supervision
   edge in either direction — the leakage guard of ``Recommender._edges_without``;
3. the GNN runs on that subgraph only (``HeteroGraphEncoder(..., n_id=...)``), the
   candidates' fused vectors are computed like ``FusedRecommender._encode`` for those
   rows only (frozen text read from ``model.text``), the user tower reads the history
   remapped to candidate positions;
4. cross-entropy of ``cos(user, candidate) / temperature`` over the candidates.

No logQ correction: the negatives are drawn uniformly, so ``log Q`` is the same for
every product and the correction (``logit - log Q``, applied to every candidate,
the target included) is a constant shift that cancels in the softmax. The batch's
own targets and history products are in the set with certainty rather than drawn
from a proposal, and the set is deduplicated, so there are no per-draw counts to
correct either. The loss is the softmax over the candidate set: a biased (too
optimistic) estimate of the full-catalogue loss that becomes it exactly when the
candidates are all products (``num_negatives >= num_products``) and every fanout is
``-1`` (a test checks this against ``FusedRecommender.loss``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from kgrec.encoders.sampling import NeighborSampler, SampledSubgraph
from kgrec.fusion.data import RecBatch
from kgrec.fusion.models import FusedRecommender

EdgeType = tuple[str, str, str]


class SampledFusedLoss:
    """Sampled-subgraph, sampled-softmax training loss of a :class:`FusedRecommender`.

    Usage: ``loss_fn = SampledFusedLoss(model, train_graph); loss = loss_fn(batch)``.

    Args:
        model: a fused (or graph-only) model with ``config.use_graph``; its text tower, if
            any, reads the frozen ``model.text`` buffer.
        graph: the message-passing graph (e.g. ``snapshot.message_passing("train")``).
        fanouts: in-edges sampled per node and edge type at each hop (default ``(10, 10)``;
            ``-1`` = all). One hop per GNN layer: ``len(fanouts)`` must equal
            ``model.config.gnn_layers``.
        num_negatives: uniform random products added to the candidates (default 1024); at
            least ``num_products`` means every product is a candidate (the full softmax).
        backend: sampler backend, ``"auto"`` | ``"torch"`` | ``"pyg"`` (see
            :class:`~kgrec.encoders.sampling.NeighborSampler`).
        seed: seeds the negatives and the sampler (default 0); None draws from the global RNG.

    Sampling runs on the CPU (where the graph lives); the subgraph and candidates move to
    the model's device.
    """

    def __init__(
        self,
        model: FusedRecommender,
        graph: HeteroData,
        fanouts: Sequence[int] = (10, 10),
        num_negatives: int = 1024,
        backend: str = "auto",
        seed: int | None = 0,
    ) -> None:
        if not isinstance(model, FusedRecommender):
            raise TypeError(f"SampledFusedLoss needs a FusedRecommender, got {type(model).__name__}")
        if not model.config.use_graph:
            raise ValueError(
                f"SampledFusedLoss samples the graph tower; model {model.name!r} has use_graph=False "
                "(train it with model.loss)"
            )
        if len(fanouts) != model.config.gnn_layers:
            raise ValueError(
                f"fanouts {tuple(fanouts)} name {len(fanouts)} hops but the model's GNN has "
                f"{model.config.gnn_layers} layers: pass one fanout per layer"
            )
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        self.model = model
        self.fanouts = tuple(int(f) for f in fanouts)
        self.num_negatives = int(num_negatives)
        self.backend = backend
        self.seed = seed
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)
        self.sampler: NeighborSampler
        #: the subgraph (local ids, on the model's device) and candidates of the last call
        self.last_subgraph: SampledSubgraph | None = None
        self.last_candidates: torch.Tensor | None = None
        self.set_graph(graph)

    def set_graph(self, graph: HeteroData) -> None:
        """Sample from ``graph`` from now on (rebuilds the sampler's CSR)."""
        missing = [t for t in ("user", "product") if t not in graph.node_types]
        if missing:
            raise ValueError(f"the graph has no {missing} nodes; SampledFusedLoss needs users and products")
        if graph["product"].num_nodes != self.model.num_products:
            raise ValueError(
                f"the graph has {graph['product'].num_nodes} products, the model {self.model.num_products}"
            )
        cpu = HeteroData()
        for t in graph.node_types:
            cpu[t].num_nodes = graph[t].num_nodes
        for e, index in graph.edge_index_dict.items():
            cpu[e].edge_index = index.cpu()
        sampler_seed = None if self.seed is None else int(torch.randint(2**62, (1,), generator=self.generator))
        self.sampler = NeighborSampler(cpu, self.fanouts, backend=self.backend, seed=sampler_seed)
        self.supervision_types: list[EdgeType] = [
            e for e in self.sampler.edge_types if {e[0], e[2]} == {"user", "product"}
        ]

    def candidates(self, batch: RecBatch) -> torch.Tensor:
        """``[C]`` sorted unique product ids: targets, read history, uniform negatives (CPU)."""
        num_products = self.model.num_products
        if self.num_negatives >= num_products:
            return torch.arange(num_products)
        history = batch.history[:, -self.model.config.max_history :].cpu()
        negatives = torch.randint(0, num_products, (self.num_negatives,), generator=self.generator)
        return torch.unique(torch.cat([batch.targets.cpu(), history[history >= 0], negatives]))

    def supervision_edges(self, batch: RecBatch) -> dict[EdgeType, torch.Tensor]:
        """The batch's (user, target) pairs as ``[2, B]`` per user-product edge type, both directions."""
        pairs = torch.stack([batch.users.cpu(), batch.targets.cpu()])
        return {e: pairs if e[0] == "user" else pairs.flip(0) for e in self.supervision_types}

    def __call__(self, batch: RecBatch) -> torch.Tensor:
        """The scalar sampled-softmax loss of ``batch`` (mean over its examples)."""
        model, cfg = self.model, self.model.config
        if len(batch) == 0:
            raise ValueError("SampledFusedLoss got an empty batch")
        if bool((batch.targets < 0).any()) or bool((batch.targets >= model.num_products).any()):
            raise ValueError(f"batch targets must be product indices in [0, {model.num_products})")
        device = model.device
        candidates = self.candidates(batch)
        seeds = {"product": candidates}
        users = None
        if cfg.user_graph:  # the user tower reads the batch users' GNN vectors
            users, user_pos = torch.unique(batch.users.cpu(), return_inverse=True)
            seeds["user"] = users
        # leakage guard: the torch sampler never draws these edges, the pyg one drops them after
        sub = self.sampler.sample(seeds, exclude=self.supervision_edges(batch)).to(device)
        self.last_subgraph, self.last_candidates = sub, candidates

        use_text = cfg.use_text
        features = {"product": model.text} if use_text and cfg.graph_text_input else None
        nodes = model.graph(sub.edge_index_dict, features, n_id=sub.n_id)
        num_c = candidates.numel()
        graph_p = model.graph_proj(nodes["product"][:num_c])
        if use_text:
            frozen = model.text[candidates.to(device)]
            text = frozen + model.text_adapter(frozen)
            evidence = model.graph_evidence(model._edges_without(batch), model.num_products, device)
            products = model.fuse(text, graph_p, evidence[candidates.to(device)])
        else:
            products = graph_p
        user_nodes = None
        local_users = batch.users.to(device)
        if users is not None:
            user_nodes = model.user_graph_proj(nodes["user"][: users.numel()])
            local_users = user_pos.to(device)

        # history and targets as positions in the (sorted) candidate list
        cand = candidates.to(device)
        history = batch.history[:, -cfg.max_history :].to(device)
        hist_pos = torch.searchsorted(cand, history.clamp(min=0))
        history = torch.where(history >= 0, hist_pos, history)
        targets = torch.searchsorted(cand, batch.targets.to(device))
        user = model._users(RecBatch(local_users, history, targets), products, user_nodes)
        logits = F.normalize(user, dim=-1) @ F.normalize(products, dim=-1).T
        return F.cross_entropy(logits / cfg.temperature, targets)
