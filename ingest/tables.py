"""The exported tables of a catalogue (products, users, interactions) on disk.

Layout of a tables directory::

    DIR/products.jsonl      one JSON object a line: product_id, title, brand, category_path (list)
    DIR/users.csv           user_id
    DIR/interactions.csv    user_id, product_id, event, order

These are the files a team exports from its shop; :func:`read_tables` checks
them and names the file, row and field of the first problem it meets.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kgrec.kg.schema import EVENT_TYPES

PRODUCT_COLUMNS = ["product_id", "title", "brand", "category_path"]
USER_COLUMNS = ["user_id"]
INTERACTION_COLUMNS = ["user_id", "product_id", "event", "order"]


@dataclass
class CatalogTables:
    """The three tables of a catalogue: products, users, interactions (columns above)."""

    products: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame


class TableError(ValueError):
    """A problem in an input table, located by file, row and field."""

    def __init__(self, path: Path, row: int | None, field: str | None, reason: str) -> None:
        where = f"{path}" + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {reason}")
        self.path, self.row, self.field, self.reason = path, row, field, reason


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
    """Read and check a tables directory.

    Raises:
        TableError: a missing file or column, an empty id, an unknown event, a
            non-integer order, or an interaction that names an unknown user or
            product. Row numbers count data rows from 1 (CSV header excluded).
    """
    directory = Path(directory)
    products = _read_products(directory / "products.jsonl")
    users = _read_csv(directory / "users.csv", USER_COLUMNS)
    interactions = _read_csv(directory / "interactions.csv", INTERACTION_COLUMNS)
    path = directory / "interactions.csv"

    bad_event = ~interactions["event"].isin(list(EVENT_TYPES))
    if bad_event.any():
        row = int(bad_event.idxmax())
        raise TableError(path, row + 1, "event", f"unknown event {interactions['event'][row]!r}; known: {sorted(EVENT_TYPES)}")
    order = pd.to_numeric(interactions["order"], errors="coerce")
    if order.isna().any() or (order % 1 != 0).any():
        row = int((order.isna() | (order % 1 != 0)).idxmax())
        raise TableError(path, row + 1, "order", f"not an integer: {interactions['order'][row]!r}")
    interactions["order"] = order.astype("int64")
    for column, known in (("user_id", users["user_id"]), ("product_id", products["product_id"])):
        unknown = ~interactions[column].isin(set(known))
        if unknown.any():
            row = int(unknown.idxmax())
            raise TableError(path, row + 1, column, f"unknown id {interactions[column][row]!r} ({int(unknown.sum())} rows)")
    return CatalogTables(products=products, users=users, interactions=interactions)


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise TableError(path, None, None, "file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableError(path, None, missing[0], f"missing column (have {list(frame.columns)})")
    for column in columns:
        if column.endswith("_id"):
            empty = frame[column].str.strip() == ""
            if empty.any():
                raise TableError(path, int(empty.idxmax()) + 1, column, "empty id")
    return frame[columns].copy()


def _read_products(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise TableError(path, None, None, "file not found")
    records = []
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(path, row, None, f"malformed JSON: {exc.msg}") from None
            if not isinstance(rec, dict):
                raise TableError(path, row, None, "expected a JSON object")
            pid = rec.get("product_id")
            if pid is None or str(pid).strip() == "":
                raise TableError(path, row, "product_id", "empty id")
            path_levels = rec.get("category_path") or []
            if not isinstance(path_levels, list) or not all(isinstance(x, str) for x in path_levels):
                raise TableError(path, row, "category_path", "expected a list of strings")
            records.append(
                {
                    "product_id": str(pid),
                    "title": str(rec.get("title") or ""),
                    "brand": str(rec.get("brand") or ""),
                    "category_path": path_levels,
                }
            )
    frame = pd.DataFrame(records, columns=PRODUCT_COLUMNS)
    dup = frame["product_id"].duplicated()
    if dup.any():
        raise TableError(path, int(dup.idxmax()) + 1, "product_id", f"duplicate id {frame['product_id'][dup.idxmax()]!r}")
    return frame
