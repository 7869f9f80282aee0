"""Continual updates: new interactions in, a fine-tuned artifact out, with an honest report.

:func:`continual_update`

1. reads new interactions (``user_id, product_id, event, order``; CSV or a frame),
   checks them, and upserts them into the store (new users become ``User`` nodes;
   products must already be in the catalogue);
2. exports a new snapshot; its leave-one-out split makes each user's newest
   interaction the held-out ``test`` target, so for the users who got new
   interactions the target is one of the new ones;
3. rebuilds the artifact's model for the new snapshot and warm-starts it from the
   artifact's weights (:func:`warm_start`: id-indexed tables are copied row by row
   by external id, new users / products keep their fresh initialisation);
4. evaluates that warm-started model before any training ("before"), fine-tunes it
   for a few epochs with :func:`kgrec.fusion.train.fit` ("after"), and, unless switched
   off, trains the same architecture from scratch with the artifact's training
   settings ("full retrain") for the time and quality comparison;
5. writes a new artifact whose ``metrics.json`` holds the report.

"Before" is not the old artifact's own score: it is the old weights on the new
graph (message passing already includes the new interactions up to the targets),
which is what serving would do if it only refreshed the graph.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from kgrec.evaluation.recommendation import evaluate, ndcg_validator
from kgrec.fusion.models import FusedRecommender, Recommender, TextZeroShot
from kgrec.fusion.registry import rebuild_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.kg.export import GraphSnapshot, export_snapshot
from kgrec.kg.schema import EVENT_TYPES
from kgrec.kg.store import GraphStore
from kgrec.serving.artifact import ArtifactError, load_artifact, save_artifact

INTERACTION_COLUMNS = ["user_id", "product_id", "event", "order"]


@dataclass
class UpdateConfig:
    """Settings of :func:`continual_update`.

    Attributes:
        epochs: fine-tuning epochs (default 3). lr: fine-tuning learning rate (None = the
            artifact's training lr, else 1e-3). patience: early-stopping patience (default = epochs).
        full_retrain: also train from scratch for comparison (default True).
        full_epochs: epochs of that retrain (None = the artifact's training epochs, else 30).
        device, seed, batch_size: as in :class:`~kgrec.fusion.train.TrainConfig` (batch_size None =
            the artifact's).
        ks: metric cut-offs.
    """

    epochs: int = 3
    lr: float | None = None
    patience: int | None = None
    full_retrain: bool = True
    full_epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    ks: tuple[int, ...] = (10, 20)


@dataclass
class UpdateReport:
    """What :func:`continual_update` did (all metrics on the new snapshot's test split).

    ``*_updated`` metrics average only the users whose test target is a new interaction.
    """

    new_interactions: int
    new_users: int
    updated_users: int
    before: dict[str, float]
    after: dict[str, float]
    before_updated: dict[str, float]
    after_updated: dict[str, float]
    update_seconds: float
    update_epochs: int
    full: dict[str, float] | None = None
    full_updated: dict[str, float] | None = None
    full_seconds: float | None = None
    full_epochs: int | None = None
    warm_start: dict[str, Any] = field(default_factory=dict)
    artifact: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- ingest


def read_interactions(source: str | os.PathLike[str] | pd.DataFrame) -> pd.DataFrame:
    """Read and check new interactions; errors name the file, row (from 1) and field."""
    where = "interactions" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: file not found")
        frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column {missing[0]!r} (have {list(frame.columns)})")
    frame = frame[INTERACTION_COLUMNS].copy()
    for column in ("user_id", "product_id"):
        frame[column] = frame[column].astype(str).str.strip()
        empty = frame[column] == ""
        if empty.any():
            raise ValueError(f"{where}, row {int(np.argmax(empty.to_numpy())) + 1}, field {column!r}: empty id")
    bad = ~frame["event"].isin(list(EVENT_TYPES))
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise ValueError(f"{where}, row {row + 1}, field 'event': unknown event {frame['event'].iloc[row]!r}; known: {sorted(EVENT_TYPES)}")
    order = pd.to_numeric(frame["order"], errors="coerce")
    bad = order.isna() | (order % 1 != 0)
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise ValueError(f"{where}, row {row + 1}, field 'order': not an integer: {frame['order'].iloc[row]!r}")
    frame["order"] = order.astype("int64")
    if frame.empty:
        raise ValueError(f"{where}: no interactions")
    return frame.reset_index(drop=True)


def ingest_interactions(store: GraphStore, frame: pd.DataFrame) -> list[str]:
    """Upsert checked interactions into ``store``; returns the user ids that were new.

    Raises:
        ValueError: an interaction names a product that is not in the catalogue.
    """
    products = set(store.nodes("Product")["product_id"].astype(str))
    unknown = ~frame["product_id"].isin(products)
    if unknown.any():
        row = int(np.argmax(unknown.to_numpy()))
        raise ValueError(
            f"row {row + 1}: unknown product id {frame['product_id'].iloc[row]!r} "
            f"({int(unknown.sum())} rows); add products to the catalogue first"
        )
    users = set(store.nodes("User")["user_id"].astype(str))
    new_users = sorted(set(frame["user_id"]) - users)
    if new_users:
        store.upsert_nodes("User", pd.DataFrame({"user_id": new_users}))
    for event, rel in EVENT_TYPES.items():
        part = frame[frame["event"] == event]
        if len(part):
            store.upsert_edges(rel, pd.DataFrame(
                {"source": part["user_id"].to_numpy(), "target": part["product_id"].to_numpy(), "order": part["order"].to_numpy()}
            ))
    return new_users


# --------------------------------------------------------------------------- warm start

_ROWS = [
    (re.compile(r"^graph\.embedding\.(\w+)\.weight$"), None),  # node type from the key
    (re.compile(r"^users\.weight$"), "user"),
    (re.compile(r"^products\.weight$"), "product"),
    (re.compile(r"^encoder\.model\.embedding\.weight$"), "user+product"),
]
#: Buffers rebuilt from the new data, never copied.
_REBUILT = {"text", "counts"}


def _row_ids(key: str, maps: dict[str, list[str]]) -> list[str] | None:
    for pattern, kind in _ROWS:
        m = pattern.match(key)
        if m:
            kind = kind or m.group(1)
            if kind == "user+product":
                return [f"user\x1f{u}" for u in maps["user"]] + [f"product\x1f{p}" for p in maps["product"]]
            return maps.get(kind)
    return None


def id_indexed_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the tables with one row per node: the weight of every ``nn.Embedding``
    and the keys :func:`warm_start` matches row by row (users, products, graph node types)."""
    keys = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Embedding) and name}
    return keys | {k for k in model.state_dict() if any(pattern.match(k) for pattern, _ in _ROWS)}


def warm_start(
    model: Recommender,
    old_weights: dict[str, torch.Tensor],
    old_maps: dict[str, list[str]],
    new_maps: dict[str, list[str]],
    *,
    match_ids: bool = True,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Copy ``old_weights`` into ``model`` by name where the shapes fit.

    Args:
        match_ids: True (the same catalogue, grown: :func:`continual_update`): id-indexed rows
            are matched by external id, new users / products keep their fresh rows. False
            (another catalogue: :mod:`kgrec.workflow.transfer`): id-indexed tables
            (:func:`id_indexed_keys`) start fresh, and so do buffers (text vectors, counts, node
            features: rebuilt from the new data, never learned).
        skip: key prefixes left alone and not reported (e.g. a text tower loaded on its own).

    Returns ``{"copied": n, "rows_copied": n, "rows_fresh": n, "fresh": [keys], "copied_keys": [keys],
    "rebuilt": [keys], "dropped": [keys]}``: ``fresh`` are the model's keys that kept their
    initialisation (no old tensor of that name and shape, or an id table of another catalogue),
    ``rebuilt`` the buffers left to the new data, ``dropped`` old keys the model has no place for.
    """
    state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    id_keys = id_indexed_keys(model)
    copied, rows_copied, rows_fresh = 0, 0, 0
    fresh: list[str] = []
    copied_keys: list[str] = []
    rebuilt: list[str] = []
    for key, tensor in state.items():
        if key.startswith(skip):
            continue
        old = old_weights.get(key)
        if key in _REBUILT or (not match_ids and key in buffers):
            rebuilt.append(key)
            continue
        if old is None or (not match_ids and key in id_keys):
            fresh.append(key)
            continue
        new_ids, old_ids = (_row_ids(key, new_maps), _row_ids(key, old_maps)) if match_ids else (None, None)
        if new_ids is None or old_ids is None:
            if tuple(old.shape) == tuple(tensor.shape):
                state[key] = old.to(tensor)
                copied += 1
                copied_keys.append(key)
            else:
                fresh.append(key)
            continue
        if old.shape[0] != len(old_ids) or tensor.shape[0] != len(new_ids) or old.shape[1:] != tensor.shape[1:]:
            fresh.append(key)
            continue
        where = {i: r for r, i in enumerate(old_ids)}
        pairs = [(r, where[i]) for r, i in enumerate(new_ids) if i in where]
        if pairs:
            dst, src = (torch.as_tensor(x) for x in zip(*pairs))
            tensor = tensor.clone()
            tensor[dst] = old[src].to(tensor)
            state[key] = tensor
        copied += 1
        copied_keys.append(key)
        rows_copied += len(pairs)
        rows_fresh += len(new_ids) - len(pairs)
    model.load_state_dict(state)
    dropped = sorted(k for k in old_weights if k not in state and not k.startswith(skip))
    return {"copied": copied, "rows_copied": rows_copied, "rows_fresh": rows_fresh, "fresh": fresh,
            "copied_keys": copied_keys, "rebuilt": rebuilt, "dropped": dropped}


# --------------------------------------------------------------------------- update


def _text_features(artifact, snapshot: GraphSnapshot, text_model, cache_dir) -> tuple[torch.Tensor | None, Any]:
    model = artifact.model
    reads_text = isinstance(model, TextZeroShot) or (isinstance(model, FusedRecommender) and model.config.use_text)
    if not reads_text:
        return None, None
    if snapshot.id_maps["product"] == artifact.id_maps["product"] and snapshot.product_text == artifact.products["text"].tolist():
        return model.text.detach().cpu().clone(), artifact.text_encoder_info
    from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig

    info = artifact.text_encoder_info
    if not info:
        raise ArtifactError(artifact.path / "config.json", "the catalogue changed and the artifact records no text encoder")
    config = dict(info.get("config") or {"model_path": info["path"]})
    if text_model is not None:
        config["model_path"] = str(text_model)
    encoder = TextEncoder(TextEncoderConfig(**config))
    if encoder.fingerprint != info["fingerprint"]:
        raise ArtifactError(encoder.model_path, f"text encoder fingerprint {encoder.fingerprint} "
                                                f"differs from the artifact's {info['fingerprint']}")
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    return encoder.encode(snapshot.product_text, cache=cache), encoder


def _subset(result, users: set[int]) -> dict[str, float]:
    keep = torch.as_tensor([int(u) in users for u in result.users.tolist()], dtype=torch.bool)
    if not keep.any():
        return {}
    return {name: float(values[keep].float().mean()) for name, values in result.per_user.items()}


def continual_update(
    artifact_path: str | os.PathLike[str],
    store: GraphStore,
    interactions: str | os.PathLike[str] | pd.DataFrame,
    out: str | os.PathLike[str],
    config: UpdateConfig | None = None,
    *,
    text_model: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    check_fingerprint: bool = True,
    progress: bool = False,
) -> UpdateReport:
    """Ingest ``interactions`` into ``store``, fine-tune the artifact's model, save to ``out``.

    Args:
        check_fingerprint: refuse when the store is not the data the artifact was trained
            on (checked before anything is written).
        text_model: the text encoder's directory if it moved. cache_dir: text embedding cache.
    """
    config = config or UpdateConfig()
    artifact = load_artifact(artifact_path)
    frame = read_interactions(interactions)
    if check_fingerprint:
        current = export_snapshot(store).fingerprint()
        if current != artifact.fingerprint:
            raise ArtifactError(
                Path(artifact_path) / "config.json",
                f"trained on data {artifact.fingerprint}, the store holds {current}: "
                "update from the store the artifact was trained on (or pass check_fingerprint=False)",
            )
    new_users = ingest_interactions(store, frame)
    snapshot = export_snapshot(store)
    text, encoder = _text_features(artifact, snapshot, text_model, cache_dir)

    saved = artifact.config.get("extra", {}).get("train", {})
    base = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    base = TrainConfig(**{**asdict(base), "device": config.device, "seed": config.seed, "max_history": artifact.max_history,
                          "batch_size": config.batch_size or base.batch_size})
    tune = TrainConfig(**{**asdict(base), "epochs": config.epochs, "lr": config.lr or (base.lr if saved else 1e-3),
                          "patience": config.patience or config.epochs, "time_limit": None})
    spec = artifact.config["model"]

    def fresh_model() -> Recommender:
        init = {**spec.get("init", {}), "num_users": snapshot.num_users, "num_products": snapshot.num_products}
        if "num_nodes" in init:
            init["num_nodes"] = snapshot.num_nodes
        return rebuild_model({**spec, "init": init}, text_features=text)

    fresh_keys = set(zip(frame["user_id"], frame["product_id"], frame["order"]))
    test = snapshot.interactions[snapshot.interactions["split"] == "test"]
    users, products = snapshot.id_maps["user"], snapshot.id_maps["product"]
    updated = {int(u) for u, p, o in zip(test["user"], test["product"], test["order"]) if (users[u], products[p], int(o)) in fresh_keys}

    model = fresh_model()
    weights = {k: v.cpu() for k, v in artifact.model.state_dict().items()}
    warm = warm_start(model, weights, artifact.id_maps, snapshot.id_maps)
    before = evaluate(model, snapshot, "test", config.ks, base.max_history)
    start = time.perf_counter()
    validators = {"rec": ndcg_validator(snapshot, "valid", max_history=base.max_history)}
    history = fit(model, snapshot, tune, progress=progress, validators=validators)
    update_seconds = time.perf_counter() - start
    after = evaluate(model, snapshot, "test", config.ks, base.max_history)

    report = UpdateReport(
        new_interactions=len(frame), new_users=len(new_users), updated_users=len(updated),
        before=before.metrics, after=after.metrics,
        before_updated=_subset(before, updated), after_updated=_subset(after, updated),
        update_seconds=round(update_seconds, 3), update_epochs=len(history.losses), warm_start=warm,
    )
    if config.full_retrain:
        full_model = fresh_model()
        full_cfg = TrainConfig(**{**asdict(base), "epochs": config.full_epochs or (base.epochs if saved else 30)})
        start = time.perf_counter()
        full_history = fit(full_model, snapshot, full_cfg, progress=progress, validators=validators)
        report.full_seconds = round(time.perf_counter() - start, 3)
        full = evaluate(full_model, snapshot, "test", config.ks, base.max_history)
        report.full, report.full_updated, report.full_epochs = full.metrics, _subset(full, updated), len(full_history.losses)

    report.artifact = str(out)
    model.cpu()
    save_artifact(
        model, snapshot, out, text_encoder=encoder, max_history=artifact.max_history,
        products=store.nodes("Product"), metrics={"update": report.to_dict()},
        extra={"train": asdict(tune), "parent": {"path": str(artifact_path), "fingerprint": artifact.fingerprint}},
        overwrite=True,
    )
    return report
