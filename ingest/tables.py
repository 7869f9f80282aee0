"""The exported tables of a catalogue (products, users, interactions) on disk.

Layout of a tables directory::

    DIR/products.jsonl      one JSON object a line: product_id, title, brand, category_path (list)
    DIR/users.csv           user_id
    DIR/interactions.csv    user_id, product_id, event, order

These are the files a team exports from its shop; ``kgrec ingest DIR`` loads them through the
pipeline (every row loaded or reported); :func:`read_tables` reads them into memory as they are.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PRODUCT_COLUMNS = ["product_id", "title", "brand", "category_path"]
USER_COLUMNS = ["user_id"]
INTERACTION_COLUMNS = ["user_id", "product_id", "event", "order"]


@dataclass
class CatalogTables:
    """The three tables of a catalogue: products, users, interactions (columns above)."""

    products: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame


def write_tables(tables: CatalogTables, directory: str | Path) -> None:
    """Write the three tables in the layout above."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "products.jsonl", "w", encoding="utf-8") as fh:
        for rec in tables.products[PRODUCT_COLUMNS].to_dict("records"):
            rec["category_path"] = list(rec["category_path"])
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tables.users[USER_COLUMNS].to_csv(directory / "users.csv", index=False)
    tables.interactions[INTERACTION_COLUMNS].to_csv(directory / "interactions.csv", index=False)


def read_tables(directory: str | Path) -> CatalogTables:
    """Read a tables folder into memory as it is, for scripts that edit tables before loading them.

    A thin reader: nothing is validated here. Validation, the reject report and the graph are the
    pipeline's — :func:`kgrec.ingest.load.load_tables` (in memory) or ``kgrec ingest DIR`` (files).
    ``order`` becomes an integer where it is one.
    """
    directory = Path(directory)
    products = pd.read_json(directory / "products.jsonl", lines=True, dtype={"product_id": str, "title": str, "brand": str})
    for column in PRODUCT_COLUMNS:
        if column not in products.columns:
            products[column] = [[] for _ in range(len(products))] if column == "category_path" else ""
    products["category_path"] = products["category_path"].map(lambda v: list(v) if isinstance(v, list) else [])
    users = pd.read_csv(directory / "users.csv", dtype=str, keep_default_na=False)
    interactions = pd.read_csv(directory / "interactions.csv", dtype={"user_id": str, "product_id": str, "event": str},
                               keep_default_na=False)
    order = pd.to_numeric(interactions["order"], errors="coerce")
    if order.notna().all() and (order % 1 == 0).all():
        interactions["order"] = order.astype("int64")
    return CatalogTables(products=products[PRODUCT_COLUMNS].fillna({"title": "", "brand": ""}), users=users,
                         interactions=interactions)
