"""The model registry: one table from a model's name to its class, typed config and training defaults.

The workflow, the artifact loader and the CLI's choices all read :data:`MODELS`; adding a
model means adding one :class:`ModelSpec` here (and its file under :mod:`kgrec.fusion.models`).

    >>> spec = MODELS["graph-only"]
    >>> model = build_model("graph-only", ModelInputs.from_graph(graph, num_users, num_products))
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from kgrec.fusion.models import (
    FusedConfig,
    FusedRecommender,
    LightGCNRecommender,
    MatrixFactorization,
    Popularity,
    Recommender,
    TextZeroShot,
)
from kgrec.fusion.models.base import ModelInputs
from kgrec.fusion.models.lightgcn import LightGCNConfig
from kgrec.fusion.models.mf import MFConfig
from kgrec.fusion.models.popularity import PopularityConfig
from kgrec.fusion.models.text_zero_shot import TextZeroShotConfig
from kgrec.fusion.train import TrainConfig, seed_everything

#: Trainer defaults of the models trained with a softmax over the catalogue (text-only, graph-only, fused).
SOFTMAX_TRAINING = TrainConfig(epochs=8, batch_size=2048, lr=3e-3, patience=2)
#: Trainer defaults of the BPR baselines (mf-bpr, lightgcn).
BPR_TRAINING = TrainConfig(epochs=40, batch_size=4096, lr=1e-2, patience=3)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: the name users type (``--model fused``) and artifacts record.
        model_class: a :class:`~kgrec.fusion.models.Recommender` with ``build(inputs, config)``.
        default_config: makes the model's typed config (a dataclass) with this name's settings
            (``text-only`` is the fused class with ``use_graph=False``).
        training: the trainer defaults (None: nothing is trained).
        reads_text: needs product text vectors.
        reads_graph: runs a GNN over the knowledge graph.
        searches: can rank products for a text query (has a text or query tower).
        tasks: what it can be trained and evaluated for: ``"rec"``, ``"search"``.
    """

    name: str
    model_class: type[Recommender]
    default_config: Callable[[], Any]
    training: TrainConfig | None
    reads_text: bool
    reads_graph: bool
    searches: bool
    tasks: frozenset[str] = field(default_factory=lambda: frozenset({"rec"}))

    def config(self, **overrides: Any) -> Any:
        """The default config with ``overrides`` of its fields (unknown names raise)."""
        config = self.default_config()
        known = {f.name for f in fields(config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"model {self.name!r} has no setting {unknown}; it has {sorted(known)}")
        return replace(config, **overrides)

    def config_from_dict(self, values: dict[str, Any]) -> Any:
        """The typed config from its saved dict (an artifact's manifest)."""
        return self.config(**values)


def _fused(**settings: Any) -> Callable[[], FusedConfig]:
    return lambda: FusedConfig(**settings)


_BOTH = frozenset({"rec", "search"})
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("popularity", Popularity, PopularityConfig, None, reads_text=False, reads_graph=False, searches=False),
        ModelSpec("mf-bpr", MatrixFactorization, MFConfig, BPR_TRAINING, reads_text=False, reads_graph=False, searches=False),
        ModelSpec("lightgcn", LightGCNRecommender, LightGCNConfig, BPR_TRAINING, reads_text=False, reads_graph=True,
                  searches=False),
        ModelSpec("text-zero-shot", TextZeroShot, TextZeroShotConfig, None, reads_text=True, reads_graph=False,
                  searches=True, tasks=_BOTH),
        ModelSpec("text-only", FusedRecommender, _fused(use_graph=False), SOFTMAX_TRAINING, reads_text=True,
                  reads_graph=False, searches=True, tasks=_BOTH),
        ModelSpec("graph-only", FusedRecommender, _fused(use_text=False), SOFTMAX_TRAINING, reads_text=False,
                  reads_graph=True, searches=True, tasks=_BOTH),
        ModelSpec("fused", FusedRecommender, FusedConfig, SOFTMAX_TRAINING, reads_text=True, reads_graph=True,
                  searches=True, tasks=_BOTH),
    )
}
#: Model names in the order of a results table (``fused`` last).
MODEL_NAMES = tuple(MODELS)


def spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; an unknown name raises ValueError listing the known ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    return MODELS[name]


def build_model(name: str, inputs: ModelInputs, config: Any = None, seed: int | None = None) -> Recommender:
    """An untrained model ``name`` for ``inputs``; ``config`` defaults to the registered one.

    One :class:`FusedConfig` configures the whole fused family in a comparison: given for
    ``text-only`` / ``graph-only`` it keeps its settings but gets that name's towers
    (``use_text`` / ``use_graph``); given for a model of another class it is ignored.
    ``seed`` (default None: the generators as they are) seeds torch, numpy and random before the
    weights are drawn, so the starting weights depend on the seed alone and not on what ran
    earlier in the process (pass the training seed for runs that repeat).
    """
    if seed is not None:
        seed_everything(seed)
    entry = spec(name)
    if config is None or (isinstance(config, FusedConfig) and entry.model_class is not FusedRecommender):
        config = entry.default_config()
    elif isinstance(config, FusedConfig) and entry.model_class is FusedRecommender:
        towers = entry.default_config()
        config = replace(config, use_text=towers.use_text, use_graph=towers.use_graph,
                         graph_text_input=config.graph_text_input and towers.use_text,
                         text_prior=config.text_prior if towers.use_text else 0.0,
                         cold_text_prior=config.cold_text_prior if towers.use_text else 0.0)
    model = entry.model_class.build(inputs, config)  # type: ignore[attr-defined]
    model.name = name
    return model


def saved_model(model: Recommender) -> dict[str, Any]:
    """The manifest entry that rebuilds ``model``: registry name, class, config and sizes."""
    return {"name": model.name, "class": type(model).__name__, "config": model.config_dict(), "init": model.init_args()}


def rebuild_model(saved: dict[str, Any], text_features: Any = None) -> Recommender:
    """An untrained model from :func:`saved_model`'s entry (weights are loaded over it)."""
    entry = spec(saved["name"])
    if type(saved.get("class")) is str and saved["class"] != entry.model_class.__name__:
        raise ValueError(f"model {saved['name']!r} is a {entry.model_class.__name__}, the entry says {saved['class']}")
    inputs = entry.model_class.inputs_from_init(saved["init"], text_features)
    model = entry.model_class.build(inputs, entry.config_from_dict(saved["config"]))  # type: ignore[attr-defined]
    model.name = entry.name
    return model

