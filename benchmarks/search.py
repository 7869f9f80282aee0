"""Search on Home Depot: BM25, the untrained encoder, text-only, graph-only and the fused
scorer in each knowledge-sedimentation mode of its BERT, and each fused model mixed with BM25
(hybrid, weight chosen on validation queries), in one run, on one query-disjoint split.

Usage (repository root, kgrec's venv)::

    python benchmarks/search.py                                   # frozen modes, CPU or CUDA (auto)
    python benchmarks/search.py --modes frozen,lora,ia3,prompt,full --device cuda
    python benchmarks/search.py --max-train-queries 2000 --modes frozen,lora   # a shorter CPU run

The data (``../shared/data/homedepot-search/train.csv.zip``, Kaggle rules: never committed)
is converted to kgrec tables and goes the path every store goes (``kgrec.workflow``: ingest, the
dataset with its query-disjoint 80/10/10 split, text features, ``train_model``, rows scored like
``kgrec evaluate``'s): no test query is seen in training, and only train queries enter the
message-passing graph (as nodes with ``judged`` edges to their relevant products).

Reported per model on the test queries, two protocols: ``full`` ranks all 54,667 products
(unjudged products gain 0), ``rerank`` orders each query's judged products. NDCG@10 uses
gains ``2^grade - 1`` with grade = raters' mean - 1 (0..2); MRR@10 and MAP@10 count grade >= 1
(mean rating >= 2) as relevant. Every trained model is compared with BM25 per test query
(paired bootstrap, t and Wilcoxon tests on NDCG@10, in the JSON under ``vs_bm25_ndcg@10``).
Prints a markdown table and writes JSON (default ``benchmarks/results/search_homedepot.json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from kgrec.encoders.text import TextEncoder, TextEncoderConfig
from kgrec.fusion.train import TrainConfig, resolve_device
from kgrec.workflow.data import SplitConfig
from kgrec.workflow.features import encode_text
from kgrec.workflow.models import fused_config_for
from kgrec.workflow.search_benchmark import (
    SearchBenchmarkConfig,
    homedepot_data,
    run_search_benchmark,
    search_results_markdown,
    search_settings,
)
from kgrec.workflow.store import WorkflowError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "homedepot-search" / "train.csv.zip"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Home Depot train.csv(.zip)")
    parser.add_argument("--models", default="random,bm25,text-zero-shot,text-only,graph-only,fused,hybrid")
    parser.add_argument("--modes", default="frozen", help="sedimentation modes of the fused model: frozen,full,lora,ia3,prompt")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the non-BERT parameters")
    parser.add_argument("--gate-bias", type=float, default=3.0, help="initial text/graph gate bias of the fused model")
    parser.add_argument("--batch-size", type=int, default=512, help="queries per step")
    parser.add_argument("--tuned-batch-size", type=int, default=None,
                        help="queries per step for modes whose BERT trains (default: --batch-size)")
    parser.add_argument("--tuned-epochs", type=int, default=None, help="epochs for modes whose BERT trains (default: --epochs)")
    parser.add_argument("--catalogue-loss", type=float, default=1.0,
                        help="modes whose BERT trains: weight of the whole-catalogue loss on cached text (FusedConfig.catalogue_loss)")
    parser.add_argument("--feature-ids", action="store_true",
                        help="give products and query nodes ID embeddings in the GNN (default: feature-only)")
    parser.add_argument("--max-train-queries", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=32, help="BERT tokens per text")
    parser.add_argument("--cross-encoder", action="store_true", help="add a cross-encoder re-ranking stage over the last fused model")
    parser.add_argument("--cross-encoder-queries", type=int, default=1000, help="train queries the cross-encoder learns from")
    parser.add_argument("--text-model", type=Path, default=None, help="local BERT directory (default: packaged MiniLM)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples of the paired tests against BM25")
    parser.add_argument("--workdir", type=Path, default=None, help="tables/store/cache folder (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_homedepot.json")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"Home Depot data not found at {args.data} (pass --data)", file=sys.stderr)
        return 2
    try:
        settings = search_settings(
            train=TrainConfig(epochs=args.epochs, lr=args.lr, patience=args.patience, seed=args.seed, device=args.device,
                              precision=args.precision),
            fused=replace(fused_config_for(("search",)), feature_ids=args.feature_ids, gate_bias=args.gate_bias,
                          catalogue_loss=args.catalogue_loss),
            search_batch_size=args.batch_size, tuned_batch_size=args.tuned_batch_size or args.batch_size,
            max_search_queries=args.max_train_queries, seed=args.seed, device=args.device)
        config = SearchBenchmarkConfig(
            models=tuple(m for m in args.models.split(",") if m), modes=tuple(m for m in args.modes.split(",") if m),
            settings=settings, tuned_epochs=args.tuned_epochs, bootstrap=args.bootstrap,
            cross_encoder=args.cross_encoder, cross_encoder_queries=args.cross_encoder_queries)
    except WorkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kgrec-search-"))
    start = time.perf_counter()
    data = homedepot_data(args.data, workdir / "homedepot", SplitConfig(search_seed=args.seed))
    prepared = time.perf_counter() - start
    device = resolve_device(args.device)
    encoder = TextEncoder(TextEncoderConfig(model_path=str(args.text_model) if args.text_model else None,
                                            max_length=args.max_length, batch_size=256))
    encoder.to(device)
    features = encode_text(data.dataset, encoder, workdir / "text-cache", progress=True)
    results = run_search_benchmark(data.dataset, features, config)
    table = search_results_markdown(results)
    print(table)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "data": {"counts": data.counts, "queries": data.dataset.queries["split"].value_counts().to_dict(),
                 "products": data.dataset.snapshot.num_products, "prepare_seconds": round(prepared, 1)},
        "config": {"models": config.models, "modes": config.modes, "train": asdict(settings.train),
                   "batch_size": settings.search_batch_size, "tuned_batch_size": settings.tuned_batch_size,
                   "tuned_epochs": config.tuned_epochs, "max_train_queries": settings.max_search_queries,
                   "max_length": args.max_length, "fused": asdict(settings.fused), "bootstrap": config.bootstrap},
        "results": [asdict(r) for r in results],
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
