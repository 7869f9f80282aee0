"""Knowledge-sedimentation modes for the BERT text encoder.

How much of what training learns is "sedimented" into BERT itself is chosen per
run with :class:`TextTuningConfig.mode` and saved next to the model:

========== ============================================================ =====================
mode       what is trained                                              default lr
========== ============================================================ =====================
frozen     nothing in BERT (vectors can be cached on disk)              0 (nothing to train)
full       every BERT weight except the unused pooler head              3e-5
lora       low-rank updates ``B @ A`` (peft LoRA) on query/key/value   5e-4
           and the attention output projection; B starts at 0
ia3        (IA)^3 scaling vectors (peft IA3) on keys, values and the    3e-3
           feed-forward activation; they start at 1
prompt     ``num_virtual_tokens`` soft-prompt vectors (peft prompt      3e-3
           tuning) prepended to the word embeddings
========== ============================================================ =====================

Default learning rates (used when ``TextTuningConfig.lr`` is ``None``):

* ``full`` 3e-5: the middle of the 2e-5..5e-5 range BERT fine-tuning is known to
  be stable in (Devlin et al. 2019; sentence-transformers trains with 2e-5).
  Larger values destroy the pretrained sentence geometry of small models.
* ``lora`` 5e-4: Hu et al. (2021) trained RoBERTa-base LoRA (r=8) at 4e-4..5e-4;
  the update ``B @ A`` starts at zero and is scaled by ``alpha / r``, so it needs
  roughly ten times the full fine-tuning rate to move in the same number of steps.
* ``ia3`` 3e-3: the rate of T-Few (Liu et al. 2022).  The vectors start at 1 and
  Adam moves each entry by about ``lr`` per step, i.e. 0.3% of its value.
* ``prompt`` 3e-3: prompt tuning has very few parameters and is known to need
  large rates (Lester et al. 2021 used 0.3 with Adafactor, whose steps are
  relative to the parameter scale).  With Adam and prompts initialised from
  word embeddings (entry scale ~0.05 for MiniLM), 3e-3 per step moves a prompt by
  a few percent of its norm; 1e-2 is the upper end that still trains stably.

Prompt tuning and pooling
-------------------------
peft prepends the ``V = num_virtual_tokens`` soft prompts *before* ``[CLS]``
(so the text's tokens sit at positions ``V .. V+T-1`` of BERT's absolute
position table -- peft's convention, kept as is).  The hidden states of the
virtual positions are **excluded** from pooling: the vector is the masked mean
(or ``[CLS]``) over the text's own, contextualised tokens, as in every other
mode.  Including them would add ``V`` text-independent-at-the-input positions
to every mean and dilute short titles more than long ones.

Why no ``"prefix"`` mode
------------------------
peft's prefix tuning runs with ``BertModel`` today (the prefix is passed as
``past_key_values``, the output keeps only real tokens, padding stays masked),
but it depends on ``BertModel.forward(past_key_values=...)``, which transformers
5.x deprecates with removal announced for 5.40 (a ``FutureWarning`` on every
call), so a minor upgrade would break saved models; it is left out.

Example
-------
>>> enc = TextEncoder(TextEncoderConfig(model_path=d))          # doctest: +SKIP
>>> tuned = TunedTextEncoder(enc, TextTuningConfig(mode="lora"))  # doctest: +SKIP
>>> vecs = tuned(["cordless drill", "nitrile gloves"])  # [2, dim], grad  # doctest: +SKIP
>>> tuned.save("runs/x/text")                                    # doctest: +SKIP
>>> again = TunedTextEncoder.load("runs/x/text", enc)             # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from kgrec.encoders.text import EmbeddingCache, TextEncoder, _check_texts, encode_unique

if TYPE_CHECKING:  # imported lazily at run time (heavy)
    from peft import PeftConfig, PeftModel
    from transformers import PreTrainedModel

__all__ = ["TUNING_MODES", "TextTuningConfig", "TunedTextEncoder"]

#: Supported modes (see the module docstring).
TUNING_MODES = ("frozen", "full", "lora", "ia3", "prompt")
_PEFT_MODES = ("lora", "ia3", "prompt")
_DEFAULT_LR = {"frozen": 0.0, "full": 3e-5, "lora": 5e-4, "ia3": 3e-3, "prompt": 3e-3}
#: LoRA on the attention projections (suffix match: "attention.output.dense"
#: is the attention output projection, not the feed-forward "output.dense").
_LORA_TARGETS = ("query", "key", "value", "attention.output.dense")
_FORMAT = "kgrec-tuned-text-v1"
_CONFIG_FILE = "tuning.json"
_WEIGHTS_FILE = "tuned.safetensors"


# --------------------------------------------------------------------------- config


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _module_tuple(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"TextTuningConfig.{name} must be a tuple of module-name strings or None, got {value!r}")
    out = tuple(value)
    if not out:
        raise ValueError(f"TextTuningConfig.{name} must not be empty (use None for the per-mode default)")
    for i, v in enumerate(out):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"TextTuningConfig.{name}[{i}] must be a non-empty string, got {v!r}")
    return out


@dataclass
class TextTuningConfig:
    """How the BERT text encoder is trained (see the module docstring for the modes).

    Attributes:
        mode: one of :data:`TUNING_MODES`.  Default ``"frozen"``.
        lora_r: LoRA rank.  Default 8.
        lora_alpha: LoRA scaling numerator (update scaled by ``alpha / r``).  Default 16.
        lora_dropout: dropout on the LoRA branch input, in ``[0, 1)``.  Default 0.05.
        target_modules: module-name suffixes that get adapters (``lora``/``ia3`` only).
            ``None`` (default) = per-mode defaults: LoRA on ``query``, ``key``, ``value``
            and ``attention.output.dense``; IA3 on ``key``, ``value`` and each layer's
            feed-forward down projection ``layer.<i>.output.dense``, the latter as a
            feed-forward module (its *input*, the activation ``gelu(W1 x)``, is scaled,
            which is the ``l_ff`` vector of the IA3 paper).
        feedforward_modules: IA3 only: the subset of ``target_modules`` whose input
            (instead of output) is scaled.  ``None`` = the default down projections
            when ``target_modules`` is ``None``, else none.
        num_virtual_tokens: soft-prompt length (``prompt`` only).  Default 8.
        lr: learning rate for the encoder's trainable weights; ``None`` (default) =
            :meth:`default_lr`.
        seed: seed of the adapter / prompt initialisation (LoRA ``A``, prompt vectors
            sampled from word embeddings).  Default 0.

    Raises:
        ValueError: on any invalid field, naming it.
    """

    mode: str = "frozen"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    feedforward_modules: tuple[str, ...] | None = None
    num_virtual_tokens: int = 8
    lr: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in TUNING_MODES:
            raise ValueError(f"TextTuningConfig.mode must be one of {TUNING_MODES}, got {self.mode!r}")
        if not _is_int(self.lora_r) or self.lora_r < 1:
            raise ValueError(f"TextTuningConfig.lora_r must be an int >= 1, got {self.lora_r!r}")
        if not _is_number(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"TextTuningConfig.lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not _is_number(self.lora_dropout) or not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"TextTuningConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        self.target_modules = _module_tuple("target_modules", self.target_modules)
        self.feedforward_modules = _module_tuple("feedforward_modules", self.feedforward_modules)
        if self.target_modules is not None and self.mode not in ("lora", "ia3"):
            raise ValueError(
                f"TextTuningConfig.target_modules only applies to modes 'lora' and 'ia3', "
                f"got it with mode={self.mode!r}"
            )
        if self.feedforward_modules is not None:
            if self.mode != "ia3":
                raise ValueError(
                    f"TextTuningConfig.feedforward_modules only applies to mode 'ia3', got mode={self.mode!r}"
                )
            if self.target_modules is None:
                raise ValueError("TextTuningConfig.feedforward_modules needs explicit target_modules")
            extra = [m for m in self.feedforward_modules if m not in self.target_modules]
            if extra:
                raise ValueError(
                    f"TextTuningConfig.feedforward_modules {extra} are not in target_modules "
                    f"{list(self.target_modules)}"
                )
        if not _is_int(self.num_virtual_tokens) or self.num_virtual_tokens < 1:
            raise ValueError(
                f"TextTuningConfig.num_virtual_tokens must be an int >= 1, got {self.num_virtual_tokens!r}"
            )
        if self.lr is not None and (not _is_number(self.lr) or self.lr <= 0):
            raise ValueError(f"TextTuningConfig.lr must be a finite number > 0 or None, got {self.lr!r}")
        if not _is_int(self.seed):
            raise ValueError(f"TextTuningConfig.seed must be an int, got {self.seed!r}")

    def default_lr(self) -> float:
        """The per-mode default learning rate (0.0 for ``frozen``; see the module docstring)."""
        return _DEFAULT_LR[self.mode]

    def learning_rate(self) -> float:
        """``lr`` if set, else :meth:`default_lr`."""
        return float(self.lr) if self.lr is not None else self.default_lr()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        for k in ("target_modules", "feedforward_modules"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextTuningConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"TextTuningConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TextTuningConfig.from_dict: unknown keys {unknown} (known: {sorted(known)})")
        kw = dict(data)
        for k in ("target_modules", "feedforward_modules"):
            if isinstance(kw.get(k), list):
                kw[k] = tuple(kw[k])
        return cls(**kw)


# --------------------------------------------------------------------------- helpers


def read_saved_meta(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON sidecar of a saved model at ``path``, checked to be a dict of format ``fmt``
    (errors name the file and ``what`` should have been saved there)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a saved {what} directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: format is {found!r}, expected {fmt!r}")
    return meta


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def _peft_config(config: TextTuningConfig, bert: PreTrainedModel) -> PeftConfig:
    """The peft config of a ``lora``/``ia3``/``prompt`` mode for a bare BERT feature extractor."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    task = TaskType.FEATURE_EXTRACTION  # PeftModelForFeatureExtraction: returns last_hidden_state
    if config.mode == "lora":
        return LoraConfig(
            task_type=task,
            r=config.lora_r,
            # peft annotates lora_alpha as int but only divides by it: a float alpha is honoured
            lora_alpha=config.lora_alpha,  # type: ignore[arg-type]
            lora_dropout=float(config.lora_dropout),
            target_modules=list(config.target_modules or _LORA_TARGETS),
            bias="none",
        )
    if config.mode == "ia3":
        if config.target_modules is None:
            n = int(bert.config.num_hidden_layers)
            ffn = [f"layer.{i}.output.dense" for i in range(n)]
            targets, feedforward = ["key", "value", *ffn], ffn
        else:
            targets, feedforward = list(config.target_modules), list(config.feedforward_modules or ())
        return IA3Config(task_type=task, target_modules=targets, feedforward_modules=feedforward)
    return PromptTuningConfig(
        task_type=task,
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,  # start at the scale of real word embeddings
    )


# --------------------------------------------------------------------------- encoder


class TunedTextEncoder(torch.nn.Module):
    """A :class:`~kgrec.encoders.text.TextEncoder`'s BERT prepared for one tuning mode.

    Args:
        encoder: the base encoder; its tokenizer, ``max_length``, ``pooling``,
            ``normalize``, ``batch_size`` and ``fingerprint`` are used.
        config: the :class:`TextTuningConfig`.
        copy_model: work on a deep copy of ``encoder.model`` (default ``True``), so the
            base encoder keeps producing the frozen vectors.  ``False`` modifies
            ``encoder.model`` in place (peft injects its layers into it) and saves the
            memory of a second BERT; such a model cannot be wrapped again.

    Attributes:
        config: the tuning config.
        tokenizer: the base encoder's tokenizer.
        text_config: the base encoder's :class:`~kgrec.encoders.text.TextEncoderConfig`.
        base_fingerprint: ``encoder.fingerprint``.
        model: the BERT (``frozen``/``full``) or the peft model wrapping it.

    The module owns only :attr:`model`; moving it (``.to(device)``) does not move
    the base encoder.  In ``frozen`` mode BERT stays in eval mode (no dropout) even
    when this module is put in train mode, and :meth:`forward` runs without grad.
    """

    def __init__(self, encoder: TextEncoder, config: TextTuningConfig | None = None, copy_model: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, TextEncoder):
            raise TypeError(f"encoder must be a TextEncoder, got {type(encoder).__name__}")
        config = config if config is not None else TextTuningConfig()
        if not isinstance(config, TextTuningConfig):
            raise TypeError(f"config must be a TextTuningConfig, got {type(config).__name__}")
        bert = encoder.model
        if hasattr(bert, "peft_config") or any(type(m).__module__.startswith("peft.") for m in bert.modules()):
            raise ValueError(
                "encoder.model already holds peft layers (it was wrapped with copy_model=False); "
                "load a fresh TextEncoder"
            )
        self.config = config
        self.tokenizer = encoder.tokenizer
        self.text_config = encoder.config
        self.base_fingerprint = encoder.fingerprint
        self._max_positions = int(getattr(bert.config, "max_position_embeddings", 10**9))
        if config.mode == "prompt" and self.text_config.max_length + config.num_virtual_tokens > self._max_positions:
            raise ValueError(
                f"prompt tuning: max_length {self.text_config.max_length} + num_virtual_tokens "
                f"{config.num_virtual_tokens} exceeds the model's max_position_embeddings {self._max_positions}"
            )
        if copy_model:
            bert = copy.deepcopy(bert)

        if config.mode in _PEFT_MODES:
            from peft import get_peft_model

            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # peft calls a transformers method deprecated in 5.x; nothing for us to act on
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                torch.manual_seed(config.seed)
                model = get_peft_model(bert, _peft_config(config, bert))
        else:
            model = bert
            for name, p in model.named_parameters():
                # the pooler head is never used by mean/[CLS] pooling of last_hidden_state
                p.requires_grad_(config.mode == "full" and not name.startswith("pooler."))
        self.model: PeftModel | PreTrainedModel = model
        self._fp_memo: tuple[tuple, str] | None = None
        self.train()

    # ------------------------------------------------------------------ properties

    @property
    def mode(self) -> str:
        """The tuning mode."""
        return self.config.mode

    @property
    def trainable(self) -> bool:
        """Whether training changes the encoder (every mode but ``frozen``)."""
        return self.config.mode != "frozen"

    @property
    def dim(self) -> int:
        """Output vector size (BERT ``hidden_size``)."""
        return int(self.bert.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bert(self) -> PreTrainedModel:
        """The underlying (possibly peft-modified) ``BertModel``."""
        from transformers import PreTrainedModel

        if isinstance(self.model, PreTrainedModel):  # frozen / full: the BERT itself
            return self.model
        base = self.model.get_base_model()  # peft modes: the BERT the PeftModel wraps
        assert isinstance(base, PreTrainedModel)
        return base

    @property
    def num_virtual_tokens(self) -> int:
        """Positions prepended to every sequence (``num_virtual_tokens`` for ``prompt``, else 0)."""
        return self.config.num_virtual_tokens if self.config.mode == "prompt" else 0

    @property
    def fingerprint(self) -> str:
        """Cache key of what :meth:`encode` produces.

        ``frozen``: the base encoder's fingerprint (the vectors are the same, so a
        cache is shared with :meth:`TextEncoder.encode`).  Other modes:
        ``"<base>-<mode>-<16 hex>"``, the hex a sha256 over the config and the bytes
        of :meth:`tuned_state_dict`; it changes after every optimiser step.  Memoised
        on the tensors' in-place version counters.
        """
        if not self.trainable:
            return self.base_fingerprint
        state = self.tuned_state_dict()
        key = tuple((k, v.data_ptr(), v._version) for k, v in state.items())
        if self._fp_memo is not None and self._fp_memo[0] == key:
            return self._fp_memo[1]
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for k, v in sorted(state.items()):
            h.update(f"\0{k}\0{v.dtype}\0{tuple(v.shape)}\0".encode())
            h.update(_tensor_bytes(v))
        fp = f"{self.base_fingerprint}-{self.mode}-{h.hexdigest()[:16]}"
        self._fp_memo = (key, fp)
        return fp

    def train(self, mode: bool = True) -> TunedTextEncoder:
        super().train(mode)
        if self.config.mode == "frozen":
            self.model.eval()
        return self

    # ------------------------------------------------------------------ forward

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise like :meth:`TextEncoder.tokenize` (padded, truncated to ``max_length``); CPU tensors."""
        batch = _check_texts(texts)
        enc = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.text_config.max_length, return_tensors="pt"
        )
        return dict(enc.items())

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states of the real tokens (virtual prompt positions removed).

        Args:
            input_ids: LongTensor ``[B, T]`` on :attr:`device`.
            attention_mask: ``[B, T]``, 1 for real tokens, 0 for padding.
            token_type_ids: optional ``[B, T]`` segment ids (pairs); ``None`` = all 0.

        Returns:
            ``[B, T, dim]`` (model or autocast dtype); with grad unless ``frozen``.
        """
        if self.config.mode == "frozen":
            with torch.no_grad():
                return self._hidden(input_ids, attention_mask, token_type_ids)
        return self._hidden(input_ids, attention_mask, token_type_ids)

    def _hidden(self, input_ids, attention_mask, token_type_ids):
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if self.config.mode != "prompt":
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        # Prompt tuning, written out so that token_type_ids survive (peft's own forward
        # drops them); identical to PeftModelForFeatureExtraction.forward otherwise.
        v = self.config.num_virtual_tokens
        b, t = input_ids.shape
        if t + v > self._max_positions:
            raise ValueError(
                f"prompt tuning: {t} tokens + {v} virtual tokens exceed max_position_embeddings {self._max_positions}"
            )
        embeds = self.model.word_embeddings(input_ids)
        prompts = self.model.get_prompt(batch_size=b).to(embeds.dtype)
        mask = torch.cat([attention_mask.new_ones(b, v), attention_mask], dim=1)
        if token_type_ids is not None:
            kw["token_type_ids"] = torch.cat([token_type_ids.new_zeros(b, v), token_type_ids], dim=1)
        out = self.model.base_model(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=mask, **kw)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden[:, v:]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, T, H]`` to float32 ``[B, H]`` as the base encoder does (mean over
        real tokens or ``[CLS]``, then L2 if ``normalize``)."""
        hidden = hidden.float()
        if self.text_config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.text_config.normalize:
            pooled = F.normalize(pooled, p=2.0, dim=-1)
        return pooled

    def embed_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Pooled vectors ``[B, dim]`` (float32) of an already tokenised batch (moved to :attr:`device`)."""
        device = self.device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        tt = batch.get("token_type_ids")
        hidden = self.hidden_states(ids, mask, None if tt is None else tt.to(device))
        return self.pool(hidden, mask)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable pooled embeddings of ``texts``.

        Args:
            texts: B strings.

        Returns:
            FloatTensor ``[B, dim]`` (float32, on :attr:`device`), with grad for trainable
            modes (dropout active in train mode), without grad for ``frozen``.
        """
        return self.embed_batch(self.tokenize(texts))

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        progress: bool = False,
        cache: EmbeddingCache | None = None,
    ) -> torch.Tensor:
        """No-grad, eval-mode encoding, de-duplicated and longest-first like :meth:`TextEncoder.encode`.

        Args:
            texts: N strings.
            batch_size: texts per forward pass; ``None`` = the base encoder's ``batch_size``.
            progress: tqdm bar over batches.
            cache: ``frozen`` mode only: an :class:`~kgrec.encoders.text.EmbeddingCache`
                (shared with the base encoder, same fingerprint).  Trainable modes
                refuse one: their vectors change with every step.

        Returns:
            FloatTensor ``[N, dim]``, float32, CPU.  The train/eval mode is restored.
        """
        items = _check_texts(texts)
        if cache is not None and self.trainable:
            raise ValueError(
                f"encode(cache=...) is only supported in mode 'frozen' (mode is {self.mode!r}: "
                "its vectors change with every training step)"
            )
        bs = self.text_config.batch_size if batch_size is None else batch_size
        if not _is_int(bs) or bs < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return encode_unique(self, items, lambda batch: self(batch), self.dim, self.fingerprint, bs,
                             cache=cache, progress=progress, desc=f"encoding texts ({self.mode})")

    # ------------------------------------------------------------------ parameters / state

    def parameter_counts(self) -> dict[str, int]:
        """``{"trainable": ..., "total": ...}`` parameter counts (total includes adapters)."""
        params = list(self.model.parameters())
        return {
            "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
            "total": int(sum(p.numel() for p in params)),
        }

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an optimiser should update (empty for ``frozen``)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def tuned_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes, by parameter name (detached, sharing storage).

        ``frozen``: empty; ``full``: every BERT weight but the pooler
        (``embeddings.word_embeddings.weight``, ...); ``lora``/``ia3``/``prompt``: the
        adapter weights (``base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight``,
        ``prompt_encoder.default.embedding.weight``, ...).
        """
        return {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}

    def load_tuned_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` (as from :meth:`tuned_state_dict`) into the model.

        Raises:
            KeyError: a key is missing or unexpected (all of them are named).
            ValueError: a tensor has the wrong shape.
        """
        own = dict(self.model.named_parameters())
        expected = {k for k, p in own.items() if p.requires_grad}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"tuned state does not match mode {self.mode!r}: missing keys {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected keys {unexpected[:8]}"
                f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
            )
        for k in expected:
            if tuple(state[k].shape) != tuple(own[k].shape):
                raise ValueError(f"tuned state {k!r} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        with torch.no_grad():
            for k in expected:
                own[k].copy_(state[k].to(own[k].device, own[k].dtype))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tuning.json`` (format, mode, config, base and tuned fingerprints, dim,
        parameter counts) and ``tuned.safetensors`` (:meth:`tuned_state_dict`) to ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.tuned_state_dict().items()}
        save_file(state, str(d / _WEIGHTS_FILE), metadata={"format": _FORMAT, "mode": self.mode})
        meta = {
            "format": _FORMAT,
            "mode": self.mode,
            "config": self.config.to_dict(),
            "base_fingerprint": self.base_fingerprint,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "parameter_counts": self.parameter_counts(),
        }
        (d / _CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return d

    @staticmethod
    def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
        """The parsed ``tuning.json`` of a saved encoder (format checked)."""
        path = Path(directory) / _CONFIG_FILE
        meta = read_saved_meta(path, _FORMAT, "TunedTextEncoder")
        for key in ("config", "base_fingerprint"):
            if key not in meta:
                raise ValueError(f"{path}: field {key!r} is missing")
        return meta

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder: TextEncoder, copy_model: bool = True) -> TunedTextEncoder:
        """Rebuild a saved encoder on top of ``encoder`` (the same base model).

        Raises:
            FileNotFoundError: ``tuning.json`` or ``tuned.safetensors`` is missing.
            ValueError: ``encoder.fingerprint`` differs from the saved base fingerprint
                (both are named), or the loaded weights do not reproduce the saved
                fingerprint.
        """
        from safetensors.torch import load_file

        d = Path(directory)
        meta = cls.read_meta(d)
        if meta["base_fingerprint"] != encoder.fingerprint:
            raise ValueError(
                f"{d / _CONFIG_FILE} was trained on base encoder {meta['base_fingerprint']}, "
                f"but the given encoder has fingerprint {encoder.fingerprint} ({encoder.model_path}, "
                f"max_length={encoder.config.max_length}, pooling={encoder.config.pooling!r})"
            )
        weights = d / _WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found")
        tuned = cls(encoder, TextTuningConfig.from_dict(meta["config"]), copy_model=copy_model)
        tuned.load_tuned_state(load_file(str(weights)))
        saved_fp = meta.get("fingerprint")
        if saved_fp is not None and saved_fp != tuned.fingerprint:
            raise ValueError(
                f"{weights}: loaded weights give fingerprint {tuned.fingerprint}, tuning.json says {saved_fp}"
            )
        return tuned
