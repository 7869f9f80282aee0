"""The untrained text baseline: users are recency-weighted means of their products' text vectors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kgrec.fusion.data import RecBatch, SearchBatch
from kgrec.fusion.models.base import ModelInputs, Recommender


@dataclass
class TextZeroShotConfig:
    """:class:`TextZeroShot` settings: weight ratio between consecutive history items."""

    decay: float = 0.7


class TextZeroShot(Recommender):
    """Untrained text baseline: a user is the recency-weighted mean of the text
    vectors of their history (weight ``decay**age``); cosine scores.

    Args:
        text_features: ``[P, d]`` product text vectors.
        decay: weight ratio between consecutive history items (default 0.7).
    """

    name = "text-zero-shot"
    text: torch.Tensor  # [P, d] unit rows; a buffer, declared so that attribute access is typed

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

    @classmethod
    def build(cls, inputs: ModelInputs, config: TextZeroShotConfig) -> TextZeroShot:
        return cls(inputs.num_users, inputs.need_text(cls.name), config.decay)

    def config_dict(self) -> dict:
        return {"decay": self.decay}

    def init_args(self) -> dict[str, Any]:
        return {**super().init_args(), "text_dim": int(self.text.shape[1])}

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

    def search_logits(self, batch: SearchBatch) -> torch.Tensor:
        """``[B, P]`` cosines between the queries' and the products' text vectors."""
        return F.normalize(batch.queries.float(), dim=-1).to(self.text.device) @ self.text.T
