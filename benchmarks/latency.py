"""Serving latency of kgrec.serving.api.Scorer against a bare ``torch.topk(U @ I.T)``.

Measures p50 / p95 wall-clock latency of

* ``recommend``: single requests (one user) and batched requests (``--batch`` users),
* ``search``: single queries (the text encoder included) and batched queries,
* ``similar``: single products,

and, on the same tensors in the same run, the bare baseline: ``torch.topk(U @ I.T, k)``
with the user (or query) vectors ``U`` already computed and ``I`` the artifact's product
matrix. The gap is what the API adds: id lookup, the user tower, seen-item masking,
filters, result unpacking (and, for search, encoding the query).

Usage::

    python benchmarks/latency.py --artifact runs/artifact          # an existing artifact
    python benchmarks/latency.py                                   # trains a quick model on data/amazon-scientific

Without ``--artifact`` it ingests ``--data`` into ``WORK/store``, trains the fused model
for ``--epochs`` epochs (MiniLM text features) and saves ``WORK/artifact``; later runs
reuse it. Prints a table and writes ``benchmarks/results/latency.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": len(samples)}


def _time(fn, repeats: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _call(fn):
    """``fn(i)`` and ``fn()`` both work (warm-up passes no index)."""
    return lambda i=0: fn(i)


def train_quick(data: Path, work: Path, epochs: int, device: str) -> Path:
    """Ingest ``data`` and train a fused model quickly; returns the artifact path (reused if present)."""
    from dataclasses import asdict

    from kgrec.encoders.text import EmbeddingCache, TextEncoder, TextEncoderConfig
    from kgrec.evaluation.recommendation import evaluate, ndcg_validator
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import ModelInputs, build_model
    from kgrec.fusion.train import TrainConfig, fit
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot
    from kgrec.serving.artifact import save_artifact

    artifact = work / "artifact"
    if (artifact / "config.json").is_file():
        return artifact
    store = EmbeddedStore(work / "store")
    if store.counts()["Product"] == 0:
        load_tables(read_tables(data), store, progress=False)
    snapshot = export_snapshot(store)
    encoder = TextEncoder(TextEncoderConfig())
    text = encoder.encode(snapshot.product_text, cache=EmbeddingCache(work / "text-cache"), progress=True)
    model = build_model("fused", ModelInputs.from_snapshot(snapshot, text), FusedConfig())
    config = TrainConfig(epochs=epochs, batch_size=1024, lr=2e-3, patience=2, device=device)
    history = fit(model, snapshot, config, progress=True,
                  validators={"rec": ndcg_validator(snapshot, "valid", max_history=config.max_history)})
    metrics = {"test": evaluate(model, snapshot, "test", (10, 20)).metrics, "train_seconds": history.seconds,
               "epochs": len(history.losses)}
    model.cpu()
    save_artifact(model, snapshot, artifact, text_encoder=encoder, products=store.nodes("Product"),
                  metrics=metrics, extra={"train": asdict(config), "store": str(work / "store")}, overwrite=True)
    return artifact


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="artifact folder (default: train a quick one)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "latency")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the quick model")
    parser.add_argument("--device", default="cpu", help="serving device (cpu | cuda)")
    parser.add_argument("--train-device", default="auto")
    parser.add_argument("--repeats", type=int, default=200, help="timed single requests")
    parser.add_argument("--batch", type=int, default=256, help="users per batched recommend request")
    parser.add_argument("--query-batch", type=int, default=32, help="queries per batched search request")
    parser.add_argument("--batch-repeats", type=int, default=30)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-search", action="store_true", help="skip search (no text encoder needed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from kgrec.serving.api import Scorer

    artifact = args.artifact or train_quick(args.data, args.work, args.epochs, args.train_device)
    start = time.perf_counter()
    scorer = Scorer.load(artifact, device=args.device)
    load_seconds = time.perf_counter() - start
    rng = random.Random(args.seed)
    users = [u for u in scorer.user_ids if scorer.user_history(u)]
    single_users = [rng.choice(users) for _ in range(args.repeats)]
    args.batch = min(args.batch, len(users))
    batches = [rng.sample(users, args.batch) for _ in range(args.batch_repeats)]
    k = args.k
    products = scorer.state["products"]
    rows: list[dict] = []

    def user_vectors(ids):
        with torch.no_grad():
            return scorer.user_vectors(ids)

    # --- recommend
    single_u = [user_vectors([u]) for u in single_users]
    batch_u = [user_vectors(b) for b in batches]
    rows.append({"op": "recommend", "batch": 1,
                 "api": _time(_call(lambda i: scorer.recommend([single_users[i % len(single_users)]], k=k)), args.repeats),
                 "bare": _time(_call(lambda i: torch.topk(single_u[i % len(single_u)] @ products.T, k)), args.repeats)})
    rows.append({"op": "recommend", "batch": args.batch,
                 "api": _time(_call(lambda i: scorer.recommend(batches[i % len(batches)], k=k)), args.batch_repeats, 2),
                 "bare": _time(_call(lambda i: torch.topk(batch_u[i % len(batch_u)] @ products.T, k)), args.batch_repeats, 2)})
    rows.append({"op": "recommend+filter", "batch": args.batch,
                 "api": _time(_call(lambda i: scorer.recommend(batches[i % len(batches)], k=k,
                                                                filters={"brand": scorer.brand[0]})), args.batch_repeats, 2),
                 "bare": rows[-1]["bare"]})
    # --- similar
    pids = [rng.choice(scorer.product_ids) for _ in range(args.repeats)]
    unit = torch.nn.functional.normalize(products, dim=-1)
    pidx = [scorer.product_ids.index(p) for p in pids]
    rows.append({"op": "similar", "batch": 1,
                 "api": _time(_call(lambda i: scorer.similar([pids[i % len(pids)]], k=k)), args.repeats),
                 "bare": _time(_call(lambda i: torch.topk(unit[pidx[i % len(pidx)]] @ unit.T, k + 1)), args.repeats)})
    # --- search
    if not args.no_search:
        titles = [" ".join(t.split()[:4]) for t in scorer.titles if t.strip()]
        queries = [rng.choice(titles) for _ in range(args.repeats)]
        args.query_batch = min(args.query_batch, len(titles))
        qbatches = [rng.sample(titles, args.query_batch) for _ in range(args.batch_repeats)]
        encoder = scorer.text_encoder()

        def query_vectors(qs):
            with torch.no_grad():
                return torch.nn.functional.normalize(scorer.model.serving_query(scorer.state, encoder.encode(qs).to(scorer.device)), dim=-1)

        single_q = [query_vectors([q]) for q in queries]
        batch_q = [query_vectors(b) for b in qbatches]
        rows.append({"op": "search", "batch": 1,
                     "api": _time(_call(lambda i: scorer.search(queries[i % len(queries)], k=k)), args.repeats),
                     "bare": _time(_call(lambda i: torch.topk(single_q[i % len(single_q)] @ unit.T, k)), args.repeats)})
        rows.append({"op": "search (encode only)", "batch": 1,
                     "api": _time(_call(lambda i: encoder.encode([queries[i % len(queries)]])), args.repeats), "bare": None})
        rows.append({"op": "search", "batch": args.query_batch,
                     "api": _time(_call(lambda i: scorer.search(qbatches[i % len(qbatches)], k=k)), args.batch_repeats, 2),
                     "bare": _time(_call(lambda i: torch.topk(batch_q[i % len(batch_q)] @ unit.T, k)), args.batch_repeats, 2)})

    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "artifact": str(artifact),
        "model": scorer.model.name,
        "products": scorer.num_products,
        "users": len(scorer.user_ids),
        "dim": int(products.shape[1]),
        "k": k,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_seconds": round(load_seconds, 3),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{scorer.model.name}: {scorer.num_products:,} products x d={payload['dim']}, k={k}, "
                        f"{args.device}, {payload['threads']} threads")
    for c in ("op", "batch", "api p50", "api p95", "p50/item", "bare p50", "bare p95", "api/bare"):
        table.add_column(c, justify="left" if c == "op" else "right", no_wrap=True)
    for r in rows:
        api, bare = r["api"], r["bare"]
        table.add_row(
            r["op"], str(r["batch"]), f"{api['p50_ms']:.3f}", f"{api['p95_ms']:.3f}", f"{api['p50_ms'] / r['batch']:.3f}",
            f"{bare['p50_ms']:.3f}" if bare else "-", f"{bare['p95_ms']:.3f}" if bare else "-",
            f"{api['p50_ms'] / bare['p50_ms']:.1f}x" if bare else "-",
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    print("times in ms; bare = torch.topk(U @ I.T) on precomputed vectors (recommend+filter: the unfiltered bare row)")
    print(f"artifact {artifact} loaded in {load_seconds:.2f} s; results: {args.out}")
    return payload


if __name__ == "__main__":
    main()
