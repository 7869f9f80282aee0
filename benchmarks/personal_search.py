"""Personalised product search on the demo data (Amazon Industrial & Scientific), the
protocol of HEM (Ai et al., 2017) and ZAM (Ai et al., 2019): each purchase is a search whose
query is the purchased product's category path, issued by that user with the history before it.

Usage (repository root, kgrec's venv)::

    python benchmarks/personal_search.py                  # CPU or CUDA (auto), ~10 min on 2 cores

The demo tables go the one path (``kgrec.workflow``: ingest, dataset, text features, ``train_model``).
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
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from kgrec.encoders.text import EmbeddingCache
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import SOFTMAX_TRAINING
from kgrec.search.examples import unique_texts
from kgrec.workflow.data import load_dataset
from kgrec.workflow.features import encode_text, load_text_encoder
from kgrec.workflow.ingest import DEMO_DATA, ingest_files
from kgrec.workflow.models import ModelSettings
from kgrec.workflow.search_benchmark import category_queries, personal_results_markdown, run_personalized_search
from kgrec.workflow.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEMO_DATA)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--text-model", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "personal_search.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kgrec-personal-"))
    ingest_files([args.data], workdir / "store")
    store = open_store(workdir / "store")
    try:
        dataset = load_dataset(store)
        product_queries = category_queries(store, dataset.snapshot)
    finally:
        store.close()
    snapshot = dataset.snapshot
    encoder = load_text_encoder(args.text_model)
    features = encode_text(dataset, encoder, workdir / "text-cache", progress=True)
    distinct, codes = unique_texts(product_queries)
    query_vectors = encoder.encode(distinct, cache=EmbeddingCache(workdir / "text-cache"))[torch.as_tensor(codes, dtype=torch.long)]
    settings = ModelSettings(train=replace(SOFTMAX_TRAINING, epochs=args.epochs, seed=args.seed, device=args.device),
                             fused=FusedConfig(), search_batch_size=1024)
    results, rec = run_personalized_search(dataset, features, product_queries, query_vectors, settings)
    table = personal_results_markdown(results, rec)
    print(table)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/personal_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "data": {"users": snapshot.num_users, "products": snapshot.num_products,
                 "distinct_queries": len(distinct), "test_queries": int((snapshot.interactions["split"] == "test").sum())},
        "train": asdict(settings.train),
        "results": [asdict(r) for r in results], "recommendation": rec, "table": table,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
