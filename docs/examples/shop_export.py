"""Write the demo catalogue as a shop's own CSV exports (its own column names), plus a search log.

Used by the README's "Your own data" walk-through: ``python docs/examples/shop_export.py OUT`` writes
``OUT/catalog.csv`` (sku, name, maker, department), ``OUT/orders.csv`` (customer_no, sku, seq) and
``OUT/search_log.csv`` (search_text, sku, relevance), which ``kgrec ingest OUT --config
docs/examples/shop.toml`` maps onto kgrec's fields. The search log follows the category-path protocol
of product-search research (HEM, ZAM): a query is a category's level names below the root, every
product in that category is judged relevant (grade 1), and two products of other categories, drawn
with a fixed seed, are judged not relevant (grade 0). Read from the committed demo tables; nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

DEMO = Path(__file__).resolve().parents[2] / "data" / "amazon-scientific"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--min-products", type=int, default=3, help="categories with fewer products make no query")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    products = pd.DataFrame([json.loads(line) for line in (DEMO / "products.jsonl").read_text().splitlines()])
    products["department"] = products["category_path"].map(lambda levels: " > ".join(levels))
    products.rename(columns={"product_id": "sku", "title": "name", "brand": "maker"})[["sku", "name", "maker", "department"]] \
        .to_csv(args.out / "catalog.csv", index=False)
    orders = pd.read_csv(DEMO / "interactions.csv", dtype=str)
    orders.rename(columns={"user_id": "customer_no", "product_id": "sku", "order": "seq"})[["customer_no", "sku", "seq"]] \
        .to_csv(args.out / "orders.csv", index=False)

    rng = np.random.default_rng(args.seed)
    skus = products["product_id"].to_numpy()
    rows = []
    for department, group in products[products["category_path"].map(len) > 1].groupby("department", sort=True):
        if len(group) < args.min_products:
            continue
        query = " ".join(department.split(" > ")[1:])
        rows += [(query, sku, 1) for sku in group["product_id"]]
        others = skus[~np.isin(skus, group["product_id"].to_numpy())]
        rows += [(query, sku, 0) for sku in rng.choice(others, size=2, replace=False)]
    log = pd.DataFrame(rows, columns=["search_text", "sku", "relevance"]).drop_duplicates(["search_text", "sku"])
    log.to_csv(args.out / "search_log.csv", index=False)
    print(f"wrote {len(products):,} products, {len(orders):,} orders and {len(log):,} judgements "
          f"({log['search_text'].nunique():,} queries) to {args.out}")


if __name__ == "__main__":
    main()
