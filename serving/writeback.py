"""Write a model's output back into the knowledge graph, for the Neo4j Browser.

* product and user vectors as the ``embedding`` property, with a vector index on products;
* each user's top-k as ``(:User)-[:RECOMMENDED {score, rank, model_version}]->(:Product)``.

The store must offer ``write_embeddings``, ``create_vector_index`` and
``write_recommendations`` (:class:`kgrec.kg.neo4j_store.Neo4jStore` does).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from kgrec.serving.api import Scorer


@dataclass
class WritebackSummary:
    """What :func:`write_back` wrote."""

    model_version: str
    products: int
    users: int
    recommendations: int
    seconds: float


def default_model_version(scorer: Scorer) -> str:
    """``<model name>@<data fingerprint>``: ties RECOMMENDED edges to the model and its data."""
    return f"{scorer.model.name}@{scorer.artifact.fingerprint}"


def recommendation_frame(scorer: Scorer, user_ids: list[str], k: int, model_version: str) -> pd.DataFrame:
    """Top-``k`` of each user as ``user_id, product_id, score, rank, model_version`` rows."""
    rows = [
        (rec.user_id, product, float(score), rank, model_version)
        for rec in scorer.recommend(user_ids, k=k)
        for rank, (product, score) in enumerate(rec.items, start=1)
    ]
    return pd.DataFrame(rows, columns=["user_id", "product_id", "score", "rank", "model_version"])


def write_back(
    scorer: Scorer,
    store,
    k: int = 10,
    model_version: str | None = None,
    batch_size: int = 1024,
    users: bool = True,
    progress: bool = True,
) -> WritebackSummary:
    """Write embeddings, a product vector index and every user's top-``k`` into ``store``.

    Args:
        scorer: a loaded artifact.
        store: a store with the write-back methods (Neo4j).
        k: recommendations per user (default 10).
        model_version: the ``model_version`` of the edges (default :func:`default_model_version`);
            a rerun replaces the edges of the same version.
        batch_size: users scored per call (default 1024).
        users: also write user vectors (default True).
    """
    for method in ("write_embeddings", "create_vector_index", "write_recommendations"):
        if not hasattr(store, method):
            raise TypeError(f"{type(store).__name__} cannot take write-back ({method} missing): use the Neo4j store")
    start = time.perf_counter()
    version = model_version or default_model_version(scorer)
    products = scorer.state["products"].float().cpu()
    store.write_embeddings("Product", scorer.product_ids[: products.shape[0]], products.numpy())
    store.create_vector_index("Product", "embedding", dim=int(products.shape[1]))
    written = 0
    ids = scorer.user_ids
    for begin in tqdm(range(0, len(ids), batch_size), desc="write-back", unit="batch", disable=not progress):
        part = ids[begin : begin + batch_size]
        if users:
            store.write_embeddings("User", part, scorer.user_vectors(part).float().cpu().numpy())
        written += store.write_recommendations(recommendation_frame(scorer, part, k, version))
    return WritebackSummary(version, int(products.shape[0]), len(ids) if users else 0, written, time.perf_counter() - start)
