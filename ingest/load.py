"""Load catalogue tables into a knowledge-graph store.

Products become ``Product`` nodes; every prefix of a category path becomes a
``Category`` node (id = the levels joined by ``" > "``) linked to its parent by
``SUBCATEGORY_OF``; a product is ``IN_CATEGORY`` of its deepest level and
``MADE_BY`` its brand; interactions become ``User -[EVENT]-> Product`` edges with
their ``order``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ingest.tables import CatalogTables
from kg.schema import CATEGORY_SEPARATOR, EVENT_TYPES
from kg.store import GraphStore


@dataclass
class IngestSummary:
    """Rows read and written per node label / relationship type."""

    written: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    seconds: float = 0.0


def graph_frames(tables: CatalogTables) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Node and edge frames (keyed by label / relationship type) for the tables."""
    products = tables.products
    nodes: dict[str, pd.DataFrame] = {
        "Product": products[["product_id", "title"]].assign(
            brand=products["brand"],
            category_path=[CATEGORY_SEPARATOR.join(p) for p in products["category_path"]],
        ),
        "User": tables.users[["user_id"]].copy(),
    }

    categories: dict[str, tuple[str, int, str | None]] = {}
    in_category = []
    for pid, levels in zip(products["product_id"], products["category_path"]):
        levels = list(levels)
        parent = None
        for depth in range(len(levels)):
            cid = CATEGORY_SEPARATOR.join(levels[: depth + 1])
            categories.setdefault(cid, (levels[depth], depth, parent))
            parent = cid
        if parent is not None:
            in_category.append((pid, parent))
    nodes["Category"] = pd.DataFrame(
        [(cid, name, depth) for cid, (name, depth, _) in categories.items()],
        columns=["category_id", "name", "level"],
    )
    subcategory = pd.DataFrame(
        [(cid, parent) for cid, (_, _, parent) in categories.items() if parent is not None],
        columns=["source", "target"],
    )

    branded = products[products["brand"].str.strip() != ""]
    nodes["Brand"] = pd.DataFrame({"brand_id": branded["brand"].drop_duplicates().to_numpy()}).assign(
        name=lambda f: f["brand_id"]
    )
    edges: dict[str, pd.DataFrame] = {
        "SUBCATEGORY_OF": subcategory,
        "IN_CATEGORY": pd.DataFrame(in_category, columns=["source", "target"]),
        "MADE_BY": pd.DataFrame({"source": branded["product_id"].to_numpy(), "target": branded["brand"].to_numpy()}),
    }
    inter = tables.interactions
    for event, rel in EVENT_TYPES.items():
        part = inter[inter["event"] == event]
        if len(part):
            edges[rel] = pd.DataFrame(
                {"source": part["user_id"].to_numpy(), "target": part["product_id"].to_numpy(), "order": part["order"].to_numpy()}
            )
    return nodes, edges


def load_tables(tables: CatalogTables, store: GraphStore, progress: bool = True) -> IngestSummary:
    """Upsert all nodes, then all edges, of ``tables`` into ``store``."""
    import time

    from tqdm.auto import tqdm

    start = time.perf_counter()
    nodes, edges = graph_frames(tables)
    summary = IngestSummary(rows_read=len(tables.products) + len(tables.users) + len(tables.interactions))
    steps = [("node", k, v) for k, v in nodes.items()] + [("edge", k, v) for k, v in edges.items()]
    with tqdm(total=sum(len(v) for _, _, v in steps), desc="ingest", unit="row", disable=not progress) as bar:
        for kind, name, frame in steps:
            bar.set_postfix_str(name)
            written = store.upsert_nodes(name, frame) if kind == "node" else store.upsert_edges(name, frame)
            summary.written[name] = written
            bar.update(len(frame))
    summary.seconds = time.perf_counter() - start
    return summary
