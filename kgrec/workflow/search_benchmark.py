"""Search benchmarks on the one workflow path, with what ``kgrec evaluate`` does not run.

Home Depot (graded human judgements) is converted to kgrec tables (:mod:`kgrec.ingest.homedepot`),
ingested (:func:`kgrec.workflow.ingest.ingest_files`) and split by query
(:func:`kgrec.workflow.data.load_dataset`); text comes from :func:`kgrec.workflow.features.encode_text`,
models from :func:`kgrec.workflow.models.train_model`, and every row is scored by
:class:`kgrec.workflow.evaluate.SearchBench`, as in :func:`kgrec.workflow.evaluate.evaluate_store`.
Beyond ``kgrec evaluate``, :func:`run_search_benchmark` trains the fused model in several
knowledge-sedimentation modes of its BERT in one run (:mod:`kgrec.encoders.tuning`), each with its
own batch size and epochs, mixes each with BM25, and can add a cross-encoder second stage
(:mod:`kgrec.search.rerank`).

:func:`run_personalized_search` is the personalised product-search protocol of HEM / ZAM on a
recommendation split: each purchase is a search issued by its user.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from kgrec.evaluation.recommendation import evaluate
from kgrec.evaluation.results import SearchResult, search_results_markdown  # noqa: F401 - re-exported
from kgrec.evaluation.search import evaluate_search, model_scores
from kgrec.fusion.data import SearchBatch
from kgrec.fusion.models import FusedConfig, FusedRecommender
from kgrec.fusion.train import TrainConfig
from kgrec.ingest.homedepot import convert_homedepot
from kgrec.kg.export import GraphSnapshot
from kgrec.kg.schema import CATEGORY_SEPARATOR
from kgrec.kg.store import GraphStore
from kgrec.search.bm25 import BM25Ranker
from kgrec.search.examples import anonymous, category_path_examples, category_query
from kgrec.search.rerank import CrossEncoderConfig, CrossEncoderReranker
from kgrec.workflow.data import Dataset, SplitConfig, load_dataset
from kgrec.workflow.evaluate import SEARCH_BASELINES, ScoredRanker, SearchBench
from kgrec.workflow.features import TextFeatures
from kgrec.workflow.ingest import ingest_files
from kgrec.workflow.models import ModelSettings, SearchSupervision, TrainedModel, fused_config_for, search_examples, train_model
from kgrec.workflow.store import WorkflowError, open_store

#: Baselines and fused variants, in table order (``fused`` runs once per tuning mode;
#: ``hybrid`` mixes each fused model with BM25, :mod:`kgrec.search.hybrid`).
SEARCH_MODELS = ("random", "bm25", "text-zero-shot", "text-only", "graph-only", "fused", "hybrid")


@dataclass
class HomeDepotData:
    """Home Depot in a store, split: the :class:`~kgrec.workflow.data.Dataset` and the counts of
    conversion (``rows_read``, ``loaded``, ``rejected``, ``queries``, ``products``, ``reject_reasons``)
    and ingest (``counts["ingest"]``: ``read``, ``loaded``, ``rejected``)."""

    dataset: Dataset
    counts: dict
    store: Path


def homedepot_data(src: str | Path, workdir: str | Path, split: SplitConfig | None = None) -> HomeDepotData:
    """Home Depot ``train.csv(.zip)`` -> tables (``WORKDIR/tables``) -> embedded store (``WORKDIR/store``)
    -> dataset with the query-disjoint split of ``split`` (default 80/10/10, seed 0).

    Grades are the raters' 1..3 mean minus 1 (0 = irrelevant, 2 = exact match), as the converter writes them."""
    workdir = Path(workdir)
    counts: dict = dict(convert_homedepot(src, workdir / "tables"))
    report = ingest_files([workdir / "tables"], workdir / "store").report
    counts["ingest"] = {"read": report.read, "loaded": report.loaded, "rejected": report.rejected}
    store = open_store(workdir / "store")
    try:
        dataset = load_dataset(store, split)
    finally:
        store.close()
    return HomeDepotData(dataset, counts, workdir / "store")


def search_settings(**overrides) -> ModelSettings:
    """The benchmark's default :class:`~kgrec.workflow.models.ModelSettings`: the search-only fused
    config (:func:`~kgrec.workflow.models.fused_config_for`), 8 epochs at lr 1e-3 with patience 2,
    512 queries per step in every mode; ``overrides``: fields to replace."""
    base = ModelSettings(fused=fused_config_for(("search",)), train=TrainConfig(epochs=8, lr=1e-3, patience=2),
                         search_batch_size=512, tuned_batch_size=512)
    return replace(base, **overrides)


@dataclass
class SearchBenchmarkConfig:
    """What :func:`run_search_benchmark` trains and how.

    Attributes:
        models: names from :data:`SEARCH_MODELS` (``hybrid`` needs ``fused``).
        modes: knowledge-sedimentation modes the fused model runs in (``frozen``, ``full``,
            ``lora``, ``ia3``, ``prompt``); the other models run ``frozen``.
        settings: configs and trainer settings of every model (:func:`search_settings`): the frozen
            modes train with ``settings.search_batch_size`` queries per step, the modes whose BERT
            trains with ``settings.tuned_batch_size`` (their steps cost BERT passes over the batch's
            texts); ``settings.max_search_queries`` caps the train queries.
        tuned_epochs: epochs of the modes whose BERT trains (None = the frozen modes' epochs).
        ks: metric cut-offs. bootstrap: resamples of the paired tests against BM25.
        cross_encoder: add a second stage: a cross-encoder re-orders the first stage's top
            ``rerank_depth`` (full protocol) and the judged products (rerank protocol). The first
            stage is the last fused model, mixed with BM25 when ``hybrid`` ran. The cross-encoder
            trains on ``cross_encoder_queries`` of the fused model's train queries, each with its
            judged products and its first-stage top ``rerank_depth`` (unjudged ones as grade-0
            negatives: the candidates it will re-order at test time).
    """

    models: tuple[str, ...] = SEARCH_MODELS
    modes: tuple[str, ...] = ("frozen",)
    settings: ModelSettings = field(default_factory=search_settings)
    tuned_epochs: int | None = None
    ks: tuple[int, ...] = (3, 10)
    bootstrap: int = 2000
    cross_encoder: bool = False
    cross_encoder_queries: int = 1000
    rerank_depth: int = 20

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in SEARCH_MODELS]
        if unknown:
            raise WorkflowError(f"unknown search models {unknown}; choose from {list(SEARCH_MODELS)}")
        if "hybrid" in self.models and "fused" not in self.models:
            raise WorkflowError("the hybrid model mixes the fused model with BM25: add 'fused' to the models")
        for mode in self.modes:
            replace(self.settings, text_tuning=mode)  # an unknown mode raises WorkflowError naming the choices

    @property
    def seed(self) -> int:
        """The run's seed: ``settings.seed``, else the trainer's."""
        if self.settings.seed is not None:
            return self.settings.seed
        return self.settings.train.seed if self.settings.train is not None else 0

    def mode_settings(self, mode: str) -> ModelSettings:
        """The settings of a model whose BERT runs in ``mode`` (its epochs: ``tuned_epochs`` when BERT trains)."""
        if mode == "frozen" or self.tuned_epochs is None:
            return replace(self.settings, text_tuning=mode)
        return replace(self.settings, text_tuning=mode, epochs=self.tuned_epochs)


def _training_facts(trained: TrainedModel, settings: ModelSettings) -> dict:
    """What a benchmark row records about training besides the common row (config, batch size, speed)."""
    facts: dict = {"config": trained.model.config_dict()}
    if trained.train_config is None:
        return facts
    tower = getattr(trained.model, "text_tower", None)
    facts.update({"batch_size": settings.search_batch(tower is not None),
                  "examples_per_second": round(trained.history.examples_per_second, 1),
                  "train_step_seconds": round(trained.history.train_seconds, 1)})
    if tower is not None:
        facts["text_tower"] = {**tower.parameter_counts(), "lr": tower.config.learning_rate()}
    return facts


def _say(progress: bool, row: SearchResult) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"{row.model}: test ndcg@10 full {row.test['full'].get('ndcg@10', float('nan')):.4f} "
                   f"rerank {row.test['rerank'].get('ndcg@10', float('nan')):.4f} ({row.train_seconds:.0f} s)")


def run_search_benchmark(dataset: Dataset, features: TextFeatures, config: SearchBenchmarkConfig,
                         progress: bool = True) -> list[SearchResult]:
    """Train and evaluate every configured model on ``dataset``'s query-disjoint split; one row
    per model (the fused model once per mode, named ``fused[MODE]`` beyond ``frozen``), the hybrid
    rows at ``hybrid``'s place, the cross-encoder row last.

    Raises:
        WorkflowError: the dataset cannot be evaluated for search (see :meth:`Dataset.why_not`).
    """
    dataset.require(("search",))
    bench = SearchBench(dataset, features, config.ks, config.seed, config.bootstrap)
    results: list[SearchResult] = []
    hybrids: list[SearchResult] = []  # built right after each fused model, listed at "hybrid"
    first_stage: ScoredRanker | None = None  # the last fused model (or its hybrid): the cross-encoder's candidates
    for name in config.models:
        if name in SEARCH_BASELINES:
            results.append(bench.baseline_row(name))
            _say(progress, results[-1])
            continue
        if name == "hybrid":
            results.extend(hybrids)
            continue
        for mode in config.modes if name == "fused" else ("frozen",):
            settings = config.mode_settings(mode)
            trained = train_model(name, dataset, features, ("search",), settings, progress=progress)
            scored = bench.model_row(trained, name if mode == "frozen" else f"{name}[{mode}]", _training_facts(trained, settings))
            results.append(scored.row)
            _say(progress, scored.row)
            if name == "fused":
                first_stage = scored
                if "hybrid" in config.models:
                    first_stage = bench.hybrid_row(scored)
                    hybrids.append(first_stage.row)
                    _say(progress, first_stage.row)
            del trained
    if config.cross_encoder and first_stage is not None:
        results.append(_cross_encoder_row(bench, dataset, features, first_stage, config, progress))
        _say(progress, results[-1])
    return results


def rerank_training_pairs(batch: SearchBatch, first: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training pairs for a re-ranker: ``(query rows [N], products [N], grades [N])``.

    Each query of ``batch`` contributes its judged products with their grades, then the
    products of its first-stage top ``depth`` (``first``: ``[B, P]`` scores) that it did not
    judge, at grade 0: the candidates a re-ranker re-orders at test time, so it learns to push
    unjudged look-alikes down, not only to order judged products among themselves."""
    judged = batch.products >= 0
    rows = judged.nonzero()[:, 0]
    products, grades = batch.products[judged], batch.grades[judged].float()
    top = torch.topk(first, min(depth, first.shape[1]), dim=1).indices
    known = (top.unsqueeze(2) == batch.products.unsqueeze(1)).any(2)
    extra_rows = torch.arange(len(batch)).unsqueeze(1).expand_as(top)[~known]
    order = torch.argsort(torch.cat([rows, extra_rows]), stable=True)  # group each query's pairs
    return (torch.cat([rows, extra_rows])[order], torch.cat([products, top[~known]])[order],
            torch.cat([grades, torch.zeros(int((~known).sum()))])[order])


def _cross_encoder_row(bench: SearchBench, dataset: Dataset, features: TextFeatures, first_stage: ScoredRanker,
                       config: SearchBenchmarkConfig, progress: bool) -> SearchResult:
    """Second stage: a cross-encoder (on the features' BERT) re-orders the first stage's test top
    ``rerank_depth`` ahead of everything else, and scores each test query's judged products."""
    start = time.perf_counter()
    train = search_examples(dataset, features, "train", limit=config.settings.max_search_queries,
                            seed=config.seed)[: config.cross_encoder_queries]
    rows, products, grades = rerank_training_pairs(train, first_stage.scores(train), config.rerank_depth)
    reranker = CrossEncoderReranker(features.encoder, CrossEncoderConfig(seed=config.seed))
    titles, texts = dataset.titles, list(bench.test.texts or [])
    history = reranker.fit([train.texts[int(r)] for r in rows], [titles[int(p)] for p in products],  # type: ignore[index]
                           grades, rows, progress=progress)
    depth = min(config.rerank_depth, bench.num_products)
    top = torch.topk(first_stage.test, depth, dim=1).indices
    ce = reranker.rerank_scores(texts, top, titles)
    full = torch.full_like(first_stage.test, float("-inf"))
    full.scatter_(1, top, ce - ce.min() + 1.0)  # the re-ordered top-K ahead of everything else
    judged = reranker.rerank_scores(texts, bench.test.products, titles)
    extra = {"train_queries": len(train), "train_pairs": int(len(rows)), "negatives": int((grades == 0).sum()),
             "fit": {k: v for k, v in history.items() if k != "loss"}}
    trainable = sum(p.numel() for p in reranker.parameters() if p.requires_grad)
    return bench.row(f"{first_stage.row.model} + cross-encoder@{depth}", reranker.config.tuning.mode, full, None,
                     time.perf_counter() - start, trainable, reranker.config.epochs, extra, rerank_scores=judged)


# --------------------------------------------------------------------------- personalised search

#: Rows of :func:`run_personalized_search`, in table order.
PERSONAL_MODELS = ("bm25", "text-zero-shot", "fused (rec only)", "fused (multi-task, anonymous)", "fused (multi-task, personalised)")


def category_queries(store: GraphStore, snapshot: GraphSnapshot) -> list[str]:
    """``[P]`` the HEM / ZAM query of each product of ``snapshot``: its category path's levels, root
    dropped (:func:`kgrec.search.examples.category_query`); ``""`` for a product without a path."""
    products = store.nodes("Product")
    if "category_path" not in products.columns:
        return [""] * snapshot.num_products
    paths = products.set_index(products["product_id"].astype(str))["category_path"]
    paths = paths.reindex(snapshot.id_maps["product"]).fillna("").astype(str)
    return [category_query(p.split(CATEGORY_SEPARATOR)) for p in paths]


def run_personalized_search(
    dataset: Dataset,
    features: TextFeatures,
    product_queries: list[str],
    query_vectors: torch.Tensor,
    settings: ModelSettings,
    ks: tuple[int, ...] = (10,),
    progress: bool = True,
) -> tuple[list[SearchResult], dict[str, dict[str, float]]]:
    """Personalised product search on a recommendation split (HEM / ZAM protocol).

    Every interaction is a search: the query is the purchased product's category path
    (``product_queries[target]``, ``query_vectors``: ``[P, d]`` their text vectors), issued by the
    user with the history before it; the target is the one relevant product. Test queries are the
    test split's (leave-one-out) targets, ranked against all products with the user's history
    excluded — the recommender's protocol.

    Compared in one run: BM25 and the untrained encoder on the query alone; the fused model
    trained for recommendation only (queries through its untrained query tower, with the user
    vector at weight 0.3); the same model trained multi-task (recommendation + search, one product
    tower; :func:`~kgrec.workflow.models.train_model` with these examples), scored without and
    with the user. Returns the rows and both models' recommendation NDCG@10 (valid/test), so the
    cost of sharing the tower is visible.
    """
    snapshot = dataset.snapshot
    hist = (settings.fused or FusedConfig()).max_history
    examples = {s: category_path_examples(snapshot, s, product_queries, query_vectors, hist) for s in ("train", "valid", "test")}
    test = examples["test"]

    def score(scores, batch: SearchBatch = test) -> dict[str, dict[str, float]]:
        return {"full": evaluate_search(scores, batch, ks=ks, protocol="full", exclude_history=True)}

    start = time.perf_counter()
    bm25 = BM25Ranker(list(snapshot.product_text))
    results = [SearchResult("bm25", "-", score(bm25.score_all(list(test.texts or []))), None,
                            round(time.perf_counter() - start, 1), 0, 0)]
    q = torch.nn.functional.normalize(test.queries, dim=-1)
    results.append(SearchResult("text-zero-shot", "frozen", score(q @ torch.nn.functional.normalize(features.products, dim=-1).T),
                                None, 0.0, 0, 0))
    rec_metrics = {}
    search = SearchSupervision(examples["train"], examples["valid"], exclude_history=True)
    for label, tasks in (("fused (rec only)", ("rec",)), ("fused (multi-task)", ("rec", "search"))):
        trained = train_model("fused", dataset, features, tasks, settings, progress=progress,
                              search=search if "search" in tasks else None)
        model, history = trained.model, trained.history
        assert isinstance(model, FusedRecommender)
        rec_metrics[label] = {s: evaluate(model, snapshot, s, (10,), hist).metrics["ndcg@10"] for s in ("valid", "test")}
        model.set_graph(snapshot.message_passing("test"))  # what a test-time search sees
        cost = (round(history.seconds, 1), trained.trainable_parameters, len(history.losses))
        if "search" not in tasks:
            with torch.no_grad():  # the untrained query tower and an untrained (zero) user weight: add the user at 0.3
                model.search_user_weight.fill_(0.3)
            results.append(SearchResult(label, "frozen", score(model_scores(model)), None, *cost))
        else:
            for suffix, batch in (("anonymous", anonymous(test)), ("personalised", test)):
                results.append(SearchResult(f"fused (multi-task, {suffix})", "frozen", score(model_scores(model), batch),
                                            history.best("search"), *cost,
                                            {"search_user_weight": float(model.search_user_weight.detach())}))
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"{label}: search test ndcg@10 {results[-1].test['full']['ndcg@10']:.4f}, rec test ndcg@10 "
                       f"{rec_metrics[label]['test']:.4f}")
    return results, rec_metrics


def personal_results_markdown(results: list[SearchResult], rec: dict[str, dict[str, float]], k: int = 10) -> str:
    """Personalised-search rows (full ranking, history excluded) as a markdown table."""
    lines = [f"| model | ndcg@{k} | mrr@{k} | recall@{k} | train s |", "|---|---|---|---|---|"]
    best = {m: max(r.test["full"][f"{m}@{k}"] for r in results) for m in ("ndcg", "mrr", "recall")}
    for r in results:
        cells = []
        for m in ("ndcg", "mrr", "recall"):
            v = r.test["full"][f"{m}@{k}"]
            cells.append(f"**{v:.4f}**" if v == best[m] else f"{v:.4f}")
        lines.append(f"| {r.model} | " + " | ".join(cells) + f" | {r.train_seconds:.0f} |")
    lines.append("")
    lines.append("| recommendation (same models) | valid ndcg@10 | test ndcg@10 |")
    lines.append("|---|---|---|")
    for label, scores in rec.items():
        lines.append(f"| {label} | {scores['valid']:.4f} | {scores['test']:.4f} |")
    return "\n".join(lines)
