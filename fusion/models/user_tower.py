"""A user tower that reads the order of the history: a causal transformer (SASRec-style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalUserTower(nn.Module):
    """Causal self-attention over a user's history of product vectors (SASRec, Kang & McAuley, 2018).

    Each position attends to itself and the positions before it (never to later ones, never to
    padding). Order enters as a learned bias per head on the attention score by *age*, the
    number of positions between the attending position and the item (relative positions, as in
    T5 or ALiBi), not as absolute position embeddings: so the output at position ``j`` of a
    sequence is exactly the output for the history that ends at ``j``, whatever comes after it or
    how much left padding there is, and one pass over a sequence trains every prefix at once.
    The last position's output, projected back to the product space, is the tower's answer.
    The output projection starts at zero, so a fresh tower adds nothing to what it is added to
    (the fused scorer's recency mean).

    Args:
        input_dim: size of the product vectors (and of the output).
        dim: the transformer's width (default 64; inputs are projected to it).
        num_layers: transformer blocks (default 2).
        num_heads: attention heads (default 2).
        max_len: history positions, the largest age is ``max_len - 1`` (default 50).
        dropout: dropout inside the blocks and on the inputs (default 0.2).
    """

    def __init__(self, input_dim: int, dim: int = 64, num_layers: int = 2, num_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.max_len, self.num_heads = max_len, num_heads
        self.input = nn.Linear(input_dim, dim)
        self.age_bias = nn.Parameter(torch.zeros(num_heads, max_len))
        self.blocks = nn.ModuleList(CausalBlock(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(dim, input_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def attention_bias(self, valid: torch.Tensor) -> torch.Tensor:
        """``[B, heads, L, L]`` added to the attention scores: the head's bias for the age
        ``j - i`` where position ``j`` may attend to ``i``, ``-inf`` where it may not (a later
        position, or padding). A padded position may attend to itself (a row with nothing to
        attend to would be NaN and spread through the next layer); no real position ever
        attends to a padded one."""
        length = valid.shape[1]
        position = torch.arange(length, device=valid.device)
        age = position.unsqueeze(1) - position.unsqueeze(0)  # [j, i]
        bias = self.age_bias.index_select(1, age.clamp(min=0).flatten()).view(self.num_heads, 1, length, length)
        allowed = (age >= 0).unsqueeze(0) & valid.unsqueeze(1)  # [B, j, i]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=valid.device).unsqueeze(0)
        return bias.masked_fill(~allowed.unsqueeze(0), float("-inf")).transpose(0, 1)

    def sequence(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``[B, L, dim]`` outputs at every position (position ``j`` has read items ``<= j``)."""
        length = items.shape[1]
        if length > self.max_len:
            raise ValueError(f"history of {length} positions, the tower has {self.max_len}")
        x = self.dropout(self.input(items)) * valid.unsqueeze(-1)
        bias = self.attention_bias(valid).to(x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.norm(x)

    def forward(self, items: torch.Tensor, valid: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """``[B, input_dim]`` from ``items`` ``[B, L, input_dim]`` (left-padded, most recent last)
        and ``valid`` ``[B, L]`` (False = padding); an empty history gives zeros. With
        ``all_positions``, ``[B, L, input_dim]``: the answer after each position (zeros at padding).
        Only the columns that hold an item in some row are computed."""
        batch, length = valid.shape
        used = valid.any(0)
        if not bool(used.any()):
            shape = (batch, length, self.output.out_features) if all_positions else (batch, self.output.out_features)
            return items.new_zeros(shape)
        first = int(used.float().argmax())  # left padding: every later column is in use
        items, valid = items[:, first:], valid[:, first:]
        hidden = self.sequence(items, valid)
        if not all_positions:
            return self.output(hidden[:, -1]) * valid[:, -1:].to(items.dtype)
        out = self.output(hidden) * valid.unsqueeze(-1).to(items.dtype)
        return F.pad(out, (0, 0, first, 0))


class CausalBlock(nn.Module):
    """A pre-norm transformer block: multi-head attention with an additive bias (``[B, heads, L, L]``,
    ``-inf`` where attention is not allowed), then a GELU feed-forward layer of twice the width;
    both residual. Written on :func:`torch.nn.functional.scaled_dot_product_attention` rather
    than :class:`torch.nn.TransformerEncoderLayer`, whose inference fast path returns NaN for a
    float mask with ``-inf`` entries."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.attention_dropout = num_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                  dropout_p=self.attention_dropout if self.training else 0.0)
        x = x + self.dropout(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.ffn(self.norm2(x)))
