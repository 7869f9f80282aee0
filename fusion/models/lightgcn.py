"""LightGCN over the user–product interactions, trained with BPR."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch_geometric.data import HeteroData

from kgrec.encoders.graph import LightGCNEncoder
from kgrec.fusion.models.base import INTERACTION_EDGE, ModelInputs
from kgrec.fusion.models.mf import MatrixFactorization


@dataclass
class LightGCNConfig:
    """:class:`LightGCNRecommender` settings."""

    dim: int = 64
    num_layers: int = 3
    weight_decay: float = 1e-4


class LightGCNRecommender(MatrixFactorization):
    """LightGCN over the visible user–product interactions, trained with BPR."""

    name = "lightgcn"

    def __init__(self, num_users: int, num_products: int, dim: int = 64, num_layers: int = 3, weight_decay: float = 1e-4) -> None:
        super().__init__(num_users, num_products, dim, weight_decay)
        del self.users, self.products
        self.num_layers = num_layers
        self.encoder = LightGCNEncoder(num_users, num_products, dim, num_layers)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def build(cls, inputs: ModelInputs, config: LightGCNConfig) -> LightGCNRecommender:  # type: ignore[override]
        return cls(inputs.num_users, inputs.num_products, **asdict(config))

    def config_dict(self) -> dict:
        return {"dim": self.dim, "num_layers": self.num_layers, "weight_decay": self.weight_decay}

    def set_graph(self, graph: HeteroData) -> None:
        super().set_graph(graph)
        self._cache = None

    def train(self, mode: bool = True) -> LightGCNRecommender:
        self._cache = None
        return super().train(mode)

    def _towers(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            return self.encoder(self.edge_index_dict[INTERACTION_EDGE])
        if self._cache is None:
            with torch.no_grad():
                self._cache = self.encoder(self.edge_index_dict[INTERACTION_EDGE])
        return self._cache
