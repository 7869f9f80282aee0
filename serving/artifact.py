"""Model artifacts: a trained recommender as a folder that scores with no raw data and no store.

Layout (format version 1)::

    ARTIFACT/
      config.json          model class + typed config + constructor sizes, kgrec version,
                           format version, data fingerprint, text encoder (path, fingerprint,
                           options), creation time, sha256 of every other file, and a
                           checksum of config.json itself
      model.safetensors    the model's state_dict (weights and buffers)
      serving.safetensors  the serving state (Recommender.serving_state) computed on the
                           message-passing graph "test" (train + valid interactions):
                           the product vectors and whatever the user tower reads
      ids/<node type>.parquet   external ids in index order (column "id"): product, user,
                           category, brand, and any other node type of the snapshot
      products.parquet     per product: product_id, title, text, brand, category
      categories.parquet   category_id, parent ("" for a root)
      structure.parquet    catalogue edges by index: src_type, rel, dst_type, src, dst
      interactions.parquet the visible interactions (train + valid): user, product, order,
                           rel, split (each user's history, most recent last)
      metrics.json         optional: whatever the trainer reported
      text_tower/          only for a fine-tuned text encoder: tuning.json (mode, peft settings,
                           base-model fingerprint) + tuned.safetensors (only the tuned weights)

No pickle: tensors go through ``safetensors``, tables through Parquet, the rest is JSON.
:func:`load_artifact` checks the format version, the config checksum, every file's
sha256 and every tensor's shape, and raises :class:`ArtifactError` naming the file.
Checksums only catch accidents: someone who edits a file and re-hashes it passes them,
so the loader also keeps every path it reads inside the folder (no absolute path, no
``..``, no link pointing out), refuses sizes in ``config.json`` that are negative or
absurd (over :data:`MAX_SIZE`, node counts over :data:`MAX_NODES`) before it allocates
anything, and refuses tensors holding NaN or infinite values.
The interactions and the structure rebuild the message-passing graph exactly, so the
loaded model also runs through the ordinary :class:`~kgrec.fusion.models.Recommender`
contract (``score_all``); serving (:class:`kgrec.serving.api.Scorer`) reads the precomputed
serving state and never runs the graph encoder.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch

from kgrec.fusion.models import Recommender
from kgrec.fusion.registry import MODELS, rebuild_model, saved_model
from kgrec.kg.export import GraphSnapshot
from kgrec.kg.schema import CATEGORY_SEPARATOR, check_identifier

FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SERVING = "serving.safetensors"
TEXT_TOWER = "text_tower"  # folder of a fine-tuned text encoder: tuning.json + tuned.safetensors
PRODUCTS = "products.parquet"
CATEGORIES = "categories.parquet"
STRUCTURE = "structure.parquet"
INTERACTIONS = "interactions.parquet"
METRICS = "metrics.json"
#: Node types every artifact holds; a snapshot with more (e.g. ``entity``) saves those too.
ID_TYPES = ("product", "user", "category", "brand")
#: The split whose message-passing graph the serving state is computed on.
SERVING_SPLIT = "test"
#: Largest size a model's config or init may give (a dimension, a layer count, a history length).
MAX_SIZE = 1 << 16
#: Largest node count an artifact may declare.
MAX_NODES = (1 << 31) - 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(ValueError):
    """An artifact folder that is missing, corrupt or does not fit this kgrec."""

    def __init__(self, file: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = str(file), reason


def kgrec_version() -> str:
    try:
        from importlib.metadata import version

        return version("kgrec")
    except Exception:
        return "0+unknown"


# --------------------------------------------------------------------------- helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _config_checksum(payload: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in payload.items() if k != "checksum"})).hexdigest()


def _text_encoder_info(text_encoder: Any) -> dict[str, Any] | None:
    """``{"path", "fingerprint", "dim", "config"}`` of a TextEncoder (or a ready dict)."""
    if text_encoder is None:
        return None
    if isinstance(text_encoder, dict):
        missing = {"path", "fingerprint"} - set(text_encoder)
        if missing:
            raise ValueError(f"text_encoder dict lacks {sorted(missing)}")
        return dict(text_encoder)
    config = asdict(text_encoder.config)
    config["model_path"] = str(text_encoder.model_path)
    return {
        "path": str(text_encoder.model_path),
        "fingerprint": text_encoder.fingerprint,
        "dim": text_encoder.dim,
        "config": config,
    }


def _product_table(snapshot: GraphSnapshot, titles: pd.DataFrame | None) -> pd.DataFrame:
    ids = snapshot.id_maps["product"]
    n = len(ids)
    brand = [""] * n
    category = [""] * n
    for (src_t, _rel, dst_t), index in snapshot.structure.items():
        if src_t != "product":
            continue
        names = snapshot.id_maps[dst_t]
        target = brand if dst_t == "brand" else category if dst_t == "category" else None
        if target is None:
            continue
        for s, d in index.T.tolist():  # first edge wins (a product has one brand / one leaf category)
            if not target[s]:
                target[s] = names[d]
    frame = pd.DataFrame({"product_id": ids, "text": snapshot.product_text, "brand": brand, "category": category})
    frame["title"] = [t.split(". ")[0] for t in snapshot.product_text]
    if titles is not None and "title" in titles.columns:
        lookup = dict(zip(titles["product_id"].astype(str), titles["title"].fillna("").astype(str)))
        frame["title"] = [lookup.get(p, t) for p, t in zip(frame["product_id"], frame["title"])]
    return frame[["product_id", "title", "text", "brand", "category"]]


def _category_table(snapshot: GraphSnapshot) -> pd.DataFrame:
    ids = snapshot.id_maps["category"]
    parent = [""] * len(ids)
    sub = snapshot.structure.get(("category", "subcategory_of", "category"))
    if sub is not None:
        for s, d in sub.T.tolist():
            parent[s] = ids[d]
    return pd.DataFrame({"category_id": ids, "parent": parent})


def _structure_table(snapshot: GraphSnapshot) -> pd.DataFrame:
    parts = [
        pd.DataFrame({"src_type": s, "rel": r, "dst_type": d, "src": idx[0].numpy(), "dst": idx[1].numpy()})
        for (s, r, d), idx in snapshot.structure.items()
    ]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("src", "dst") else "string")
                             for c in ("src_type", "rel", "dst_type", "src", "dst")})
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- save


def save_artifact(
    model: Recommender,
    snapshot: GraphSnapshot,
    path: str | os.PathLike[str],
    *,
    text_encoder: Any = None,
    max_history: int = 50,
    products: pd.DataFrame | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
    serving: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (trained on ``snapshot``) as an artifact folder at ``path``.

    The model's graph is set to ``snapshot.message_passing("test")`` and the serving
    state is computed there (the graph seen before the test targets: train + valid).

    Args:
        text_encoder: the :class:`~kgrec.encoders.text.TextEncoder` that made the text
            features (needed later by search and ``add_products``), or None.
        max_history: history length the model was trained / evaluated with.
        products: optional store ``Product`` frame, for titles.
        metrics: written to ``metrics.json``. extra: stored under ``extra`` in config.json.
        serving: settings :class:`~kgrec.serving.api.Scorer` serves with, chosen on validation
            (``lexical_weight``, ``tasks`` ...), stored under ``serving`` in config.json.
        overwrite: replace an existing folder (otherwise FileExistsError).

    The folder is written to a temporary sibling and renamed into place.
    """
    from safetensors.torch import save_file

    if model.num_users != snapshot.num_users or model.num_products != snapshot.num_products:
        raise ValueError(
            f"model has {model.num_users} users / {model.num_products} products, "
            f"snapshot {snapshot.num_users} / {snapshot.num_products}"
        )
    if model.name not in MODELS:
        raise ValueError(f"cannot save a model named {model.name!r}; registered: {list(MODELS)}")
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass overwrite=True)")

    model.eval()
    model.set_graph(snapshot.message_passing(SERVING_SPLIT))
    state = model.serving_state()
    # a fine-tuned text tower is saved on its own (only its tuned weights, :mod:`kgrec.encoders.tuning`)
    tower = getattr(model, "text_tower", None)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
               if not k.startswith("text_tower.")}

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS))
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / SERVING))
        if tower is not None and tower.mode != "frozen":
            tower.save(tmp / TEXT_TOWER)
        (tmp / "ids").mkdir()
        node_types = sorted(set(ID_TYPES) | set(snapshot.id_maps))
        for t in node_types:
            check_identifier(t, "node type")
            pd.DataFrame({"id": pd.Series(snapshot.id_maps.get(t, []), dtype="string")}).to_parquet(
                tmp / "ids" / f"{t}.parquet", index=False
            )
        _product_table(snapshot, products).to_parquet(tmp / PRODUCTS, index=False)
        _category_table(snapshot).to_parquet(tmp / CATEGORIES, index=False)
        _structure_table(snapshot).to_parquet(tmp / STRUCTURE, index=False)
        visible = snapshot.visible(SERVING_SPLIT)[["user", "product", "order", "rel", "split"]].reset_index(drop=True)
        visible.to_parquet(tmp / INTERACTIONS, index=False)
        if metrics is not None:
            (tmp / METRICS).write_text(json.dumps(metrics, indent=2, default=float))

        files = sorted(
            str(p.relative_to(tmp)).replace(os.sep, "/") for p in tmp.rglob("*") if p.is_file()
        )
        payload = {
            "format_version": FORMAT_VERSION,
            "kgrec_version": kgrec_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": saved_model(model),
            "serving": dict(serving or {}),
            "max_history": int(max_history),
            "data": {
                "fingerprint": snapshot.fingerprint(),
                "num_nodes": snapshot.num_nodes,
                "node_types": node_types,
                "serving_split": SERVING_SPLIT,
                "visible_interactions": int(len(visible)),
            },
            "text_encoder": _text_encoder_info(text_encoder),
            "text_tuning": tower.config.to_dict() if tower is not None else {"mode": "frozen"},
            "serving_keys": {k: list(v.shape) for k, v in state.items()},
            "files": {f: _sha256(tmp / f) for f in files},
            "extra": extra or {},
        }
        payload["checksum"] = _config_checksum(payload)
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2, sort_keys=True))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private
        for p in tmp.rglob("*"):
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --------------------------------------------------------------------------- load


@dataclass
class Artifact:
    """A loaded artifact: the model (weights in, graph set), its serving state and tables.

    Attributes:
        path: the folder. config: the parsed ``config.json``.
        model: the rebuilt :class:`~kgrec.fusion.models.Recommender` in eval mode, its graph set
            to the saved message-passing graph (so ``score_all`` works as in training).
        state: the serving state (``state["products"]`` is ``[P, d]``).
        id_maps: node type -> external ids in index order.
        products: per product ``product_id, title, text, brand, category``.
        categories: ``category_id, parent``.
        interactions: the visible interactions (``user, product, order, rel, split``).
        structure: catalogue edges by index (``src_type, rel, dst_type, src, dst``).
        metrics: ``metrics.json`` or None.
    """

    path: Path
    config: dict
    model: Recommender
    state: dict[str, torch.Tensor]
    id_maps: dict[str, list[str]]
    products: pd.DataFrame
    categories: pd.DataFrame
    interactions: pd.DataFrame
    structure: pd.DataFrame
    metrics: dict | None = None
    _snapshot: GraphSnapshot | None = field(default=None, repr=False)

    @property
    def max_history(self) -> int:
        return int(self.config["max_history"])

    @property
    def text_encoder_info(self) -> dict | None:
        return self.config.get("text_encoder")

    @property
    def fingerprint(self) -> str:
        return self.config["data"]["fingerprint"]

    def snapshot(self) -> GraphSnapshot:
        """A :class:`GraphSnapshot` of what the artifact holds: the structure and the
        visible interactions (no test rows), so ``message_passing("test")`` is the graph
        the serving state was computed on."""
        if self._snapshot is None:
            structure = {
                (s, r, d): torch.as_tensor(np.stack([g["src"].to_numpy(np.int64), g["dst"].to_numpy(np.int64)]))
                for (s, r, d), g in self.structure.groupby(["src_type", "rel", "dst_type"], sort=False)
            }
            self._snapshot = GraphSnapshot(
                id_maps=self.id_maps,
                product_text=self.products["text"].tolist(),
                structure=structure,
                interactions=self.interactions.copy(),
            )
        return self._snapshot


def _read_config(path: Path) -> dict:
    file = path / CONFIG
    if not path.is_dir():
        raise ArtifactError(path, "artifact folder not found")
    if not file.is_file():
        raise ArtifactError(file, "missing (not an artifact folder?)")
    try:
        payload = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(file, f"not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ArtifactError(file, "expected a JSON object")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(file, f"artifact format version {version!r} is not supported (this kgrec reads {FORMAT_VERSION})")
    if payload.get("checksum") != _config_checksum(payload):
        raise ArtifactError(file, "checksum mismatch: the file was edited or is corrupt")
    for key in ("model", "max_history", "data", "files", "serving_keys"):
        if key not in payload:
            raise ArtifactError(file, f"missing key {key!r}")
    model = payload["model"]
    if not isinstance(model, dict) or model.get("name") not in MODELS:
        raise ArtifactError(file, f"unknown model {model.get('name') if isinstance(model, dict) else model!r}; "
                                  f"this kgrec knows {list(MODELS)}")
    if not isinstance(payload.get("serving", {}), dict):
        raise ArtifactError(file, "serving settings must be a JSON object")
    _check_file_list(path, payload["files"])
    _check_sizes(file, payload)
    return payload


def _inside(path: Path, name: str) -> Path:
    """``path / name`` for a plain relative name that stays inside the folder, else ArtifactError.

    Refused: absolute names, ``..`` or ``.`` or empty parts, backslashes, and a file or
    folder on the way that is a link resolving outside ``path``.
    """
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or "\\" in name or PurePosixPath(name).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(path / CONFIG, f"file name {name!r} is not a plain path inside the artifact folder")
    file = path.joinpath(*parts)
    try:
        file.resolve().relative_to(path.resolve())
    except ValueError:
        raise ArtifactError(file, "resolves outside the artifact folder (a link?)") from None
    return file


def _check_file_list(path: Path, files: object) -> None:
    if not isinstance(files, dict):
        raise ArtifactError(path / CONFIG, "files must map file names to sha256 digests")
    for name, digest in files.items():
        _inside(path, name)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ArtifactError(path / CONFIG, f"files[{name!r}] is not a sha256 hex digest")


def _size(value: object, what: str, file: Path, low: int = 1, high: int = MAX_SIZE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArtifactError(file, f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_sizes(file: Path, payload: dict) -> None:
    """Every size a model is built from, checked before anything is allocated."""
    _size(payload["max_history"], "max_history", file)
    model = payload["model"]
    init, config = model.get("init"), model.get("config", {})
    if not isinstance(init, dict) or not isinstance(config, dict):
        raise ArtifactError(file, "model.init and model.config must be JSON objects")
    for key in ("num_users", "num_products"):
        _size(init.get(key), f"model.init.{key}", file, 0, MAX_NODES)
    for key in ("text_dim", "query_dim"):
        if init.get(key) is not None:
            _size(init[key], f"model.init.{key}", file)
    for key, high in (("num_nodes", MAX_NODES), ("node_feature_dims", MAX_SIZE)):
        values = init.get(key, {})
        if not isinstance(values, dict):
            raise ArtifactError(file, f"model.init.{key} must be a JSON object")
        for node_type, n in values.items():
            _size(n, f"model.init.{key}.{node_type}", file, 0 if key == "num_nodes" else 1, high)
    for key, value in config.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            _size(value, f"model.config.{key}", file, 0)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ArtifactError(file, f"model.config.{key} must be a finite number, got {value!r}")
        else:
            raise ArtifactError(file, f"model.config.{key} must be a number, a boolean or a string, got {type(value).__name__}")
    shapes = payload["serving_keys"]
    if not isinstance(shapes, dict):
        raise ArtifactError(file, "serving_keys must be a JSON object")
    for key, shape in shapes.items():
        if not isinstance(shape, list):
            raise ArtifactError(file, f"serving_keys.{key} must be a list of sizes")
        for n in shape:
            _size(n, f"serving_keys.{key}", file, 0, MAX_NODES)


def _check_finite(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(file, f"tensor {key!r} holds NaN or infinite values")


def _verify_files(path: Path, payload: dict) -> None:
    for name, digest in payload["files"].items():
        file = _inside(path, name)
        if not file.is_file():
            raise ArtifactError(file, "missing")
        if _sha256(file) != digest:
            raise ArtifactError(file, "sha256 does not match config.json (corrupt or replaced)")
    node_types = payload.get("data", {}).get("node_types", ID_TYPES)
    for required in (WEIGHTS, SERVING, PRODUCTS, CATEGORIES, STRUCTURE, INTERACTIONS, *(f"ids/{t}.parquet" for t in node_types)):
        if required not in payload["files"]:
            raise ArtifactError(path / required, "not listed in config.json")


def _read_parquet(file: Path, columns: list[str]) -> pd.DataFrame:
    if not file.is_file():
        raise ArtifactError(file, "missing")
    try:
        frame = pd.read_parquet(file)
    except Exception as exc:
        raise ArtifactError(file, f"unreadable Parquet ({exc})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ArtifactError(file, f"missing columns {missing}")
    return frame


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise ArtifactError(file, "missing")
    try:
        return load_file(str(file))
    except Exception as exc:
        raise ArtifactError(file, f"unreadable safetensors ({exc})") from None


def load_artifact(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    verify: bool = True,
    expect_fingerprint: str | None = None,
) -> Artifact:
    """Load an artifact folder written by :func:`save_artifact`.

    Args:
        device: where the model and the serving state go.
        verify: check each file's sha256 against ``config.json`` (a few ms per MB).
        expect_fingerprint: raise if the artifact was trained on other data.

    Raises:
        ArtifactError: naming the file that is missing, corrupt or does not fit.
    """
    path = Path(path)
    payload = _read_config(path)
    if verify:
        _verify_files(path, payload)
    for name in (WEIGHTS, SERVING, PRODUCTS, CATEGORIES, STRUCTURE, INTERACTIONS, METRICS):
        _inside(path, name)  # a required file that is a link pointing out is refused even without verify
    if expect_fingerprint is not None and payload["data"]["fingerprint"] != expect_fingerprint:
        raise ArtifactError(
            path / CONFIG,
            f"trained on data {payload['data']['fingerprint']}, expected {expect_fingerprint}",
        )

    id_maps = {}
    node_types = payload["data"].get("node_types", list(ID_TYPES))
    if not isinstance(node_types, list) or not set(ID_TYPES) <= set(node_types):
        raise ArtifactError(path / CONFIG, f"data.node_types must list {list(ID_TYPES)}, got {node_types!r}")
    for t in node_types:
        check_identifier(str(t), "node type")
        frame = _read_parquet(_inside(path, f"ids/{t}.parquet"), ["id"])
        id_maps[t] = frame["id"].astype(str).tolist()
    init = payload["model"].get("init", {})
    for t, key in (("user", "num_users"), ("product", "num_products")):
        if init.get(key) != len(id_maps[t]):
            raise ArtifactError(path / "ids" / f"{t}.parquet", f"{len(id_maps[t])} ids, config.json says {init.get(key)}")
    for t, n in init.get("num_nodes", {}).items():
        if t in id_maps and n != len(id_maps[t]):
            raise ArtifactError(path / "ids" / f"{t}.parquet", f"{len(id_maps[t])} ids, config.json says {n} {t} nodes")
    products = _read_parquet(path / PRODUCTS, ["product_id", "title", "text", "brand", "category"])
    if products["product_id"].astype(str).tolist() != id_maps["product"]:
        raise ArtifactError(path / PRODUCTS, "product ids differ from ids/product.parquet")
    categories = _read_parquet(path / CATEGORIES, ["category_id", "parent"])
    structure = _read_parquet(path / STRUCTURE, ["src_type", "rel", "dst_type", "src", "dst"])
    interactions = _read_parquet(path / INTERACTIONS, ["user", "product", "order", "rel", "split"])
    for column, t in (("user", "user"), ("product", "product")):
        values = interactions[column]
        if len(values) and (values.min() < 0 or values.max() >= len(id_maps[t])):
            raise ArtifactError(path / INTERACTIONS, f"{column} index out of range")

    model_cfg = payload["model"]
    try:
        model = rebuild_model(model_cfg)
    except (TypeError, ValueError, KeyError) as exc:
        raise ArtifactError(path / CONFIG, f"cannot rebuild model {model_cfg['name']!r}: {exc}") from None
    weights = _read_tensors(path / WEIGHTS)
    _check_finite(path / WEIGHTS, weights)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ArtifactError(path / WEIGHTS, f"tensors do not fit {model_cfg['name']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in expected.items():
        if tuple(weights[key].shape) != tuple(tensor.shape):
            raise ArtifactError(path / WEIGHTS,
                                f"tensor {key!r} has shape {tuple(weights[key].shape)}, the model expects {tuple(tensor.shape)}")
    model.load_state_dict(weights)

    state = _read_tensors(path / SERVING)
    _check_finite(path / SERVING, state)
    shapes = payload["serving_keys"]
    if sorted(state) != sorted(shapes) or "products" not in state:
        raise ArtifactError(path / SERVING, f"holds {sorted(state)}, config.json lists {sorted(shapes)}")
    for key, tensor in state.items():
        if list(tensor.shape) != list(shapes[key]):
            raise ArtifactError(path / SERVING, f"tensor {key!r} has shape {list(tensor.shape)}, config.json says {shapes[key]}")
        if key.startswith(Recommender.SERVING_PRODUCT_PREFIX) and tensor.shape[0] != len(id_maps["product"]):
            raise ArtifactError(path / SERVING, f"tensor {key!r} has {tensor.shape[0]} rows for {len(id_maps['product'])} products")

    metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).is_file() else None
    art = Artifact(
        path=path, config=payload, model=model, state={k: v.to(device) for k, v in state.items()},
        id_maps=id_maps, products=products, categories=categories, interactions=interactions,
        structure=structure, metrics=metrics,
    )
    model.to(device)
    model.eval()
    model.set_graph(art.snapshot().message_passing(SERVING_SPLIT))
    return art


def category_ancestors(category_id: str) -> list[str]:
    """``"A > B > C"`` -> ``["A > B > C", "A > B", "A"]`` (ids of the category and its ancestors)."""
    if not category_id:
        return []
    levels = category_id.split(CATEGORY_SEPARATOR)
    return [CATEGORY_SEPARATOR.join(levels[:i]) for i in range(len(levels), 0, -1)]
