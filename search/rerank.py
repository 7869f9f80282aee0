"""Optional second search stage: a BERT cross-encoder over the top candidates.

The first stage (the fused bi-encoder scorer) ranks the whole catalogue and keeps
its top ``K`` product indices per query; :class:`CrossEncoderReranker` reads each
``(query, product text)`` pair *jointly* (``[CLS] query [SEP] text [SEP]``, so
every query token attends to every title token) and re-scores those ``K``:

>>> first = scorer_topk                     # LongTensor [Q, K], -1 = padding   # doctest: +SKIP
>>> rr = CrossEncoderReranker(TextEncoder(), CrossEncoderConfig())              # doctest: +SKIP
>>> rr.fit(queries, texts, grades, query_groups)                                 # doctest: +SKIP
>>> order, scores = rr.rerank(queries, first, product_texts)                    # doctest: +SKIP

Architecture: the BERT of a :class:`~kgrec.encoders.tuning.TunedTextEncoder` (any
tuning mode; default ``full``), pooled over the pair (masked mean over the pair's
real tokens by default, or ``[CLS]``) -> ``Linear(dim, 1)`` -> one score.

Loss: **listwise softmax cross-entropy** within each query group, against the
target distribution ``p_i ∝ 2^grade_i - 1``.  Chosen over a pairwise RankNet
loss because (a) its gains are exactly those of the exponential-gain NDCG the
search evaluation reports, and the softmax cross-entropy is a bound on
(1 - NDCG) (Bruch et al., 2019), (b) a group of ``K`` candidates costs one
``K``-way softmax instead of ``O(K^2)`` pairs, and (c) it needs no sampling of
pairs or weighting by delta-NDCG.  Groups whose gains are all 0 (no relevant
candidate) carry no signal and are skipped; so are single-candidate groups
(a 1-way softmax has zero loss and gradient).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from kgrec.encoders.text import TextEncoder, _check_texts
from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder, read_saved_meta

__all__ = ["CrossEncoderConfig", "CrossEncoderReranker"]

_FORMAT = "kgrec-cross-encoder-v1"
_CONFIG_FILE = "rerank.json"
_HEAD_FILE = "head.safetensors"
_POOLINGS = ("mean", "cls")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x)) and x > 0


@dataclass
class CrossEncoderConfig:
    """Configuration of :class:`CrossEncoderReranker`.

    Attributes:
        max_length: tokens per ``(query, text)`` pair, special tokens included; the
            longer side is truncated first (usually the product text).  Default 96.
        epochs: passes over the training pairs in :meth:`CrossEncoderReranker.fit`.  Default 1.
        batch_size: pairs per step (whole query groups are packed up to this size; a
            group larger than it forms a batch of its own).  Also the scoring batch.  Default 32.
        lr: learning rate of the BERT weights being tuned.  Default 3e-5 (full fine-tuning);
            use ``tuning.default_lr()`` for the adapter modes.
        head_lr: learning rate of the new linear head.  Default 1e-3 (it starts from
            random, so the BERT rate would leave it nearly fixed for a short run).
        weight_decay: AdamW weight decay (not applied to biases / LayerNorm).  Default 0.01.
        warmup_ratio: fraction of steps with a linear warm-up, then linear decay to 0.  Default 0.1.
        max_grad_norm: gradient clipping norm.  Default 1.0.
        pooling: ``"mean"`` (masked mean over the pair's real tokens; how
            all-MiniLM-L6-v2 was trained) or ``"cls"``.  Default ``"mean"``.
        tuning: how BERT is trained (:class:`~kgrec.encoders.tuning.TextTuningConfig`,
            default mode ``"full"``).
        bf16: on CUDA, run forward passes under ``torch.autocast(dtype=bfloat16)``.  Default True.
        seed: seeds the head, the adapters, dropout and the batch order.  Default 0.
    """

    max_length: int = 96
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    pooling: str = "mean"
    tuning: TextTuningConfig = field(default_factory=lambda: TextTuningConfig(mode="full"))
    bf16: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tuning, Mapping):
            self.tuning = TextTuningConfig.from_dict(self.tuning)
        if not isinstance(self.tuning, TextTuningConfig):
            raise ValueError(f"CrossEncoderConfig.tuning must be a TextTuningConfig, got {type(self.tuning).__name__}")
        for name in ("max_length", "epochs", "batch_size"):
            v = getattr(self, name)
            low = 3 if name == "max_length" else 1
            if not _is_int(v) or v < low:
                raise ValueError(f"CrossEncoderConfig.{name} must be an int >= {low}, got {v!r}")
        for name in ("lr", "head_lr", "max_grad_norm"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"CrossEncoderConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"CrossEncoderConfig.weight_decay must be a finite number >= 0, got {wd!r}")
        wr = self.warmup_ratio
        if isinstance(wr, bool) or not isinstance(wr, (int, float)) or not 0.0 <= wr < 1.0:
            raise ValueError(f"CrossEncoderConfig.warmup_ratio must be in [0, 1), got {wr!r}")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"CrossEncoderConfig.pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"CrossEncoderConfig.bf16 must be a bool, got {self.bf16!r}")
        if not _is_int(self.seed):
            raise ValueError(f"CrossEncoderConfig.seed must be an int, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``tuning`` nested as its own dict)."""
        d = asdict(self)
        d["tuning"] = self.tuning.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossEncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"CrossEncoderConfig.from_dict: unknown keys {unknown} (known: {sorted(known)})")
        return cls(**dict(data))


class CrossEncoderReranker(torch.nn.Module):
    """BERT cross-encoder: ``score(query, text) = w · pool(BERT([CLS] q [SEP] t [SEP])) + b``.

    Args:
        encoder: the base :class:`~kgrec.encoders.text.TextEncoder` (tokenizer and weights;
            its BERT is copied, the encoder itself is left untouched).
        config: :class:`CrossEncoderConfig` (default one if ``None``).

    Attributes:
        body: the :class:`~kgrec.encoders.tuning.TunedTextEncoder` (``config.tuning``).
        head: ``Linear(dim, 1)``.
    """

    def __init__(self, encoder: TextEncoder, config: CrossEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else CrossEncoderConfig()
        if not isinstance(self.config, CrossEncoderConfig):
            raise TypeError(f"config must be a CrossEncoderConfig, got {type(self.config).__name__}")
        self.body = TunedTextEncoder(encoder, self.config.tuning)
        max_pos = int(getattr(self.body.bert.config, "max_position_embeddings", 10**9))
        if self.config.max_length + self.body.num_virtual_tokens > max_pos:
            raise ValueError(
                f"CrossEncoderConfig.max_length {self.config.max_length} (+ {self.body.num_virtual_tokens} virtual "
                f"tokens) exceeds the model's max_position_embeddings {max_pos}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.head = torch.nn.Linear(self.body.dim, 1)
            torch.nn.init.normal_(self.head.weight, std=0.02)  # BERT's initializer_range
            torch.nn.init.zeros_(self.head.bias)
        self.head.to(self.body.device)

    @property
    def device(self) -> torch.device:
        return self.body.device

    # ------------------------------------------------------------------ forward

    def tokenize_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise pairs (``[CLS] q [SEP] t [SEP]``, padded, longest side truncated first); CPU tensors ``[N, T]``."""
        q, t = _check_texts(queries), _check_texts(texts)
        if len(q) != len(t):
            raise ValueError(f"queries and texts must have the same length, got {len(q)} and {len(t)}")
        enc = self.body.tokenizer(
            q, t, padding=True, truncation="longest_first", max_length=self.config.max_length, return_tensors="pt"
        )
        return dict(enc.items())

    def forward(self, queries: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """Differentiable scores of ``N`` pairs: FloatTensor ``[N]`` (float32, on :attr:`device`)."""
        batch = self.tokenize_pairs(queries, texts)
        device = self.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        tt = batch.get("token_type_ids")
        hidden = self.body.hidden_states(ids, mask, None if tt is None else tt.to(device))
        if self.config.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            m = mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()

    def _autocast(self):
        if self.config.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def score(self, queries: Sequence[str], texts: Sequence[str], progress: bool = False) -> torch.Tensor:
        """Scores of ``N`` ``(queries[i], texts[i])`` pairs, batched, no grad, eval mode (restored after).

        Returns:
            FloatTensor ``[N]``, float32, CPU.
        """
        q, t = _check_texts(queries), _check_texts(texts)
        if len(q) != len(t):
            raise ValueError(f"queries and texts must have the same length, got {len(q)} and {len(t)}")
        out = torch.zeros(len(q), dtype=torch.float32)
        if not q:
            return out
        from tqdm.auto import tqdm

        bs = self.config.batch_size
        # longest pairs first: less padding per batch
        order = sorted(range(len(q)), key=lambda i: -(len(q[i]) + len(t[i])))
        was_training = self.training
        self.eval()
        try:
            for start in tqdm(range(0, len(order), bs), disable=not progress, desc="cross-encoder", unit="batch"):
                idx = order[start : start + bs]
                with self._autocast():
                    s = self([q[i] for i in idx], [t[i] for i in idx])
                out[idx] = s.float().cpu()
        finally:
            self.train(was_training)
        return out

    def rerank_scores(
        self, queries: Sequence[str], candidates: torch.Tensor, product_texts: Sequence[str], progress: bool = False
    ) -> torch.Tensor:
        """Cross-encoder scores of each query's candidate products.

        Args:
            queries: Q query strings.
            candidates: LongTensor ``[Q, K]`` of indices into ``product_texts``; ``-1`` pads.
            product_texts: the text of every product (index = product index).

        Returns:
            FloatTensor ``[Q, K]`` (CPU, float32): scores, ``-inf`` at padding.

        Raises:
            ValueError: shape mismatch, or an index outside ``[-1, len(product_texts))``
                (the first bad row/column is named).
        """
        q = _check_texts(queries)
        texts = _check_texts(product_texts)
        cand = torch.as_tensor(candidates)
        if cand.ndim != 2 or cand.shape[0] != len(q):
            raise ValueError(f"candidates must have shape [{len(q)}, K], got {tuple(cand.shape)}")
        if cand.dtype.is_floating_point or cand.dtype == torch.bool:
            raise ValueError(f"candidates must be an integer tensor, got {cand.dtype}")
        cand = cand.long().cpu()
        bad = (cand < -1) | (cand >= len(texts))
        if bool(bad.any()):
            r, c = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"candidates[{r}, {c}] = {int(cand[r, c])} is not a product index in [0, {len(texts)}) nor -1 (padding)"
            )
        out = torch.full(cand.shape, float("-inf"), dtype=torch.float32)
        valid = cand >= 0
        rows, cols = valid.nonzero(as_tuple=True)
        if rows.numel():
            s = self.score([q[int(r)] for r in rows], [texts[int(cand[r, c])] for r, c in zip(rows, cols)], progress)
            out[rows, cols] = s
        return out

    def rerank(
        self, queries: Sequence[str], candidates: torch.Tensor, product_texts: Sequence[str], progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-order each query's candidates by cross-encoder score.

        Returns:
            ``(order, scores)``, both ``[Q, K]``: the candidate indices sorted by
            descending score (padding ``-1`` last; ties keep the first-stage order)
            and their scores (``-inf`` at padding).
        """
        scores = self.rerank_scores(queries, candidates, product_texts, progress)
        sorted_scores, pos = torch.sort(scores, dim=1, descending=True, stable=True)
        return torch.as_tensor(candidates).long().cpu().gather(1, pos), sorted_scores

    # ------------------------------------------------------------------ training

    def fit(
        self,
        queries: Sequence[str],
        texts: Sequence[str],
        grades: torch.Tensor,
        query_groups: torch.Tensor,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Train on graded pairs with the listwise softmax loss (module docstring).

        Args:
            queries: N query strings (one per pair; pairs of a group share the query).
            texts: N product texts.
            grades: FloatTensor ``[N]`` graded relevance (>= 0; gain ``2^g - 1``).
            query_groups: LongTensor ``[N]``, the group (query) id of each pair.
            progress: tqdm bar per epoch with the running loss.

        Returns:
            ``{"loss": [mean loss per epoch], "steps": int, "groups": int (used),
            "skipped_groups": int, "seconds": float}``.  The module is left in eval mode.
        """
        q, t = _check_texts(queries), _check_texts(texts)
        n = len(q)
        grades = torch.as_tensor(grades, dtype=torch.float32).cpu()
        groups = torch.as_tensor(query_groups).cpu()
        if len(t) != n or grades.shape != (n,) or groups.shape != (n,):
            raise ValueError(
                f"fit: queries ({n}), texts ({len(t)}), grades {tuple(grades.shape)} and query_groups "
                f"{tuple(groups.shape)} must all have length N={n}"
            )
        if groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise ValueError(f"fit: query_groups must be an integer tensor, got {groups.dtype}")
        if not bool(torch.isfinite(grades).all()) or bool((grades < 0).any()):
            i = int((~torch.isfinite(grades) | (grades < 0)).nonzero()[0])
            raise ValueError(f"fit: grades[{i}] = {float(grades[i])} is not a finite number >= 0")
        gains = torch.pow(2.0, grades) - 1.0
        members: dict[int, list[int]] = {}
        for i, g in enumerate(groups.tolist()):
            members.setdefault(int(g), []).append(i)
        used = [m for m in members.values() if len(m) >= 2 and float(gains[m].sum()) > 0]
        skipped = len(members) - len(used)
        history: dict[str, Any] = {
            "loss": [], "steps": 0, "groups": len(used), "skipped_groups": skipped, "seconds": 0.0
        }
        if not used:
            return history

        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.body.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else decay).append(p)
        param_groups: list[dict[str, Any]] = [  # torch.optim's param-group dicts
            {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
            {"params": [self.head.weight], "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
            {"params": [self.head.bias], "lr": cfg.head_lr, "weight_decay": 0.0},
        ]
        optim = torch.optim.AdamW([g for g in param_groups if g["params"]])
        batches_per_epoch = len(self._pack(used, torch.arange(len(used)).tolist()))
        total = max(1, batches_per_epoch * cfg.epochs)
        warm = int(cfg.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(optim, factor)
        device = self.device
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        from tqdm.auto import tqdm

        start = time.perf_counter()
        self.train()
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(cfg.seed)
            for epoch in range(cfg.epochs):
                perm = torch.randperm(len(used), generator=gen).tolist()
                batches = self._pack(used, perm)
                total_loss = 0.0
                bar = tqdm(batches, disable=not progress, desc=f"rerank epoch {epoch + 1}", unit="batch")
                for b, batch in enumerate(bar):
                    idx = [i for grp in batch for i in grp]
                    with self._autocast():
                        s = self([q[i] for i in idx], [t[i] for i in idx])
                    loss = self._listwise_loss(s.float(), batch, gains.to(device))
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], cfg.max_grad_norm)
                    optim.step()
                    sched.step()
                    history["steps"] += 1
                    total_loss += float(loss.detach())
                    bar.set_postfix(loss=f"{total_loss / (b + 1):.4f}")
                history["loss"].append(total_loss / max(1, len(batches)))
        self.eval()
        history["seconds"] = time.perf_counter() - start
        return history

    def _pack(self, groups: list[list[int]], order: list[int]) -> list[list[list[int]]]:
        """Pack whole groups (in ``order``) into batches of at most ``batch_size`` pairs."""
        batches: list[list[list[int]]] = []
        cur: list[list[int]] = []
        size = 0
        for g in order:
            grp = groups[g]
            if cur and size + len(grp) > self.config.batch_size:
                batches.append(cur)
                cur, size = [], 0
            cur.append(grp)
            size += len(grp)
        if cur:
            batches.append(cur)
        return batches

    @staticmethod
    def _listwise_loss(scores: torch.Tensor, batch: list[list[int]], gains: torch.Tensor) -> torch.Tensor:
        """Mean over groups of ``-sum_i p_i log softmax(s)_i`` with ``p ∝ gains`` (scores in batch order)."""
        k = max(len(g) for g in batch)
        s = scores.new_full((len(batch), k), float("-inf"))
        p = scores.new_zeros((len(batch), k))
        pos = 0
        for r, grp in enumerate(batch):
            s[r, : len(grp)] = scores[pos : pos + len(grp)]
            gain = gains[grp]
            p[r, : len(grp)] = gain / gain.sum()
            pos += len(grp)
        logp = torch.log_softmax(s, dim=1).masked_fill(p == 0, 0.0)  # avoid 0 * -inf at padding
        return -(p * logp).sum(1).mean()

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``rerank.json`` (config), ``head.safetensors`` and the body's
        ``tuning.json`` + ``tuned.safetensors`` to ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        self.body.save(d)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
            str(d / _HEAD_FILE),
            metadata={"format": _FORMAT},
        )
        meta = {"format": _FORMAT, "config": self.config.to_dict(), "base_fingerprint": self.body.base_fingerprint}
        (d / _CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder: TextEncoder) -> CrossEncoderReranker:
        """Rebuild a saved reranker on ``encoder`` (same base model; fingerprint checked)."""
        from safetensors.torch import load_file

        d = Path(directory)
        path = d / _CONFIG_FILE
        meta = read_saved_meta(path, _FORMAT, "CrossEncoderReranker")
        if meta.get("base_fingerprint") != encoder.fingerprint:
            raise ValueError(
                f"{path} was trained on base encoder {meta.get('base_fingerprint')}, "
                f"but the given encoder has fingerprint {encoder.fingerprint} ({encoder.model_path})"
            )
        model = cls(encoder, CrossEncoderConfig.from_dict(meta["config"]))
        body_meta = TunedTextEncoder.read_meta(d)
        weights = d / "tuned.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found")
        model.body.load_tuned_state(load_file(str(weights)))
        if body_meta.get("fingerprint") not in (None, model.body.fingerprint):
            raise ValueError(
                f"{weights}: loaded weights give fingerprint {model.body.fingerprint}, "
                f"tuning.json says {body_meta['fingerprint']}"
            )
        head_path = d / _HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path} not found")
        head = load_file(str(head_path))
        if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != tuple(model.head.weight.shape):
            got = {k: tuple(v.shape) for k, v in head.items()}
            raise ValueError(f"{head_path}: expected 'weight' {tuple(model.head.weight.shape)} and 'bias' (1,), got {got}")
        model.head.load_state_dict(head)
        model.eval()
        return model
