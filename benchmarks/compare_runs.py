"""Two `kgrec evaluate` runs on the same split, model by model: paired tests on the common test users.

For comparisons one run cannot hold, e.g. the same data with and without its knowledge-graph triples::

    python benchmarks/compare_runs.py runs/walk/ml100k-nokg/report runs/walk/ml100k/report \\
        --labels "without KG,with KG" --models graph-only,fused

Reads each run's ``per_user.parquet`` (full-ranking test rows) and ``results.json`` (training
seconds), prints a markdown table (NDCG@10 of each run, the difference B - A with its 95% bootstrap
interval and paired p-values, and the training-time ratio B / A) and writes it with the numbers to
``--out`` (JSON). Users are matched by id; a run whose test users differ is compared on the common ones
and the table says how many.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kgrec.evaluation.metrics import metrics_from_position
from kgrec.evaluation.significance import paired_test


def per_user_ndcg(run: Path, model: str) -> pd.Series:
    frame = pd.read_parquet(run / "per_user.parquet")
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"] == "full"]
    rows = frame[(frame["model"] == model) & (frame["split"] == "test")].set_index("user_id")
    if rows.empty:
        raise SystemExit(f"{run} has no full-ranking test rows of model {model!r}")
    position = torch.as_tensor(rows["position"].to_numpy().astype(np.int64))
    return pd.Series(metrics_from_position(position, (10,))["ndcg@10"].numpy(), index=rows.index)


def train_seconds(run: Path, model: str) -> float | None:
    results = json.loads((run / "results.json").read_text())["results"]
    return next((float(r["train_seconds"]) for r in results if r["model"] == model), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--models", default="graph-only,fused")
    parser.add_argument("--labels", default="A,B", help="names of the two runs, comma-separated")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: none)")
    args = parser.parse_args(argv)
    label_a, label_b = [s.strip() for s in args.labels.split(",")]
    head = (f"| model | users | {label_a} ndcg@10 | {label_b} ndcg@10 | difference [95% CI] | relative | "
            f"p (paired bootstrap) | p (Wilcoxon) | train s {label_a} → {label_b} |")
    lines, rows = [head, "|" + "---|" * 9], []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        a, b = per_user_ndcg(args.run_a, model), per_user_ndcg(args.run_b, model)
        common = a.index.intersection(b.index)
        test = paired_test(b.loc[common].to_numpy(), a.loc[common].to_numpy(), n_boot=args.bootstrap, seed=0)
        ma, mb = float(a.loc[common].mean()), float(b.loc[common].mean())
        sa, sb = train_seconds(args.run_a, model), train_seconds(args.run_b, model)
        seconds = f"{sa:.0f} → {sb:.0f} ({sb / sa:.1f}×)" if sa and sb else "–"
        lines.append(f"| {model} | {len(common)} | {ma:.4f} | {mb:.4f} | {test.diff:+.4f} [{test.ci_low:+.4f}, {test.ci_high:+.4f}] | "
                     f"{(mb - ma) / ma:+.1%} | {test.p_bootstrap:.3f} | {test.p_wilcoxon:.3f} | {seconds} |")
        rows.append({"model": model, "users": int(len(common)), label_a: ma, label_b: mb, **test.as_dict(),
                     "train_seconds": {label_a: sa, label_b: sb}})
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
                                        "runs": {label_a: str(args.run_a), label_b: str(args.run_b)},
                                        "rows": rows, "table_markdown": table}, indent=2, default=float))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
