"""Exact versus approximate (faiss IVF, HNSW) top-100 retrieval over product vectors.

For each catalogue size ``P`` and dimension ``d`` (synthetic clustered unit vectors: ``P / 100``
cluster centres, each product a centre plus noise; queries drawn the same way) or for real
product vectors (``--vectors FILE``: a safetensors file with ``products [P, d]`` and optionally
``users [Q, d]``, e.g. what ``benchmarks/scale.py`` writes to ``WORKDIR/SIZE/vectors.safetensors``),
every index kind of :class:`kgrec.serving.retrieval.ProductIndex` is built and searched:

* build seconds, and memory: the index's own estimate (:meth:`ProductIndex.memory_bytes`) and the
  process RSS growth during the build;
* query latency per batch of ``--batch`` users (p50 / p95 over ``--queries / --batch`` batches,
  one warm-up batch first), k = ``--k``;
* recall@k against the exact index's results for the same queries.

Usage::

    python benchmarks/ann.py                               # P = 100k, d = 384 and 64 (~3 min on 2 cores)
    python benchmarks/ann.py --sizes 100k,1m --dims 384,64 # the 1M rows need ~6 GB and a while
    python benchmarks/ann.py --vectors runs/scale/10k/vectors.safetensors

Prints a table and writes ``benchmarks/results/ann.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kgrec.serving.retrieval import ProductIndex, recall_at_k

ROOT = Path(__file__).resolve().parents[1]


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator, noise: float = 1.0, chunk: int = 200_000) -> np.ndarray:
    """``[n, d]`` unit vectors: a random centre plus Gaussian noise of norm about ``noise``."""
    d = centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), size=m)] + rng.standard_normal((m, d), dtype=np.float32) * (noise / d**0.5)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_case(name: str, products: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[dict]:
    rows, exact_ids = [], None
    for kind in args.kinds:
        options = {"nprobe": args.nprobe, "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction,
                   "ef_search": args.ef_search, "threads": args.threads}
        before = rss_bytes()
        t0 = time.perf_counter()
        index = ProductIndex(kind, **options).build(products)
        build = time.perf_counter() - t0
        grown = rss_bytes() - before
        index.search(queries[: args.batch], args.k)  # warm-up
        latencies, found = [], []
        for start in range(0, len(queries), args.batch):
            t0 = time.perf_counter()
            ids, _ = index.search(queries[start:start + args.batch], args.k)
            latencies.append(time.perf_counter() - t0)
            found.append(ids.numpy())
        ids = np.concatenate(found)
        if kind == "exact":
            exact_ids = ids
        rows.append({
            "case": name, "products": len(products), "dim": products.shape[1], "kind": kind,
            "nlist": index.nlist, "nprobe": args.nprobe if kind == "ivf" else None,
            "hnsw_m": args.hnsw_m if kind == "hnsw" else None,
            "ef_search": args.ef_search if kind == "hnsw" else None,
            "build_s": round(build, 3),
            "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
            "recall": round(recall_at_k(ids, exact_ids, args.k), 4) if exact_ids is not None else None,
            "index_mib": round(index.memory_bytes() / 2**20, 1),
            "rss_growth_mib": round(grown / 2**20, 1),
        })
        print(_line(rows[-1], args), flush=True)
        del index
    return rows


def _line(r: dict, args: argparse.Namespace) -> str:
    recall = "–" if r["recall"] is None else f"{r['recall']:.4f}"
    setting = {"exact": "", "ivf": f"nlist {r['nlist']}, nprobe {r['nprobe']}",
               "hnsw": f"M {r['hnsw_m']}, efSearch {r['ef_search']}"}[r["kind"]]
    return (f"| {r['case']} | {r['products']:,} | {r['dim']} | {r['kind']} | {setting} | {r['build_s']:.1f} | "
            f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} | {recall} | {r['index_mib']:,.0f} | {r['rss_growth_mib']:,.0f} |")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k", help="comma-separated product counts, e.g. 100k,1m")
    ap.add_argument("--dims", default="384,64")
    ap.add_argument("--vectors", type=Path, default=None, help="safetensors with products [P, d] (and users [Q, d])")
    ap.add_argument("--kinds", default="exact,ivf,hnsw")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256, help="users per search call")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=100)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="faiss threads (default: faiss' own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ann.json")
    args = ap.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",")]
    if "exact" in args.kinds:  # exact first: the reference for recall
        args.kinds = ["exact"] + [k for k in args.kinds if k != "exact"]

    print(f"| vectors | P | d | index | setting | build s | ms / batch p50 / p95 | recall@{args.k} | index MiB | RSS growth MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    if args.vectors is not None:
        from safetensors.numpy import load_file

        tensors = load_file(str(args.vectors))
        products = np.ascontiguousarray(tensors["products"], dtype=np.float32)
        if "users" in tensors:
            queries = np.ascontiguousarray(tensors["users"][: args.queries], dtype=np.float32)
        else:
            rng = np.random.default_rng(args.seed)
            queries = products[rng.choice(len(products), size=min(args.queries, len(products)), replace=False)]
        rows += run_case(args.vectors.name, products, queries, args)
    else:
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            for d in [int(x) for x in args.dims.split(",")]:
                rng = np.random.default_rng(args.seed)
                centres = rng.standard_normal((max(1, size // 100), d), dtype=np.float32)
                centres /= np.linalg.norm(centres, axis=1, keepdims=True)
                products = clustered(size, centres, rng)
                queries = clustered(args.queries, centres, rng)
                rows += run_case("synthetic clustered", products, queries, args)
                del products

    import faiss
    import torch

    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/ann.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "k": args.k, "queries": args.queries, "batch": args.batch,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "faiss": faiss.__version__, "torch": torch.__version__,
                    "faiss_threads": faiss.omp_get_max_threads(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
