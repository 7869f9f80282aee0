"""Serving commands of the ``kgrec`` CLI: train, recommend, search, similar, explain, update.

They only map flags onto :mod:`kgrec.serving.artifact`, :mod:`kgrec.serving.api` and
:mod:`kgrec.serving.update`. ``kgrec/cli.py`` attaches them with ``register(app)``.
Every reading command takes ``--artifact DIR`` and prints a table, or JSON with ``--json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()

ARTIFACT = typer.Option(..., "--artifact", "-a", help="Artifact folder (from `kgrec train`).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
TEXT_MODEL = typer.Option(None, help="Text encoder directory, if it moved since the artifact was saved.")
TEXT_MODELS = ("fused", "text-only", "text-zero-shot")


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _filters(category: str | None, brand: str | None) -> dict | None:
    filters = {}
    if category:
        filters["category"] = category
    if brand:
        filters["brand"] = brand
    return filters or None


def _load(artifact: Path, text_model: Path | None = None):
    from kgrec.serving.api import Scorer
    from kgrec.serving.artifact import ArtifactError

    try:
        return Scorer.load(artifact, text_model=text_model)
    except ArtifactError as exc:
        raise typer.BadParameter(str(exc), param_hint="--artifact") from None


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code=2)


def _print_json(payload) -> None:
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging

        logging.disable_progress_bar()
        logging.set_verbosity_error()
    except Exception:
        pass


def _items_table(title: str, items: list[tuple[str, float]], scorer) -> Table:
    table = Table(title=title)
    for column, justify in (("#", "right"), ("product", "left"), ("title", "left"), ("brand", "left"), ("score", "right")):
        table.add_column(column, justify=justify)
    for rank, (pid, score) in enumerate(items, start=1):
        i = scorer._pid[pid]
        table.add_row(str(rank), escape(pid), escape(scorer.titles[i][:60]), escape(str(scorer.brand[i])), f"{score:.4f}")
    return table


def _items_json(items: list[tuple[str, float]], scorer) -> list[dict]:
    return [{"product_id": p, "title": scorer.titles[scorer._pid[p]], "score": s} for p, s in items]


def recommend(
    users: list[str] = typer.Argument(..., help="User ids (unknown ids are cold-start users)."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", help="Products per user."),
    session: str | None = typer.Option(None, help="Comma-separated product ids seen in this session."),
    category: str | None = typer.Option(None, help="Only products in this category (id, e.g. 'A > B') or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Keep products the user already interacted with."),
    as_json: bool = JSON,
) -> None:
    """Top-k products per user from an artifact."""
    scorer = _load(artifact)
    try:
        recs = scorer.recommend(users, k=k, exclude_seen=not include_seen, filters=_filters(category, brand),
                                session=_split(session) or None)
    except ValueError as exc:
        _fail(exc)
    if as_json:
        _print_json([{"user_id": r.user_id, "source": r.source, "items": _items_json(r.items, scorer)} for r in recs])
        return
    for r in recs:
        console.print(_items_table(escape(f"{r.user_id} (from {r.source})"), r.items, scorer))


def search(
    query: str = typer.Argument(..., help="Free-text query."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k"),
    user: str | None = typer.Option(None, help="Lean the results towards this user."),
    category: str | None = typer.Option(None, help="Only products in this category or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    user_weight: float | None = typer.Option(
        None, help="Weight of the user vector in the query (default: the weight learned in search training, else 0.3)."),
    lexical_weight: float = typer.Option(
        0.0, min=0.0, max=1.0, help="Mix in BM25 over the titles with this weight (hybrid search; 0 = the model alone)."),
    text_model: Path | None = TEXT_MODEL,
    as_json: bool = JSON,
) -> None:
    """Products for a text query (the model's text tower, optionally personalised, optionally hybrid with BM25)."""
    _quiet_transformers()
    scorer = _load(artifact, text_model)
    try:
        items = scorer.search(query, k=k, user_id=user, filters=_filters(category, brand), user_weight=user_weight,
                              lexical_weight=lexical_weight)
    except ValueError as exc:
        _fail(exc)
    if as_json:
        _print_json({"query": query, "user_id": user, "items": _items_json(items, scorer)})
        return
    console.print(_items_table(escape(f"search {query!r}" + (f" for {user}" if user else "")), items, scorer))


def similar(
    products: list[str] = typer.Argument(..., help="Product ids."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k"),
    category: str | None = typer.Option(None, help="Only products in this category or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    as_json: bool = JSON,
) -> None:
    """Nearest products by cosine of the model's product vectors."""
    scorer = _load(artifact)
    try:
        results = scorer.similar(products, k=k, filters=_filters(category, brand))
    except ValueError as exc:
        _fail(exc)
    if as_json:
        _print_json([{"product_id": p, "items": _items_json(items, scorer)} for p, items in zip(products, results)])
        return
    for p, items in zip(products, results):
        console.print(_items_table(escape(f"similar to {p} ({scorer.titles[scorer._pid[p]][:50]})"), items, scorer))


def explain(
    user: str = typer.Argument(..., help="User id."),
    product: str = typer.Argument(..., help="Recommended product id."),
    artifact: Path = ARTIFACT,
    max_paths: int = typer.Option(5, help="Paths to show."),
    session: str | None = typer.Option(None, help="Comma-separated product ids (for a user the artifact does not know)."),
    cypher: bool = typer.Option(True, "--cypher/--no-cypher", help="Show each path's Cypher query."),
    as_json: bool = JSON,
) -> None:
    """Knowledge-graph paths from the user's history to a product, with Cypher for the Neo4j Browser."""
    scorer = _load(artifact)
    try:
        result = scorer.explain(user, product, max_paths=max_paths, session=_split(session) or None)
    except ValueError as exc:
        _fail(exc)
    if as_json:
        _print_json(result.to_dict())
        return
    console.print(f"[bold]{escape(user)}[/bold] -> [bold]{escape(product)}[/bold] ({escape(scorer.titles[scorer._pid[product]][:60])}), "
                  f"model score {result.model_score:.4f}, user vector from {result.source}")
    if not result.paths:
        console.print("no brand, category or co-purchase path links the user's history to this product")
    for rank, path in enumerate(result.paths, start=1):
        console.print(f"{rank}. {path.kind}, score {path.score:.4f}: {path.text}", markup=False, highlight=False)
        if cypher:
            console.print(f"   {path.browser_params()}", markup=False, highlight=False)
            console.print(f"   {path.cypher}", markup=False, highlight=False)


def train(
    store_dir: Path = typer.Option(Path("runs/store"), "--store", help="Embedded store directory (from `kgrec ingest`)."),
    out: Path = typer.Option(Path("runs/artifact"), "--out", help="Artifact folder to write."),
    model: str = typer.Option("fused", help="fused | text-only | graph-only | mf-bpr | lightgcn | text-zero-shot | popularity"),
    epochs: int = typer.Option(6, help="Maximum epochs."),
    lr: float = typer.Option(2e-3, help="Learning rate."),
    batch_size: int = typer.Option(1024, help="Examples per step."),
    patience: int = typer.Option(2, help="Early-stopping patience (epochs)."),
    graph_dim: int = typer.Option(64, help="Graph encoder size."),
    text_model: Path | None = typer.Option(None, help="Local BERT-family model directory (default: packaged all-MiniLM-L6-v2)."),
    cache: Path | None = typer.Option(None, help="Text embedding cache (default: OUT/../text-cache)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing artifact folder."),
    as_json: bool = JSON,
) -> None:
    """Train a model on an embedded store and save it as an artifact.

    Under ``torchrun --nproc-per-node N -m kgrec.cli train ...`` the N processes train one
    model with DistributedDataParallel (NCCL on GPUs, gloo on CPU); rank 0 writes the artifact.
    """
    from dataclasses import asdict

    from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
    from kgrec.evaluation.recommendation import evaluate, ndcg_validator
    from kgrec.fusion.distributed import barrier, init_distributed, shutdown
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import MODEL_NAMES, ModelInputs, build_model
    from kgrec.fusion.train import TrainConfig, fit
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot
    from kgrec.serving.artifact import save_artifact

    if model not in MODEL_NAMES:
        raise typer.BadParameter(f"unknown model {model!r}; choose from {list(MODEL_NAMES)}", param_hint="--model")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise typer.BadParameter(f"{out} exists and is not empty (pass --overwrite)", param_hint="--out")
    if not (store_dir / "nodes").is_dir():
        raise typer.BadParameter(f"{store_dir} is not an embedded store (run `kgrec ingest` first)", param_hint="--store")
    _quiet_transformers()
    start = time.perf_counter()
    rank, world = init_distributed()
    store = EmbeddedStore(store_dir)
    snapshot = export_snapshot(store)
    encoder = text = None
    if model in TEXT_MODELS:
        encoder = TextEncoder(TextEncoderConfig(model_path=str(text_model) if text_model else None))
        text_cache = EmbeddingCache(cache or out.parent / "text-cache")
        for turn in (0, 1):  # rank 0 fills the cache, then the others read it
            if (rank == 0) == (turn == 0):
                text = encoder.encode(snapshot.product_text, cache=text_cache, progress=not as_json and rank == 0)
            barrier()
    torch_seed(seed)
    net = build_model(model, ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=graph_dim))
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, patience=patience, device=device, seed=seed)
    history = fit(net, snapshot, config, progress=not as_json and rank == 0,
                  validators={"rec": ndcg_validator(snapshot, "valid", max_history=config.max_history)})
    if rank != 0:
        shutdown()
        return
    metrics = {
        "valid": evaluate(net, snapshot, "valid", (10, 20), config.max_history).metrics,
        "test": evaluate(net, snapshot, "test", (10, 20), config.max_history).metrics,
        "train_seconds": round(history.seconds, 2),
        "epochs": len(history.losses),
        "best_epoch": history.best_epoch,
        "world_size": world,
    }
    net.cpu()
    shutdown()
    save_artifact(net, snapshot, out, text_encoder=encoder, max_history=config.max_history,
                  products=store.nodes("Product"), metrics=metrics,
                  extra={"train": asdict(config), "store": str(store_dir)}, overwrite=overwrite)
    if as_json:
        _print_json({"artifact": str(out), "model": model, **metrics})
        return
    table = Table(title=f"{model} -> {out}")
    table.add_column("split")
    for c in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        table.add_column(c, justify="right")
    for split in ("valid", "test"):
        table.add_row(split, *(f"{metrics[split][c]:.4f}" for c in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")))
    console.print(table)
    console.print(f"{metrics['epochs']} epochs ({metrics['train_seconds']:.0f} s training), total {time.perf_counter() - start:.0f} s")


def torch_seed(seed: int) -> None:
    """Seed model initialisation (identical replicas on every rank under torchrun)."""
    import torch

    torch.manual_seed(seed)


def update(
    artifact: Path = ARTIFACT,
    store_dir: Path = typer.Option(..., "--store", help="The embedded store the artifact was trained on."),
    interactions: Path = typer.Option(..., help="CSV with user_id, product_id, event, order."),
    out: Path = typer.Option(..., "--out", help="Folder of the updated artifact."),
    epochs: int = typer.Option(3, help="Fine-tuning epochs."),
    lr: float | None = typer.Option(None, help="Fine-tuning learning rate (default: the artifact's)."),
    full_retrain: bool = typer.Option(True, "--full-retrain/--no-full-retrain", help="Also retrain from scratch, for comparison."),
    full_epochs: int | None = typer.Option(None, help="Epochs of the full retrain (default: the artifact's)."),
    text_model: Path | None = TEXT_MODEL,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0),
    as_json: bool = JSON,
) -> None:
    """Ingest new interactions, warm-start from the artifact, fine-tune, report before / after / full retrain."""
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.serving.artifact import ArtifactError
    from kgrec.serving.update import UpdateConfig, continual_update

    _quiet_transformers()
    config = UpdateConfig(epochs=epochs, lr=lr, full_retrain=full_retrain, full_epochs=full_epochs, device=device, seed=seed)
    try:
        report = continual_update(artifact, EmbeddedStore(store_dir), interactions, out, config,
                                  text_model=text_model, cache_dir=out.parent / "text-cache", progress=not as_json)
    except (ArtifactError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if as_json:
        _print_json(report.to_dict())
        return
    console.print(f"{report.new_interactions} new interactions ({report.new_users} new users); "
                  f"{report.updated_users} users' test target is a new interaction")
    table = Table(title="test split of the updated data (all users | users with new interactions)")
    for c in ("model", "ndcg@10", "recall@10", "ndcg@10 (updated)", "recall@10 (updated)", "epochs", "seconds"):
        table.add_column(c, justify="left" if c == "model" else "right")

    def cell(d: dict | None, key: str) -> str:
        return f"{d[key]:.4f}" if d and key in d else "-"

    table.add_row("before (old weights)", cell(report.before, "ndcg@10"), cell(report.before, "recall@10"),
                  cell(report.before_updated, "ndcg@10"), cell(report.before_updated, "recall@10"), "0", "0")
    table.add_row("after fine-tuning", cell(report.after, "ndcg@10"), cell(report.after, "recall@10"),
                  cell(report.after_updated, "ndcg@10"), cell(report.after_updated, "recall@10"),
                  str(report.update_epochs), f"{report.update_seconds:.1f}")
    if report.full is not None:
        table.add_row("full retrain", cell(report.full, "ndcg@10"), cell(report.full, "recall@10"),
                      cell(report.full_updated, "ndcg@10"), cell(report.full_updated, "recall@10"),
                      str(report.full_epochs), f"{report.full_seconds:.1f}")
    console.print(table)
    console.print(f"updated artifact: {out}")


def writeback(
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", help="Recommendations per user."),
    model_version: str | None = typer.Option(None, help="Version tag of the RECOMMENDED edges (default: model@data fingerprint)."),
    batch_size: int = typer.Option(1024, help="Users per scoring batch."),
) -> None:
    """Write product/user embeddings (with a vector index) and every user's top-k as RECOMMENDED edges into Neo4j.

    The connection comes from KGREC_NEO4J_URI, KGREC_NEO4J_USER, KGREC_NEO4J_PASSWORD (and KGREC_NEO4J_DATABASE).
    """
    from kgrec.kg.neo4j_store import Neo4jConfigError, Neo4jStore
    from kgrec.serving.writeback import write_back

    scorer = _load(artifact)
    try:
        store = Neo4jStore()
    except Neo4jConfigError as exc:
        _fail(exc)
    with store:
        summary = write_back(scorer, store, k=k, model_version=model_version, batch_size=batch_size)
    console.print(f"wrote {summary.products:,} product and {summary.users:,} user embeddings and "
                  f"{summary.recommendations:,} RECOMMENDED edges (model_version {summary.model_version}) "
                  f"in {summary.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    """Attach the serving commands to the ``kgrec`` app."""
    for fn in (train, recommend, search, similar, explain, update, writeback):
        app.command(fn.__name__)(fn)
