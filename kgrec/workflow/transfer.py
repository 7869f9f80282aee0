"""Knowledge that travels: start a model on a new catalogue from another catalogue's artifact.

``kgrec train --init-from ARTIFACT`` builds the new store's model with the artifact's typed config
(so the shapes line up) and copies, by parameter name and shape
(:func:`kgrec.serving.update.warm_start` with ``match_ids=False``):

* what reads text, not ids — the text and query adapters, the text/graph gate, the user tower
  (recency weights, feed-forward), the search personalisation weight;
* the graph encoder's projections and the message functions of every relation both graphs have;
* a fine-tuned text tower saved under the artifact's ``text_tower/`` (full BERT, or its LoRA / IA3 /
  prompt adapter), loaded on the run's base encoder; it re-encodes the new catalogue's products and,
  when the run trains, keeps training in its own mode.

What is tied to the old catalogue starts fresh: id embeddings (products, users, categories,
brands, entities, query nodes; at zero, see :func:`zero_fresh_embeddings`), buffers (text vectors, node features: rebuilt from the new
catalogue), the message functions of relations the new graph does not have, and anything whose
shape differs. The new artifact records where it came from (``extra["init_from"]``).

The artifact's text encoder must be the run's: vectors of another BERT (or another
``max_length`` / pooling) live in another space, and the adapters would read noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kgrec.encoders.text import TextEncoder
from kgrec.encoders.tuning import TunedTextEncoder
from kgrec.fusion.models import Recommender
from kgrec.fusion.registry import spec
from kgrec.serving.artifact import TEXT_TOWER, ArtifactError, load_artifact
from kgrec.serving.update import warm_start
from kgrec.workflow.store import WorkflowError

#: Key prefix of a model's trainable text tower (loaded from ``text_tower/``, never from the weights).
TOWER_PREFIX = "text_tower."


@dataclass
class TransferSource:
    """What a new model can start from: an artifact's model name, typed config and weights.

    Attributes:
        path: the artifact folder.
        model: its registered model name.
        config: its typed model config (``spec(model).config_from_dict``).
        weights: its model's ``state_dict`` (CPU).
        id_maps: node type -> external ids of the old catalogue.
        data_fingerprint: the fingerprint of the data it was trained on.
        text_encoder: the text encoder it records (``path``, ``fingerprint``, ...), or None.
        text_tuning: its text tuning (``{"mode": "frozen"}`` when BERT did not train).
    """

    path: Path
    model: str
    config: Any
    weights: dict[str, torch.Tensor] = field(repr=False)
    id_maps: dict[str, list[str]] = field(repr=False)
    data_fingerprint: str
    text_encoder: dict[str, Any] | None
    text_tuning: dict[str, Any]

    @property
    def tuning_mode(self) -> str:
        return str(self.text_tuning.get("mode", "frozen"))

    @property
    def tower_dir(self) -> Path | None:
        """The saved fine-tuned text tower, or None (frozen BERT)."""
        return self.path / TEXT_TOWER if self.tuning_mode != "frozen" else None


def load_source(path: str | os.PathLike[str]) -> TransferSource:
    """Read an artifact to start from (integrity checked as :func:`~kgrec.serving.artifact.load_artifact` does).

    Raises:
        WorkflowError: the folder is not a readable artifact, or its model config does not fit this kgrec.
    """
    try:
        artifact = load_artifact(path)
    except ArtifactError as exc:
        raise WorkflowError(f"--init-from {exc}") from None
    saved = artifact.config["model"]
    try:
        config = spec(saved["name"]).config_from_dict(saved.get("config") or {})
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"--init-from {artifact.path}: model config does not fit this kgrec: {exc}") from None
    tuning = artifact.config.get("text_tuning") or {"mode": "frozen"}
    source = TransferSource(
        path=artifact.path, model=saved["name"], config=config,
        weights={k: v.detach().cpu() for k, v in artifact.model.state_dict().items()},
        id_maps=artifact.id_maps, data_fingerprint=artifact.fingerprint,
        text_encoder=artifact.text_encoder_info, text_tuning=dict(tuning),
    )
    if source.tower_dir is not None and not source.tower_dir.is_dir():
        raise WorkflowError(f"--init-from {source.tower_dir}: missing (the artifact says its text tower is "
                            f"{source.tuning_mode})")
    return source


def check_text_encoder(source: TransferSource, encoder: TextEncoder | None) -> None:
    """Refuse a run whose text encoder is not the one ``source`` was trained on.

    Raises:
        WorkflowError: both record an encoder and their fingerprints differ (both named).
    """
    if encoder is None or not source.text_encoder:
        return
    saved = source.text_encoder.get("fingerprint")
    if saved != encoder.fingerprint:
        raise WorkflowError(
            f"--init-from {source.path}: its text encoder ({source.text_encoder.get('path')}, fingerprint {saved}) "
            f"differs from this run's ({encoder.model_path}, fingerprint {encoder.fingerprint}); transfer needs the "
            "same text model (pass it with --text-model)"
        )


def zero_fresh_embeddings(model: torch.nn.Module, fresh: list[str]) -> list[str]:
    """Set the fresh id-embedding tables of ``model`` (``nn.Embedding`` weights named in ``fresh``) to zero;
    returns their keys.

    A random id vector is noise that the transferred message functions and graph projection
    would carry into every product: at zero the transferred graph encoder reads only what the
    new catalogue gives it (product text, node features, its structure), so before any training
    the transferred model is the source's towers applied to the new catalogue. Training moves the
    rows from zero (each row receives its own gradient through the message functions)."""
    keys = []
    with torch.no_grad():
        for name, module in model.named_modules():
            key = f"{name}.weight"
            if isinstance(module, torch.nn.Embedding) and key in fresh:
                module.weight.zero_()
                keys.append(key)
    return keys


class TransferInit:
    """A :class:`~kgrec.workflow.models.ModelInit` that starts a model from a :class:`TransferSource`.

    Args:
        source: the artifact to start from.
        encoder: the run's base text encoder (None when the model reads no text); checked against
            the source's (:func:`check_text_encoder`) and the base of its fine-tuned tower.
        zero_fresh_ids: start the new catalogue's id embeddings at zero (default True,
            :func:`zero_fresh_embeddings`); False keeps a fresh model's random ones.

    After :meth:`apply`, :attr:`report` holds what was copied and what started fresh.
    """

    def __init__(self, source: TransferSource, encoder: TextEncoder | None, zero_fresh_ids: bool = True) -> None:
        check_text_encoder(source, encoder)
        self.source = source
        self.zero_fresh_ids = zero_fresh_ids
        self.config: Any = source.config
        self.text_tower: TunedTextEncoder | None = None
        if source.tower_dir is not None:
            if encoder is None:
                raise WorkflowError(f"--init-from {source.path}: its fine-tuned text tower needs a text encoder")
            try:
                self.text_tower = TunedTextEncoder.load(source.tower_dir, encoder)
            except (OSError, ValueError, KeyError) as exc:
                raise WorkflowError(f"--init-from {source.tower_dir}: {exc}") from None
        self.report: dict[str, Any] = {}

    def apply(self, model: Recommender) -> None:
        """Copy every parameter of the source whose name and shape fit ``model``; id tables and
        buffers stay as the new catalogue made them (see the module docstring)."""
        if model.name != self.source.model:
            raise WorkflowError(f"--init-from {self.source.path} holds a {self.source.model!r} model, not {model.name!r}")
        warm = warm_start(model, self.source.weights, self.source.id_maps, {}, match_ids=False, skip=(TOWER_PREFIX,))
        zeroed = zero_fresh_embeddings(model, warm["fresh"]) if self.zero_fresh_ids else []
        self.report = {
            "copied": warm["copied_keys"],
            "fresh": warm["fresh"],
            "zeroed": zeroed,
            "rebuilt": warm["rebuilt"],
            "dropped": warm["dropped"],
            "text_tower": (f"{TEXT_TOWER}/ ({self.source.tuning_mode})" if self.text_tower is not None else None),
        }

    def provenance(self) -> dict[str, Any]:
        """What the new artifact records under ``extra["init_from"]``: the source (path, data
        fingerprint, model, text encoder and tuning) and :attr:`report`."""
        return {
            "path": str(self.source.path.resolve()),
            "data_fingerprint": self.source.data_fingerprint,
            "model": self.source.model,
            "text_encoder": (self.source.text_encoder or {}).get("fingerprint"),
            "text_tuning": self.source.tuning_mode,
            **self.report,
        }
