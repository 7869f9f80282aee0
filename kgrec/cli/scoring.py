"""Commands that read an artifact: recommend, search, similar, explain; and update, writeback.

Every reading command takes ``--artifact DIR`` and prints a table, or JSON with ``--json``.
Catalogue text is printed through :func:`kgrec.cli.output.safe` (control characters escaped).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from kgrec.cli.app import command, quiet_transformers, show_progress, split_list, text_argument
from kgrec.cli.output import console, number, print_json, safe, table
from kgrec.workflow.store import STORE_HELP, open_store

ARTIFACT = typer.Option(..., "--artifact", "-a", help="Artifact folder (from `kgrec train`).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
TEXT_MODEL = typer.Option(None, help="Text encoder folder, if it moved since the artifact was saved.")


def _filters(category: str | None, brand: str | None) -> dict | None:
    filters = {}
    if category:
        filters["category"] = text_argument(category, "--category")
    if brand:
        filters["brand"] = text_argument(brand, "--brand")
    return filters or None


def _load(artifact: Path, text_model: Path | None = None) -> Any:
    from kgrec.serving.api import Scorer

    return Scorer.load(artifact, text_model=text_model)


class _Catalogue:
    """Titles and brands of an artifact's products, by product id (for printing)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.row = {p: i for i, p in enumerate(scorer.product_ids)}

    def title(self, product_id: str) -> str:
        return self.scorer.titles[self.row[product_id]]

    def items_table(self, title: str, items: list[tuple[str, float]]) -> Any:
        rows = []
        for rank, (pid, score) in enumerate(items, start=1):
            i = self.row[pid]
            rows.append([str(rank), safe(pid), safe(self.scorer.titles[i][:60]), safe(self.scorer.brand[i]), number(score)])
        return table(title, [("#", "right"), ("product", "left"), ("title", "left"), ("brand", "left"), ("score", "right")], rows)

    def items_json(self, items: list[tuple[str, float]]) -> list[dict]:
        return [{"product_id": p, "title": self.title(p), "score": s} for p, s in items]


@command("recommend")
def recommend(
    users: list[str] = typer.Argument(..., help="User ids (unknown ids are cold-start users)."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", min=1, help="Products per user."),
    session: str | None = typer.Option(None, help="Comma-separated product ids seen in this session."),
    category: str | None = typer.Option(None, help="Only products in this category (id, e.g. 'A > B') or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Keep products the user already interacted with."),
    as_json: bool = JSON,
) -> None:
    """Top-k products per user from an artifact."""
    users = [text_argument(u, "USERS") for u in users]
    scorer = _load(artifact)
    recs = scorer.recommend(users, k=k, exclude_seen=not include_seen, filters=_filters(category, brand),
                            session=split_list(session, "--session") or None)
    catalogue = _Catalogue(scorer)
    if as_json:
        print_json([{"user_id": r.user_id, "source": r.source, "items": catalogue.items_json(r.items)} for r in recs])
        return
    for r in recs:
        console.print(catalogue.items_table(safe(f"{r.user_id} (from {r.source})"), r.items))


@command("search")
def search(
    query: str = typer.Argument(..., help="Free-text query."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", min=1),
    user: str | None = typer.Option(None, help="Lean the results towards this user."),
    category: str | None = typer.Option(None, help="Only products in this category or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    user_weight: float | None = typer.Option(
        None, help="Weight of the user vector in the query (default: the weight learned in search training, else 0.3)."),
    lexical_weight: float | None = typer.Option(
        None, min=0.0, max=1.0,
        help="Mix in BM25 over the titles with this weight (default: the artifact's, chosen on validation queries; 0 = the model alone)."),
    text_model: Path | None = TEXT_MODEL,
    as_json: bool = JSON,
) -> None:
    """Products for a text query (the model's text tower, optionally personalised, hybrid with BM25)."""
    query = text_argument(query, "QUERY")
    if user_weight is not None and not math.isfinite(user_weight):
        raise typer.BadParameter("must be a finite number", param_hint="--user-weight")
    quiet_transformers()
    scorer = _load(artifact, text_model)
    items = scorer.search(query, k=k, user_id=user, filters=_filters(category, brand), user_weight=user_weight,
                          lexical_weight=lexical_weight)
    catalogue = _Catalogue(scorer)
    if as_json:
        print_json({"query": query, "user_id": user, "lexical_weight": scorer.lexical_weight if lexical_weight is None else lexical_weight,
                    "items": catalogue.items_json(items)})
        return
    console.print(catalogue.items_table(safe(f"search {query!r}" + (f" for {user}" if user else "")), items))


@command("similar")
def similar(
    products: list[str] = typer.Argument(..., help="Product ids."),
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", min=1),
    category: str | None = typer.Option(None, help="Only products in this category or below."),
    brand: str | None = typer.Option(None, help="Only products of this brand."),
    as_json: bool = JSON,
) -> None:
    """Nearest products by cosine of the model's product vectors."""
    products = [text_argument(p, "PRODUCTS") for p in products]
    scorer = _load(artifact)
    results = scorer.similar(products, k=k, filters=_filters(category, brand))
    catalogue = _Catalogue(scorer)
    if as_json:
        print_json([{"product_id": p, "items": catalogue.items_json(items)} for p, items in zip(products, results)])
        return
    for p, items in zip(products, results):
        console.print(catalogue.items_table(safe(f"similar to {p} ({catalogue.title(p)[:50]})"), items))


@command("explain")
def explain(
    user: str = typer.Argument(..., help="User id."),
    product: str = typer.Argument(..., help="Recommended product id."),
    artifact: Path = ARTIFACT,
    max_paths: int = typer.Option(5, min=1, help="Paths to show."),
    session: str | None = typer.Option(None, help="Comma-separated product ids (for a user the artifact does not know)."),
    cypher: bool = typer.Option(True, "--cypher/--no-cypher", help="Show each path's Cypher query."),
    as_json: bool = JSON,
) -> None:
    """Knowledge-graph paths from the user's history to a product, with Cypher for the Neo4j Browser."""
    user, product = text_argument(user, "USER"), text_argument(product, "PRODUCT")
    scorer = _load(artifact)
    result = scorer.explain(user, product, max_paths=max_paths, session=split_list(session, "--session") or None)
    if as_json:
        print_json(result.to_dict())
        return
    title = _Catalogue(scorer).title(product)
    console.print(f"[bold]{safe(user)}[/bold] -> [bold]{safe(product)}[/bold] ({safe(title[:60])}), "
                  f"model score {number(result.model_score)}, user vector from {safe(result.source)}")
    if not result.paths:
        console.print("no brand, category or co-purchase path links the user's history to this product")
    for rank, path in enumerate(result.paths, start=1):
        console.print(f"{rank}. {safe(path.kind)}, score {number(path.score)}: {safe(path.text)}")
        if cypher:
            console.print(f"   {safe(path.browser_params())}")
            console.print(f"   {safe(path.cypher)}")


@command("update")
def update(
    artifact: Path = ARTIFACT,
    store: str = typer.Option(..., "--store", "-s", help=STORE_HELP + " The store the artifact was trained on."),
    interactions: Path = typer.Option(..., help="CSV with user_id, product_id, event, order."),
    out: Path = typer.Option(..., "--out", help="Folder of the updated artifact."),
    epochs: int = typer.Option(3, min=1, help="Fine-tuning epochs."),
    lr: float | None = typer.Option(None, help="Fine-tuning learning rate (default: the artifact's)."),
    full_retrain: bool = typer.Option(True, "--full-retrain/--no-full-retrain", help="Also retrain from scratch, for comparison."),
    full_epochs: int | None = typer.Option(None, min=1, help="Epochs of the full retrain (default: the artifact's)."),
    text_model: Path | None = TEXT_MODEL,
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: on a terminal)."),
    as_json: bool = JSON,
) -> None:
    """Ingest new interactions, warm-start from the artifact, fine-tune, report before / after / full retrain."""
    from kgrec.serving.update import UpdateConfig, continual_update

    quiet_transformers()
    config = UpdateConfig(epochs=epochs, lr=lr, full_retrain=full_retrain, full_epochs=full_epochs, device=device, seed=seed)
    graph = open_store(store)
    try:
        report = continual_update(artifact, graph, interactions, out, config, text_model=text_model,
                                  cache_dir=out.parent / "text-cache", progress=show_progress(progress) and not as_json)
    finally:
        graph.close()
    if as_json:
        print_json(report.to_dict())
        return
    console.print(f"{report.new_interactions} new interactions ({report.new_users} new users); "
                  f"{report.updated_users} users' test target is a new interaction")

    def cell(d: dict | None, key: str) -> str:
        return number(d[key]) if d and key in d else "-"

    rows = [["before (old weights)", cell(report.before, "ndcg@10"), cell(report.before, "recall@10"),
             cell(report.before_updated, "ndcg@10"), cell(report.before_updated, "recall@10"), "0", "0"],
            ["after fine-tuning", cell(report.after, "ndcg@10"), cell(report.after, "recall@10"),
             cell(report.after_updated, "ndcg@10"), cell(report.after_updated, "recall@10"), str(report.update_epochs),
             f"{report.update_seconds:.1f}"]]
    if report.full is not None:
        rows.append(["full retrain", cell(report.full, "ndcg@10"), cell(report.full, "recall@10"),
                     cell(report.full_updated, "ndcg@10"), cell(report.full_updated, "recall@10"), str(report.full_epochs),
                     f"{report.full_seconds:.1f}"])
    console.print(table("test split of the updated data (all users | users with new interactions)",
                        [("model", "left")] + [(c, "right") for c in ("ndcg@10", "recall@10", "ndcg@10 (updated)",
                                                                      "recall@10 (updated)", "epochs", "seconds")], rows))
    console.print(f"updated artifact: {safe(out)}")


@command("writeback")
def writeback(
    artifact: Path = ARTIFACT,
    k: int = typer.Option(10, "-k", "--k", min=1, help="Recommendations per user."),
    model_version: str | None = typer.Option(None, help="Version tag of the RECOMMENDED edges (default: model@data fingerprint)."),
    batch_size: int = typer.Option(1024, min=1, help="Users per scoring batch."),
) -> None:
    """Write product/user embeddings (with a vector index) and every user's top-k as RECOMMENDED edges into Neo4j.

    The connection comes from KGREC_NEO4J_URI, KGREC_NEO4J_USER, KGREC_NEO4J_PASSWORD (and KGREC_NEO4J_DATABASE).
    """
    from kgrec.serving.writeback import write_back

    scorer = _load(artifact)
    with open_store("neo4j") as store:
        summary = write_back(scorer, store, k=k, model_version=model_version, batch_size=batch_size)
    console.print(f"wrote {summary.products:,} product and {summary.users:,} user embeddings and "
                  f"{summary.recommendations:,} RECOMMENDED edges (model_version {safe(summary.model_version)}) "
                  f"in {summary.seconds:.1f} s")
