"""How fast is kgrec's full-ranking evaluator next to a bare ``torch.topk(U @ I.T)``?

Usage (repository root, kgrec's venv)::

    python benchmarks/eval_speed.py                       # Amazon-Scientific, CPU or CUDA (auto)
    python benchmarks/eval_speed.py --device cuda --repeats 20

One matrix-factorisation model (random weights, seeded: speed does not depend on training)
scores every test user over every product. Timed on the same tensors, in the same run:

* ``bare``: ``torch.topk(U[users] @ I.T, k)`` — the floor: no exclusion, no batching;
* ``bare + mask``: the same with the seen products masked out (a mask already on the device);
* ``kgrec rank_top_k``: :func:`kgrec.evaluation.recommendation.rank_top_k` — ``model.score_all`` per batch of
  2048, the exclusion mask moved per batch, ``topk``; its top-k must equal ``bare + mask``'s;
* ``kgrec evaluate``: :func:`kgrec.evaluation.recommendation.evaluate` end to end — message-passing graph,
  vectorised evaluation inputs, device-side exclusion masks, ranking, per-user metrics;
* ``kgrec rank_top_k_pairs``: the same ranking with the exclusion as index pairs, each chunk's
  mask built on the device (:func:`kgrec.evaluation.recommendation.rank_top_k_pairs`);
* ``kgrec evaluate_detailed``: the report's evaluator (fast inputs, plus full ranks, AUC,
  coverage, ARP).

Each number is the median of ``--repeats`` runs after one warm-up (CUDA synchronised). Ratios
are against ``bare``; the target is within 2x. Prints a table and writes
JSON (default ``benchmarks/results/eval_speed.json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kgrec.evaluation.recommendation import (
    evaluate,
    evaluate_detailed,
    evaluation_inputs,
    exclusion_mask,
    rank_top_k,
    rank_top_k_pairs,
)
from kgrec.fusion.data import evaluation_examples
from kgrec.fusion.models import ModelInputs
from kgrec.fusion.registry import build_model, spec
from kgrec.fusion.train import resolve_device
from kgrec.workflow.data import load_dataset
from kgrec.workflow.ingest import DEMO_DATA, IngestOptions, ingest_files
from kgrec.workflow.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEMO_DATA, help="files or a folder `kgrec ingest` reads")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_speed.json")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ingest_files([args.data], Path(tmp) / "store", IngestOptions(state_dir=Path(tmp) / "ingest"))
        store = open_store(Path(tmp) / "store")
        try:
            snapshot = load_dataset(store).snapshot
        finally:
            store.close()
    torch.manual_seed(0)
    model = build_model("mf-bpr", ModelInputs.from_snapshot(snapshot), spec("mf-bpr").config(dim=args.dim)).to(device)
    model.set_graph(snapshot.message_passing("test"))
    model.eval()
    batch, histories = evaluation_examples(snapshot, "test")
    exclude = exclusion_mask(histories, snapshot.num_products)
    users_dev = batch.users.to(device)
    exclude_dev = exclude.to(device)
    user_vectors, product_vectors = (t.detach() for t in model._towers())

    def bare():
        with torch.no_grad():
            return torch.topk(user_vectors[users_dev] @ product_vectors.T, args.k, dim=1).indices

    def bare_masked():
        with torch.no_grad():
            return torch.topk((user_vectors[users_dev] @ product_vectors.T).masked_fill(exclude_dev, float("-inf")), args.k, dim=1).indices

    rows = {}
    rows["bare"], _ = _timed(bare, args.repeats, device)
    rows["bare + mask"], ref = _timed(bare_masked, args.repeats, device)
    rows["kgrec rank_top_k"], top = _timed(lambda: rank_top_k(model, batch, exclude, args.k), args.repeats, device)
    same = bool(torch.equal(top, ref.cpu()))
    _, rows_ix, cols_ix = evaluation_inputs(snapshot, "test")
    rows["kgrec rank_top_k_pairs"], top2 = _timed(lambda: rank_top_k_pairs(model, batch, rows_ix, cols_ix, args.k),
                                                  args.repeats, device)
    same = same and bool(torch.equal(top2, ref.cpu()))
    rows["kgrec evaluate"], full = _timed(lambda: evaluate(model, snapshot, "test", ks=(10, args.k)), args.repeats, device)
    same = same and bool(torch.equal(full.topk, ref.cpu()))
    rows["kgrec evaluate_detailed"], _ = _timed(
        lambda: evaluate_detailed(model, snapshot, "test", ks=(10, args.k)), args.repeats, device)

    base = rows["bare"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"{len(batch)} test users x {snapshot.num_products} products, dim {args.dim}, top-{args.k}, "
          f"device {device} ({name}), threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'what':<26}{'ms':>10}{'x bare':>9}")
    for what, secs in rows.items():
        print(f"{what:<26}{1000 * secs:>10.2f}{secs / base:>9.2f}")
    print(f"same top-{args.k} (rank_top_k, rank_top_k_pairs, evaluate, bare + mask): {same}")
    for what in ("kgrec rank_top_k", "kgrec rank_top_k_pairs", "kgrec evaluate"):
        r = rows[what] / base
        print(f"{what} / bare = {r:.2f} ({'within' if r <= 2 else 'NOT within'} the 2x target)")
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "users": len(batch), "products": snapshot.num_products, "dim": args.dim, "k": args.k, "repeats": args.repeats,
        "milliseconds": {k: round(1000 * v, 3) for k, v in rows.items()},
        "ratio_to_bare": {k: round(v / base, 3) for k, v in rows.items()},
        "ratio_to_bare_masked": {k: round(v / rows["bare + mask"], 3) for k, v in rows.items()},
        "topk_identical": same,
        "within_2x": {k: v / base <= 2 for k, v in rows.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
