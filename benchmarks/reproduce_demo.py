"""Does `kgrec demo` reproduce the README's table? Rerun it and check every committed number.

The README's demo table comes from one run, committed as ``benchmarks/results/demo.json`` (that run's
``results.json``). This script runs ``kgrec demo`` again (or reads a finished run with ``--run``) and,
for each model and metric, checks that the committed mean lies inside the new run's 95% percentile-
bootstrap interval over the test users, and reports the largest absolute difference (the same command,
seed and thread count are meant to give the same metrics to 4 decimals).

    python benchmarks/reproduce_demo.py                      # reruns `kgrec demo` in a temporary folder
    python benchmarks/reproduce_demo.py --run runs/demo      # checks a finished run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kgrec.evaluation.report import load_run, per_user_metrics_from_frame
from kgrec.evaluation.significance import bootstrap_cis

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@20")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expected", type=Path, default=ROOT / "benchmarks" / "results" / "demo.json")
    parser.add_argument("--run", type=Path, default=None, help="a finished `kgrec demo --out DIR` folder (default: run it now)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_reproduce.json")
    args = parser.parse_args(argv)

    expected = {r["model"]: r["test"] for r in json.loads(args.expected.read_text())["results"]}
    start = time.perf_counter()
    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="kgrec-demo-"))
        subprocess.run([sys.executable, "-m", "kgrec.cli", "demo", "--out", str(run), "--no-progress"], check=True)
    payload, frame = load_run(run)
    if frame is None:
        raise SystemExit(f"{run} has no per_user.parquet")
    per_user = per_user_metrics_from_frame(frame, (10, 20))
    rows, inside, worst = [], True, 0.0
    for model, metrics in expected.items():
        if model not in per_user:
            raise SystemExit(f"the new run has no model {model!r}")
        cis = bootstrap_cis({m: per_user[model][m] for m in METRICS}, n_boot=args.bootstrap)
        for m in METRICS:
            ci, want = cis[m], float(metrics[m])
            ok = ci.low <= want <= ci.high
            inside &= ok
            worst = max(worst, abs(ci.mean - want))
            rows.append({"model": model, "metric": m, "readme": want, "rerun": round(ci.mean, 6), "ci_low": round(ci.low, 6),
                         "ci_high": round(ci.high, 6), "inside": ok})
    print("| model | metric | README | rerun [95% CI] | inside |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['metric']} | {r['readme']:.4f} | {r['rerun']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | "
              f"{'yes' if r['inside'] else '**no**'} |")
    print(f"every README number inside the rerun's interval: {inside}; largest |difference| {worst:.6f}")
    args.out.write_text(json.dumps({"command": "python benchmarks/reproduce_demo.py" + (f" --run {args.run}" if args.run else ""),
                                    "seconds": round(time.perf_counter() - start, 1), "all_inside": bool(inside),
                                    "max_abs_difference": float(np.round(worst, 6)), "rows": rows}, indent=2))
    return 0 if inside else 1


if __name__ == "__main__":
    raise SystemExit(main())
