"""Build and train one registered model for the tasks of a dataset (recommendation, search or both).

The one place where a model meets its inputs: :func:`train_model` picks the model's text and graph
inputs, its config for the tasks, its trainer settings, the search examples and the validators,
and calls :func:`kgrec.fusion.train.fit`. Evaluation (:mod:`kgrec.workflow.evaluate`) and the
artifact (:mod:`kgrec.workflow.train`) both go through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch

from kgrec.encoders.tuning import TUNING_MODES, TextTuningConfig, TunedTextEncoder
from kgrec.evaluation.recommendation import ndcg_validator
from kgrec.evaluation.search import search_validator
from kgrec.fusion.data import SearchBatch
from kgrec.fusion.models import FusedConfig, FusedRecommender, ModelInputs, Recommender
from kgrec.fusion.models.fused import GRAPH_ENCODERS, kg_edge_types
from kgrec.fusion.registry import MODELS, ModelSpec, build_model, spec
from kgrec.fusion.train import SearchTask, TrainConfig, TrainHistory, Validator, fit
from kgrec.kg.export import GraphSnapshot
from kgrec.kg.judgements import QUERY_NODE_TYPE
from kgrec.search.examples import judged_examples
from kgrec.workflow.data import Dataset
from kgrec.workflow.features import TextFeatures
from kgrec.workflow.store import WorkflowError


@dataclass
class ModelSettings:
    """How models are configured and trained.

    Attributes:
        fused: config of the fused family (fused, text-only, graph-only); None = the default for
            the tasks (:func:`fused_config_for`).
        train: trainer settings of the softmax models; None = the registry's.
        bpr_train: trainer settings of the BPR baselines (mf-bpr, lightgcn); None = the registry's.
        search_batch_size: judged queries per training step (default 512).
        search_weight: weight of the search loss beside the recommendation loss (default 1.0).
        text_tuning: how the BERT of text models trains: ``frozen`` (cached vectors, default),
            ``full``, ``lora``, ``ia3`` or ``prompt`` (:mod:`kgrec.encoders.tuning`).
        tuned_batch_size: examples per step when BERT trains (its steps cost BERT passes over the
            batch's texts; default 64).
        seed, device, epochs, lr, batch_size, patience: applied to the trainer config of the
            model being trained when set (None = keep the registry's or ``train`` / ``bpr_train``).
        text_prior: the fused family's text prior (:attr:`~kgrec.fusion.models.FusedConfig.text_prior`):
            None (the default) chooses it on the validation users after training
            (:func:`choose_text_prior`), a number sets it, 0 turns it off.
        cold_boost: the fused family's :attr:`~kgrec.fusion.models.FusedConfig.cold_text_prior`, set
            after training and after the text prior is chosen (default 0.0: off; never chosen on
            validation, whose overall NDCG@10 it trades for cold products).
        graph_encoder: the fused family's GNN, set into its config like ``seed`` into the trainer's:
            ``"sage"``, ``"rgcn"`` or ``"auto"`` (the default: :func:`graph_encoder_for` the data,
            the relational ``"rgcn"`` when the graph carries knowledge-graph relations, else ``"sage"``).
        max_search_queries: the search loss learns from at most this many judged train queries,
            a sample seeded by the trainer's seed (None = all, the default); the graph keeps every
            train query.
    """

    fused: FusedConfig | None = None
    train: TrainConfig | None = None
    bpr_train: TrainConfig | None = None
    search_batch_size: int = 512
    search_weight: float = 1.0
    text_tuning: str = "frozen"
    tuned_batch_size: int = 64
    seed: int | None = None
    device: str | None = None
    epochs: int | None = None
    max_search_queries: int | None = None
    graph_encoder: str = "auto"
    text_prior: float | None = None
    cold_boost: float = 0.0
    lr: float | None = None
    batch_size: int | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.text_tuning not in TUNING_MODES:
            raise WorkflowError(f"unknown text tuning {self.text_tuning!r}; choose from {list(TUNING_MODES)}")
        if self.search_batch_size < 1 or self.tuned_batch_size < 1:
            raise WorkflowError("batch sizes must be >= 1")
        if not self.search_weight >= 0:
            raise WorkflowError(f"the search weight must be >= 0, got {self.search_weight}")
        if self.epochs is not None and self.epochs < 0:
            raise WorkflowError(f"epochs must be >= 0, got {self.epochs}")
        if self.max_search_queries is not None and self.max_search_queries < 1:
            raise WorkflowError(f"the most search queries to train on must be >= 1, got {self.max_search_queries}")
        if self.graph_encoder not in ("auto", *GRAPH_ENCODERS):
            raise WorkflowError(f"the graph encoder must be auto, {' or '.join(GRAPH_ENCODERS)}, got {self.graph_encoder!r}")
        if self.text_prior is not None and not 0 <= self.text_prior < float("inf"):
            raise WorkflowError(f"the text prior must be a finite number >= 0, got {self.text_prior}")
        if not 0 <= self.cold_boost < float("inf"):
            raise WorkflowError(f"the cold boost must be a finite number >= 0, got {self.cold_boost}")
        if self.lr is not None and not self.lr >= 0:
            raise WorkflowError(f"the learning rate must be >= 0, got {self.lr}")
        if (self.batch_size is not None and self.batch_size < 1) or (self.patience is not None and self.patience < 1):
            raise WorkflowError("batch size and patience must be >= 1")

    def search_batch(self, tuned: bool) -> int:
        """Judged queries per search step: ``tuned_batch_size`` when BERT trains, else ``search_batch_size``."""
        return self.tuned_batch_size if tuned else self.search_batch_size

    def train_config(self, entry: ModelSpec) -> TrainConfig | None:
        """The trainer settings of ``entry`` (None: the model is not trained)."""
        if entry.training is None:
            return None
        base = entry.training
        if entry.model_class is FusedRecommender and self.train is not None:
            base = self.train
        elif entry.model_class is not FusedRecommender and self.bpr_train is not None:
            base = self.bpr_train
        overrides: dict[str, Any] = {k: v for k, v in (("seed", self.seed), ("device", self.device), ("epochs", self.epochs),
                                                       ("lr", self.lr), ("batch_size", self.batch_size),
                                                       ("patience", self.patience)) if v is not None}
        if self.text_tuning != "frozen" and entry.reads_text and entry.model_class is FusedRecommender:
            overrides["batch_size"] = self.tuned_batch_size
        return replace(base, **overrides)


def fused_config_for(tasks: tuple[str, ...]) -> FusedConfig:
    """The fused family's default config for ``tasks``.

    Search adds the whole-catalogue loss for a trained BERT (``catalogue_loss``). Search alone
    feeds product and query text into the GNN with feature-only nodes (a product or query never
    judged in training is encoded like one that was) and starts the gate text-heavy.
    """
    if tasks == ("search",):
        return FusedConfig(graph_text_input=True, feature_ids=False, gate_bias=3.0, personalize_search=False,
                           catalogue_loss=1.0)
    if "search" in tasks:
        return FusedConfig(catalogue_loss=1.0)
    return FusedConfig()


#: Text-prior weights :func:`choose_text_prior` tries.
TEXT_PRIOR_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


def best_text_prior(curve: dict[float, float]) -> float:
    """The weight of ``curve`` (weight -> validation score) with the best score, the smaller on a tie."""
    return max(curve, key=lambda w: (curve[w], -w))


def choose_text_prior(model: FusedRecommender, validator: Validator,
                      grid: tuple[float, ...] = TEXT_PRIOR_GRID) -> tuple[float, dict[float, float]]:
    """Set ``model``'s :attr:`~kgrec.fusion.models.FusedConfig.text_prior` to the weight of ``grid``
    with the best ``validator`` score (the smaller weight on a tie; 0 = off competes) and return
    it with the curve (weight -> score). The prior changes scores only, so the trained weights stay."""
    curve: dict[float, float] = {}
    for weight in grid:
        model.config = replace(model.config, text_prior=float(weight))
        curve[float(weight)] = float(validator(model))
    best = best_text_prior(curve)
    model.config = replace(model.config, text_prior=best)
    return best, curve


def graph_encoder_for(snapshot: GraphSnapshot) -> str:
    """``"rgcn"`` when ``snapshot``'s catalogue structure holds knowledge-graph relations (edge types
    that are not interactions, judgements or the static schema's catalogue relations,
    :func:`~kgrec.fusion.models.fused.kg_edge_types`), else ``"sage"``."""
    return "rgcn" if kg_edge_types(snapshot.structure) else "sage"


def search_examples(dataset: Dataset, features: TextFeatures, split: str, max_history: int = 1,
                    limit: int | None = None, seed: int = 0) -> SearchBatch:
    """The judged queries of ``split`` as a :class:`~kgrec.fusion.data.SearchBatch` (train queries
    carry their node index in the graph, so their own judged edges are hidden while trained on).

    Args:
        limit: keep at most this many queries, a sample drawn with ``seed`` (None = all).
    """
    frame = dataset.judgements[dataset.judgements["split"] == split]
    if limit is not None:
        ids = np.sort(frame["query_id"].astype(str).unique())
        if len(ids) > limit:
            keep = np.random.default_rng(seed).choice(ids, size=limit, replace=False)
            frame = frame[frame["query_id"].astype(str).isin(set(keep))]
    rows = {q: i for i, q in enumerate(dataset.queries["query_id"].astype(str))}
    nodes = {q: i for i, q in enumerate(dataset.snapshot.id_maps.get(QUERY_NODE_TYPE, []))} if split == "train" else None
    return judged_examples(frame, features.queries, rows, nodes, max_history=max_history)


@dataclass
class SearchSupervision:
    """Search examples that do not come from the dataset's judgements (e.g. personalised search,
    where each purchase is a query issued by its user; :func:`kgrec.search.examples.category_path_examples`).

    Attributes:
        train: the examples the search loss learns from.
        valid: the examples early stopping scores (NDCG@10, ``full`` protocol).
        exclude_history: validation drops each example's history products from the ranking.
    """

    train: SearchBatch
    valid: SearchBatch
    exclude_history: bool = False


@dataclass
class TrainedModel:
    """A trained model and how it was trained."""

    name: str
    model: Recommender
    tasks: tuple[str, ...]
    history: TrainHistory
    train_config: TrainConfig | None
    validators: dict[str, Validator] = field(default_factory=dict, repr=False)
    #: validation NDCG@10 per text-prior weight tried (:func:`choose_text_prior`; empty when not chosen)
    text_prior_curve: dict[float, float] = field(default_factory=dict)

    @property
    def text_prior(self) -> float | None:
        """The text-prior weight chosen on validation (None when none was chosen)."""
        return best_text_prior(self.text_prior_curve) if self.text_prior_curve else None

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def model_tasks(name: str, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """The subset of ``tasks`` model ``name`` can be trained and evaluated for."""
    return tuple(t for t in tasks if t in spec(name).tasks)


class ModelInit(Protocol):
    """Starts a model somewhere other than its fresh initialisation (e.g. another catalogue's
    artifact, :class:`kgrec.workflow.transfer.TransferInit`). :func:`train_model` builds the model
    with :attr:`config`, gives it :attr:`text_tower`, then calls :meth:`apply` before training."""

    #: the typed model config to build with (None: the default for the tasks).
    config: Any
    #: a trained text tower (:class:`~kgrec.encoders.tuning.TunedTextEncoder`) to start from; it
    #: re-encodes the products and keeps training when the model trains (None: as the settings say).
    text_tower: TunedTextEncoder | None

    def apply(self, model: Recommender) -> None:
        """Copy what fits into the freshly built ``model``."""
        ...


def model_inputs(entry: ModelSpec, dataset: Dataset, features: TextFeatures | None, tasks: tuple[str, ...],
                 text_tuning: str = "frozen", text_tower: TunedTextEncoder | None = None) -> ModelInputs:
    """What ``entry``'s model is built from on ``dataset`` for ``tasks``.

    ``text_tower``: a trained tower to use instead of a fresh one of mode ``text_tuning``; the
    products' text vectors are then its encodings of the catalogue."""
    snapshot = dataset.snapshot
    if entry.reads_text and features is None:
        raise WorkflowError(f"model {entry.name!r} reads product text: encode it first")
    extra: dict[str, Any] = {}
    if features is not None and "search" in tasks:
        extra["query_dim"] = features.dim
    if features is not None and entry.reads_graph and QUERY_NODE_TYPE in snapshot.id_maps:
        extra["node_features"] = {QUERY_NODE_TYPE: features.query_nodes}
    products = features.products if entry.reads_text and features is not None else None
    tuned = entry.reads_text and entry.model_class is FusedRecommender
    if tuned and text_tower is not None:
        extra["text_tower"] = text_tower
        extra["product_texts"] = list(snapshot.product_text)
        products = text_tower.encode(extra["product_texts"])
    elif tuned and text_tuning != "frozen":
        assert features is not None
        extra["text_tower"] = TunedTextEncoder(features.encoder, TextTuningConfig(mode=text_tuning))
        extra["product_texts"] = list(snapshot.product_text)
    return ModelInputs.from_snapshot(snapshot, products, **extra)


def train_model(
    name: str,
    dataset: Dataset,
    features: TextFeatures | None,
    tasks: tuple[str, ...],
    settings: ModelSettings,
    progress: bool = False,
    search: SearchSupervision | None = None,
    init: ModelInit | None = None,
) -> TrainedModel:
    """Build model ``name`` and train it on the ``tasks`` it supports, early-stopping on their
    validation NDCG@10 (mean over the tasks); the best weights (possibly the untrained start) are kept.

    ``init`` starts the model from something else than a fresh initialisation (its config, text
    tower and weights; e.g. another catalogue's artifact); with 0 epochs the model is what it made.

    Args:
        search: search examples to train and validate on instead of the dataset's judged queries
            (None = the judged queries of the split, :func:`search_examples`).

    Raises:
        WorkflowError: the model supports none of ``tasks``.
    """
    entry = spec(name)
    tasks = model_tasks(name, tasks)
    if not tasks:
        raise WorkflowError(f"model {name!r} is trained for {sorted(entry.tasks)}, and the data supports none of those here")
    train_config = settings.train_config(entry)
    config = settings.fused if settings.fused is not None else fused_config_for(tasks)
    if init is not None and init.config is not None:
        config = init.config
    elif isinstance(config, FusedConfig):
        chosen = settings.graph_encoder if settings.graph_encoder != "auto" else graph_encoder_for(dataset.snapshot)
        config = replace(config, graph_encoder=chosen)
    torch.manual_seed(train_config.seed if train_config is not None else (settings.seed or 0))
    start_tower = init.text_tower if init is not None else None
    model = build_model(name, model_inputs(entry, dataset, features, tasks, settings.text_tuning, start_tower), config)
    tower = getattr(model, "text_tower", None)
    if isinstance(model, FusedRecommender) and tower is not None and start_tower is None and settings.text_tuning == "prompt":
        model.refresh_text()  # virtual tokens change even the untrained tower's vectors
    if init is not None:
        init.apply(model)
    max_history = train_config.max_history if train_config is not None else 50
    supervised = tuple(t for t in tasks if dataset.why_not(t) is None or (t == "search" and search is not None))
    if train_config is None or train_config.epochs == 0 or not supervised:
        model.set_graph(dataset.snapshot.message_passing("train"))  # untrained: popularity counts, zero-shot text
        model.eval()
        return TrainedModel(name, model, tasks, TrainHistory(), train_config)
    validators: dict[str, Validator] = {}
    if "rec" in supervised:
        validators["rec"] = ndcg_validator(dataset.snapshot, "valid", max_history=max_history)
    task = None
    if "search" in supervised:
        if search is None:
            assert features is not None
            search = SearchSupervision(search_examples(dataset, features, "train", limit=settings.max_search_queries,
                                                       seed=train_config.seed),
                                       search_examples(dataset, features, "valid"))
        validators["search"] = search_validator(search.valid, exclude_history=search.exclude_history)
        task = SearchTask(train=search.train, weight=settings.search_weight, batch_size=settings.search_batch(tower is not None))
    history = fit(model, dataset.snapshot, train_config, progress=progress, search=task, validators=validators,
                  rec="rec" in supervised)
    model.eval()
    curve: dict[float, float] = {}
    if isinstance(model, FusedRecommender) and model.config.use_text and "rec" in validators:
        if settings.text_prior is None:
            _, curve = choose_text_prior(model, validators["rec"])
        else:
            model.config = replace(model.config, text_prior=float(settings.text_prior))
        # on top of the chosen prior: `--cold-boost X` is then exactly the frontier's row X
        model.config = replace(model.config, cold_text_prior=float(settings.cold_boost))
    return TrainedModel(name, model, tasks, history, train_config, validators, curve)


#: Names of the registered models, for help texts.
MODEL_CHOICES = ", ".join(MODELS)
