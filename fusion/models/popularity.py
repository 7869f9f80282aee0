"""Popularity: the non-personalised floor."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.data import HeteroData

from kgrec.fusion.data import RecBatch
from kgrec.fusion.models.base import INTERACTION_EDGE, ModelInputs, Recommender


@dataclass
class PopularityConfig:
    """:class:`Popularity` has no settings."""


class Popularity(Recommender):
    """Scores each product by its number of visible interactions."""

    name = "popularity"

    def __init__(self, num_users: int, num_products: int) -> None:
        super().__init__(num_users, num_products)
        self.register_buffer("counts", torch.zeros(num_products))

    @classmethod
    def build(cls, inputs: ModelInputs, config: PopularityConfig) -> Popularity:
        return cls(inputs.num_users, inputs.num_products)

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
