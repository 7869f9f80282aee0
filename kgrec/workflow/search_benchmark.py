"""Train and evaluate search rankers side by side on one query-disjoint split.

Home Depot (graded human judgements) goes the way every catalogue goes: converted to
kgrec tables (:mod:`kgrec.ingest.homedepot`), ingested into a knowledge graph, exported
(:mod:`kgrec.kg.export`), split by query (:func:`kgrec.kg.judgements.query_disjoint_split`). Then
in one run: BM25 (bm25s), the untrained text encoder (cosine), and the fused scorer as
text-only, graph-only and text+graph, the last in each knowledge-sedimentation mode of
its BERT (frozen with cached vectors, full fine-tuning, LoRA, IA3, prompt tuning;
:mod:`kgrec.encoders.tuning`). Every model is scored on the same test queries with two
protocols: ``full`` (rank the whole catalogue; unjudged products gain 0) and ``rerank``
(order each query's judged products).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kgrec.evaluation.recommendation import ndcg_validator
from kgrec.evaluation.results import SearchResult, search_results_markdown  # noqa: F401 - re-exported
from kgrec.evaluation.search import evaluate_search, model_scores, search_validator
from kgrec.evaluation.search import search_metrics_per_query as evaluate_search_per_query
from kgrec.evaluation.search_metrics import mean_search_metrics
from kgrec.evaluation.significance import paired_test
from kgrec.fusion.data import SearchBatch
from kgrec.fusion.models import FusedConfig, FusedRecommender
from kgrec.fusion.train import SearchTask, TrainConfig, fit
from kgrec.kg.export import GraphSnapshot
from kgrec.kg.judgements import query_disjoint_split
from kgrec.search.examples import judged_examples, search_graph
from kgrec.search.hybrid import HybridSearch, choose_lexical_weight, mix

#: Baselines and fused variants, in table order (``fused`` runs once per tuning mode;
#: ``hybrid`` mixes each fused model with BM25, :mod:`kgrec.search.hybrid`).
SEARCH_MODELS = ("random", "bm25", "text-zero-shot", "text-only", "graph-only", "fused", "hybrid")
PROTOCOLS = ("full", "rerank")


@dataclass
class SearchData:
    """A judged search collection inside a knowledge graph.

    Attributes:
        snapshot: the exported graph (products and whatever else the store holds).
        judgements: ``query_id``, ``query``, ``product`` (index), ``label``, ``grade``, ``split``.
        queries: one row per query: ``query_id``, ``query``, ``split``.
        titles: ``[P]`` product texts the rankers read (the catalogue's titles).
        counts: conversion and ingest counts (rows read / loaded / rejected ...).
    """

    snapshot: GraphSnapshot
    judgements: pd.DataFrame
    queries: pd.DataFrame
    titles: list[str]
    counts: dict = field(default_factory=dict)


def homedepot_data(src: str | Path, workdir: str | Path, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> SearchData:
    """Home Depot -> tables -> embedded knowledge graph -> snapshot + split judgements.

    Grades are the raters' 1..3 mean minus 1 (0 = irrelevant, 2 = exact match), as the converter writes them."""
    from kgrec.ingest.homedepot import convert_homedepot
    from kgrec.ingest.pipeline import IngestConfig, ingest
    from kgrec.ingest.sources import discover
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_judgements, export_snapshot

    workdir = Path(workdir)
    counts = convert_homedepot(src, workdir / "tables")
    store = EmbeddedStore(workdir / "store")
    report = ingest(store, discover([workdir / "tables"]).sources, IngestConfig(state_dir=workdir / "ingest-state"))
    counts["ingest"] = {"read": report.read, "loaded": report.loaded, "rejected": report.rejected}
    snapshot = export_snapshot(store, require_interactions=False)
    judgements = export_judgements(store, snapshot)
    titles = store.nodes("Product").set_index("product_id")["title"].astype(str)
    titles = titles.reindex(snapshot.id_maps["product"]).fillna("").tolist()
    judgements["grade"] = judgements["label"].astype(float)  # the converter wrote grades 0..2
    judgements["split"] = query_disjoint_split(judgements["query_id"], fractions, seed)
    queries = judgements.drop_duplicates("query_id")[["query_id", "query", "split"]].reset_index(drop=True)
    return SearchData(snapshot, judgements, queries, titles, counts)


@dataclass
class SearchBenchmarkConfig:
    """What :func:`run_search_benchmark` trains and how.

    Attributes:
        models: names from :data:`SEARCH_MODELS`.
        modes: knowledge-sedimentation modes the fused model runs in (``kgrec.encoders.tuning``).
        train: trainer settings (epochs, lr of the non-BERT parts, patience, device).
        batch_size: queries per step (default 512: a step costs about the same for any batch, the catalogue-wide parts dominate).
        fused: architecture of the text/graph models (the search graph feeds query and
            product text into the GNN, so ``graph_text_input`` defaults to True; products and
            query nodes are feature-only, ``feature_ids=False``: most relevant test products
            were judged for no train query; the gate starts at 95% text, ``gate_bias=3.0``;
            fine-tuned towers add the whole-catalogue loss on cached text, ``catalogue_loss=1.0``).
        tuned_batch_size, tuned_epochs: batch size and epochs of the fused models whose BERT
            trains (modes other than ``frozen``; default None: ``batch_size`` / ``train.epochs``).
            Their steps cost BERT passes over the batch's texts and their softmax runs over the
            batch's products, so smaller, more numerous batches suit them.
        max_train_queries: train on at most this many train queries (None = all).
        ks: metric cut-offs.
        cross_encoder: add a second stage: a cross-encoder (:mod:`kgrec.search.rerank`) re-orders the
            first stage's top ``rerank_depth`` (full protocol) and the judged products (rerank
            protocol). The first stage is the last fused model, mixed with BM25 when ``hybrid``
            ran. The cross-encoder trains on ``cross_encoder_queries`` train queries, each with
            its judged products and its first-stage top ``rerank_depth`` (unjudged ones as
            grade-0 negatives: the candidates it will re-order at test time).
    """

    models: tuple[str, ...] = SEARCH_MODELS
    modes: tuple[str, ...] = ("frozen",)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, lr=1e-3, patience=2))
    batch_size: int = 512
    tuned_batch_size: int | None = None
    tuned_epochs: int | None = None
    fused: FusedConfig = field(
        default_factory=lambda: FusedConfig(graph_text_input=True, personalize_search=False, feature_ids=False,
                                            gate_bias=3.0, catalogue_loss=1.0)
    )
    max_train_queries: int | None = None
    ks: tuple[int, ...] = (3, 10)
    cross_encoder: bool = False
    cross_encoder_queries: int = 1000
    rerank_depth: int = 20

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in SEARCH_MODELS]
        if unknown:
            raise ValueError(f"unknown search models {unknown}; choose from {list(SEARCH_MODELS)}")
        if "hybrid" in self.models and "fused" not in self.models:
            raise ValueError("the hybrid model mixes the fused model with BM25: add 'fused' to the models")


def _split_examples(data: SearchData, split: str, vectors: torch.Tensor, index: dict[str, int],
                    nodes: dict[str, int] | None, limit: int | None = None, seed: int = 0) -> SearchBatch:
    frame = data.judgements[data.judgements["split"] == split]
    if limit is not None:
        ids = np.sort(frame["query_id"].unique())
        if len(ids) > limit:
            keep = np.random.default_rng(seed).choice(ids, size=limit, replace=False)
            frame = frame[frame["query_id"].isin(set(keep))]
    return judged_examples(frame, vectors, index, nodes)


def run_search_benchmark(
    data: SearchData,
    encoder,
    config: SearchBenchmarkConfig,
    cache=None,
    progress: bool = True,
) -> list[SearchResult]:
    """Train and evaluate every configured model on ``data``'s query-disjoint split.

    Args:
        encoder: a :class:`~kgrec.encoders.text.TextEncoder` (queries and titles, all models).
        cache: optional :class:`~kgrec.encoders.text.EmbeddingCache` for the frozen vectors.
    """
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder
    from kgrec.search.bm25 import BM25Ranker

    snapshot = data.snapshot
    titles = list(data.titles)
    product_vectors = encoder.encode(titles, cache=cache, progress=progress)
    query_vectors = encoder.encode(list(data.queries["query"]), cache=cache, progress=progress)
    index = {q: i for i, q in enumerate(data.queries["query_id"])}
    train_ids = sorted(data.queries.loc[data.queries["split"] == "train", "query_id"])
    nodes = {q: i for i, q in enumerate(train_ids)}  # train queries become graph nodes
    graph = search_graph(snapshot.message_passing("train"), data.judgements, nodes)
    node_vectors = query_vectors[torch.as_tensor([index[q] for q in train_ids], dtype=torch.long)]
    train = _split_examples(data, "train", query_vectors, index, nodes, config.max_train_queries, config.train.seed)
    valid = _split_examples(data, "valid", query_vectors, index, None)
    test = _split_examples(data, "test", query_vectors, index, None)
    ks = config.ks

    start = time.perf_counter()
    bm25 = BM25Ranker(titles) if {"bm25", "hybrid"} & set(config.models) else None
    bm25_test = bm25.score_all(test.texts) if bm25 is not None else None
    bm25_seconds = round(time.perf_counter() - start, 1)  # index the titles + score the test queries
    reference = (evaluate_search_per_query(bm25_test, test, ks=ks, protocol="full")["ndcg@10"]
                 if bm25_test is not None and 10 in ks else None)

    def score(scores, extra: dict | None = None) -> dict[str, dict[str, float]]:
        """Test metrics per protocol; with ``extra``, the paired test against BM25 (full, NDCG@10)."""
        per_query = {p: evaluate_search_per_query(scores, test, ks=ks, protocol=p) for p in PROTOCOLS}
        if extra is not None and reference is not None:
            extra["vs_bm25_ndcg@10"] = paired_test(per_query["full"]["ndcg@10"], reference, seed=config.train.seed).as_dict()
        return {p: mean_search_metrics(v) for p, v in per_query.items()}

    results: list[SearchResult] = []
    hybrid_rows: list[SearchResult] = []  # built right after each fused model, listed at "hybrid"
    bm25_valid = None
    first_stage = None  # (model, mode, score fn, its test scores, name) of the last fused model
    for name in config.models:
        start = time.perf_counter()
        if name == "random":  # the floor: the rerank protocol is near-saturated on judged lists
            g = torch.Generator().manual_seed(config.train.seed)
            scores = torch.rand(len(test), snapshot.num_products, generator=g)
            results.append(SearchResult(name, "-", score(scores), None, 0.0, 0, 0))
        elif name == "bm25":
            results.append(SearchResult(name, "-", score(bm25_test), None, bm25_seconds, 0, 0))
        elif name == "hybrid":
            results.extend(hybrid_rows)
        elif name == "text-zero-shot":
            q = torch.nn.functional.normalize(test.queries, dim=-1)
            p = torch.nn.functional.normalize(product_vectors, dim=-1)
            results.append(SearchResult(name, "frozen", score(q @ p.T), None, 0.0, 0, 0))
        else:
            modes = config.modes if name == "fused" else ("frozen",)
            for mode in modes:
                use_text, use_graph = {"text-only": (True, False), "graph-only": (False, True), "fused": (True, True)}[name]
                fused_cfg = replace(config.fused, use_text=use_text, use_graph=use_graph,
                                    graph_text_input=config.fused.graph_text_input and use_text)
                tower = None
                if mode != "frozen":
                    tower = TunedTextEncoder(encoder, TextTuningConfig(mode=mode))
                torch.manual_seed(config.train.seed)
                model = FusedRecommender(
                    0, snapshot.num_products, fused_cfg,
                    text_features=product_vectors if use_text else None,
                    num_nodes={**snapshot.num_nodes, "query": len(nodes)} if use_graph else None,
                    edge_types=list(graph.edge_types) if use_graph else None,
                    query_dim=query_vectors.shape[1],
                    node_features={"query": node_vectors} if use_graph else None,
                    text_tower=tower, product_texts=titles if tower is not None else None,
                )
                model.name = name if mode == "frozen" else f"{name}[{mode}]"
                if tower is not None and mode == "prompt":
                    model.refresh_text()  # virtual tokens change even the untrained tower's vectors
                batch_size, train_config = config.batch_size, config.train
                if tower is not None and tower.trainable:
                    batch_size = config.tuned_batch_size or batch_size
                    train_config = replace(train_config, epochs=config.tuned_epochs or train_config.epochs)
                task = SearchTask(train=train, batch_size=batch_size, graph=graph)
                history = fit(model, snapshot, train_config, progress=progress, search=task,
                              validators={"search": search_validator(valid)})
                model.eval()
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                extra = {"config": asdict(fused_cfg), "batch_size": batch_size,
                         "examples_per_second": round(history.examples_per_second, 1),
                         "train_step_seconds": round(history.train_seconds, 1), "valid_curve": history.valid_search_ndcg}
                test_scores = model_scores(model)(test)
                test_metrics = score(test_scores, extra)
                if tower is not None:
                    extra["text_tower"] = {**tower.parameter_counts(), "lr": tower.config.learning_rate()}
                best = history.best("search")
                results.append(SearchResult(model.name, mode, test_metrics, best, round(history.seconds, 1),
                                            trainable, len(history.losses), extra))
                if progress:
                    from tqdm.auto import tqdm

                    tqdm.write(f"{model.name}: test ndcg@10 full {test_metrics['full']['ndcg@10']:.4f} "
                               f"rerank {test_metrics['rerank']['ndcg@10']:.4f} ({history.seconds:.0f} s)")
                if name == "fused":
                    first_stage = (model, mode, model_scores(model), test_scores, model.name)
                    if "hybrid" in config.models:
                        start = time.perf_counter()
                        if bm25_valid is None:
                            bm25_valid = bm25.score_all(valid.texts)
                        choice = choose_lexical_weight(model_scores(model)(valid), bm25_valid, valid)
                        extra = {"lexical_weight": choice.weight, "valid_curve": {str(w): v for w, v in choice.curve.items()}}
                        test_scores = mix(test_scores, bm25_test, choice.weight)
                        hybrid_metrics = score(test_scores, extra)
                        hybrid_rows.append(SearchResult(f"{model.name} + bm25", mode, hybrid_metrics, choice.best,
                                                        round(time.perf_counter() - start, 1), 0, 0, extra))
                        first_stage = (model, mode, HybridSearch(model_scores(model), bm25, choice.weight), test_scores,
                                       f"{model.name} + bm25")
                        if progress:
                            from tqdm.auto import tqdm

                            tqdm.write(f"{model.name} + bm25 (w={choice.weight}): test ndcg@10 full "
                                       f"{hybrid_metrics['full']['ndcg@10']:.4f}")
                del tower, test_scores
        if progress and name in ("random", "bm25", "text-zero-shot"):
            from tqdm.auto import tqdm

            r = results[-1]
            tqdm.write(f"{name}: test ndcg@10 full {r.test['full']['ndcg@10']:.4f} rerank {r.test['rerank']['ndcg@10']:.4f}")
    if config.cross_encoder and first_stage is not None:
        model, mode, scores_of, first_test, first_name = first_stage
        results.append(_cross_encoder_row(data, encoder, config, scores_of, first_test, first_name, mode, train, test,
                                          score, progress, device=model.device))
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


def _cross_encoder_row(data, encoder, config, first_stage, first, first_name, mode, train, test, score, progress,
                       device=None) -> SearchResult:
    """Second stage: a cross-encoder re-orders the first stage's top ``rerank_depth`` (``first``:
    the first stage's ``[B, P]`` test scores; ``first_stage`` scores the training queries)."""
    from kgrec.search.rerank import CrossEncoderConfig, CrossEncoderReranker

    start = time.perf_counter()
    subset = train[: config.cross_encoder_queries]
    rows, products, grades = rerank_training_pairs(subset, first_stage(subset), config.rerank_depth)
    reranker = CrossEncoderReranker(encoder, CrossEncoderConfig(seed=config.train.seed))
    if device is not None:
        reranker.to(device)
    history = reranker.fit([subset.texts[int(r)] for r in rows], [data.titles[int(p)] for p in products],
                           grades, rows, progress=progress)
    depth = min(config.rerank_depth, first.shape[1])
    top = torch.topk(first, depth, dim=1).indices
    ce = reranker.rerank_scores(test.texts, top, data.titles)
    full = torch.full_like(first, float("-inf"))
    full.scatter_(1, top, ce - ce.min() + 1.0)  # the re-ordered top-K ahead of everything else
    judged_scores = reranker.rerank_scores(test.texts, test.products, data.titles)
    extra = {"train_queries": len(subset), "train_pairs": int(len(rows)), "negatives": int((grades == 0).sum()),
             "fit": {k: v for k, v in history.items() if k != "loss"}}
    metrics = score(full, extra)
    metrics["rerank"] = evaluate_search(judged_scores, test, ks=config.ks, protocol="rerank")
    trainable = sum(p.numel() for p in reranker.parameters() if p.requires_grad)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(f"cross-encoder over {first_name}: test ndcg@10 full {metrics['full']['ndcg@10']:.4f} "
                   f"rerank {metrics['rerank']['ndcg@10']:.4f}")
    return SearchResult(f"{first_name} + cross-encoder@{depth}", reranker.config.tuning.mode, metrics, None,
                        round(time.perf_counter() - start, 1), trainable, reranker.config.epochs, extra)


# --------------------------------------------------------------------------- personalised search

#: Rows of :func:`run_personalized_search`, in table order.
PERSONAL_MODELS = ("bm25", "text-zero-shot", "fused (rec only)", "fused (multi-task, anonymous)", "fused (multi-task, personalised)")


def run_personalized_search(
    snapshot: GraphSnapshot,
    product_queries: list[str],
    product_vectors: torch.Tensor,
    query_vectors: torch.Tensor,
    train: TrainConfig,
    fused: FusedConfig | None = None,
    search_batch_size: int = 1024,
    ks: tuple[int, ...] = (10,),
    progress: bool = True,
) -> tuple[list[SearchResult], dict[str, dict[str, float]]]:
    """Personalised product search on a recommendation split (HEM / ZAM protocol).

    Every interaction is a search: the query is the purchased product's category path
    (``product_queries[target]``), issued by the user with the history before it; the target
    is the one relevant product. Test queries are the test split's (leave-one-out) targets,
    ranked against all products with the user's history excluded — the recommender's protocol.

    Compared in one run: BM25 and the untrained encoder on the query alone; the fused model
    trained for recommendation only (queries through its untrained query tower, with the user
    vector); the same model trained multi-task (recommendation + search, one product tower),
    scored without and with the user. Returns the rows and the multi-task model's
    recommendation metrics next to the rec-only model's (valid/test NDCG@10), so the cost
    of sharing the tower is visible.
    """
    from kgrec.evaluation.recommendation import evaluate
    from kgrec.search.bm25 import BM25Ranker
    from kgrec.search.examples import anonymous, category_path_examples

    fused = fused or FusedConfig()
    hist = fused.max_history
    examples = {s: category_path_examples(snapshot, s, product_queries, query_vectors, hist) for s in ("train", "valid", "test")}
    test = examples["test"]

    def score(scores, batch=test) -> dict[str, dict[str, float]]:
        return {"full": evaluate_search(scores, batch, ks=ks, protocol="full", exclude_history=True)}

    results = []
    start = time.perf_counter()
    bm25 = BM25Ranker(list(snapshot.product_text))
    results.append(SearchResult("bm25", "-", score(bm25.score_all(test.texts)), None, round(time.perf_counter() - start, 1), 0, 0))
    q = torch.nn.functional.normalize(test.queries, dim=-1)
    results.append(SearchResult("text-zero-shot", "frozen", score(q @ torch.nn.functional.normalize(product_vectors, dim=-1).T),
                                None, 0.0, 0, 0))
    edge_types = list(snapshot.message_passing("train").edge_types)
    rec_metrics = {}
    for label, task in (("fused (rec only)", None),
                        ("fused (multi-task)", SearchTask(train=examples["train"], batch_size=search_batch_size))):
        torch.manual_seed(train.seed)
        model = FusedRecommender(snapshot.num_users, snapshot.num_products, fused, text_features=product_vectors,
                                 num_nodes=snapshot.num_nodes, edge_types=edge_types)
        validators = {"rec": ndcg_validator(snapshot, "valid", max_history=train.max_history)}
        if task is not None:
            validators["search"] = search_validator(examples["valid"], exclude_history=True)
        history = fit(model, snapshot, train, progress=progress, search=task, validators=validators)
        model.eval()
        rec_metrics[label] = {s: evaluate(model, snapshot, s, (10,), hist).metrics["ndcg@10"] for s in ("valid", "test")}
        model.set_graph(snapshot.message_passing("test"))  # what a test-time search sees
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if task is None:
            with torch.no_grad():  # the untrained query tower and an untrained (zero) user weight: add the user at 0.3
                model.search_user_weight.fill_(0.3)
            results.append(SearchResult(label, "frozen", score(model_scores(model)), None, round(history.seconds, 1),
                                        trainable, len(history.losses)))
        else:
            valid = history.best("search")
            for suffix, batch in (("anonymous", anonymous(test)), ("personalised", test)):
                results.append(SearchResult(f"fused (multi-task, {suffix})", "frozen", score(model_scores(model), batch),
                                            valid, round(history.seconds, 1), trainable, len(history.losses),
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
    for label, m in rec.items():
        lines.append(f"| {label} | {m['valid']:.4f} | {m['test']:.4f} |")
    return "\n".join(lines)
