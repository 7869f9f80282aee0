"""Matrix factorisation trained with BPR."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kgrec.fusion.data import RecBatch
from kgrec.fusion.models.base import ModelInputs, Recommender


@dataclass
class MFConfig:
    """:class:`MatrixFactorization` settings: embedding size, L2 on the batch's embeddings."""

    dim: int = 64
    weight_decay: float = 1e-4


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

    @classmethod
    def build(cls, inputs: ModelInputs, config: MFConfig) -> MatrixFactorization:
        return cls(inputs.num_users, inputs.num_products, **asdict(config))

    def config_dict(self) -> dict:
        return {"dim": self.dim, "weight_decay": self.weight_decay}

    def _towers(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.users.weight, self.products.weight

    def loss(self, batch: RecBatch) -> torch.Tensor:
        users, products = self._towers()
        neg = torch.randint(0, self.num_products, batch.targets.shape, device=batch.targets.device)
        # index_select: advanced indexing's backward adds with atomics across CPU threads (not repeatable)
        u, p, n = users.index_select(0, batch.users), products.index_select(0, batch.targets), products.index_select(0, neg)
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
