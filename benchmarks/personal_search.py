"""Personalised product search on the demo data (Amazon Industrial & Scientific), the
protocol of HEM (Ai et al., 2017) and ZAM (Ai et al., 2019): each purchase is a search whose
query is the purchased product's category path, issued by that user with the history before it.

Usage (repository root, kgrec's venv)::

    python benchmarks/personal_search.py                  # CPU or CUDA (auto), ~10 min on 2 cores

One run, one leave-one-out split (the recommender's), test queries ranked against all 4,385
products with the user's history excluded: BM25 and the untrained MiniLM on the query alone,
the fused model trained for recommendation only, and the same model trained multi-task
(recommendation + graded search, one shared product tower) scored without and with the user.
Also prints both models' recommendation NDCG@10, so the price of sharing the tower shows.
Writes ``benchmarks/results/personal_search.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--text-model", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "personal_search.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot
    from kgrec.search.examples import category_query, unique_texts
    from kgrec.workflow.rec_benchmark import BenchmarkConfig
    from kgrec.workflow.search_benchmark import personal_results_markdown, run_personalized_search

    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kgrec-personal-"))
    tables = read_tables(args.data)
    store = EmbeddedStore(workdir / "store")
    load_tables(tables, store, progress=False)
    snapshot = export_snapshot(store)
    paths = dict(zip(tables.products["product_id"].astype(str), tables.products["category_path"]))
    product_queries = [category_query(paths.get(pid, [])) for pid in snapshot.id_maps["product"]]
    encoder = TextEncoder(TextEncoderConfig(model_path=str(args.text_model) if args.text_model else None))
    cache = EmbeddingCache(workdir / "text-cache")
    product_vectors = encoder.encode(snapshot.product_text, cache=cache, progress=True)
    distinct, codes = unique_texts(product_queries)
    query_vectors = encoder.encode(distinct, cache=cache)[torch.as_tensor(codes, dtype=torch.long)]
    train = BenchmarkConfig().train
    train.epochs, train.seed, train.device = args.epochs, args.seed, args.device
    results, rec = run_personalized_search(snapshot, product_queries, product_vectors, query_vectors, train)
    table = personal_results_markdown(results, rec)
    print(table)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/personal_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "data": {"users": snapshot.num_users, "products": snapshot.num_products,
                 "distinct_queries": len(distinct), "test_queries": int((snapshot.interactions["split"] == "test").sum())},
        "train": asdict(train),
        "results": [asdict(r) for r in results], "recommendation": rec, "table": table,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
