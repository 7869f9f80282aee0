"""Cold products against warm ones: what each ``--cold-boost`` buys and costs, on one trained fused model.

Usage (repository root, kgrec's venv; the demo store from ``kgrec demo``)::

    python benchmarks/cold_frontier.py --store runs/demo/store --cache runs/demo/text-cache

Trains, as ``kgrec evaluate`` does (same registry defaults, seed and split), the fused model (its text
prior chosen on the validation users), graph-only and the untrained text ranking (text-zero-shot).
Then, for each boost of the grid, sets the fused model's ``cold_text_prior`` (what ``kgrec train
--cold-boost X`` sets on top of the chosen prior; nothing is retrained: the boost changes scores only)
and ranks the whole catalogue for the validation and test users. A target is cold when it has fewer
than 5 visible interactions before the split (the evaluation report's ``COLD_THRESHOLD``).

Per boost: NDCG@10 over all, cold and warm targets (validation and test) and paired tests on the same
test users — fused on cold targets against text-zero-shot, fused on warm targets against graph-only
(the model-quality issue's two goals) and fused overall against boost 0. Writes
``benchmarks/results/cold_frontier.json`` and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GRID = (0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="runs/demo/store")
    parser.add_argument("--cache", default="runs/demo/text-cache", help="text-vector cache folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", default=",".join(str(b) for b in GRID), help="comma-separated cold boosts")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_frontier.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from kgrec.evaluation.metrics import popularity_counts
    from kgrec.evaluation.recommendation import evaluate
    from kgrec.evaluation.report import COLD_THRESHOLD
    from kgrec.evaluation.significance import paired_test
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.features import encode_text, load_text_encoder
    from kgrec.workflow.models import ModelSettings, train_model
    from kgrec.workflow.store import open_store

    start = time.perf_counter()
    with open_store(args.store) as graph:
        dataset = load_dataset(graph)
    snapshot = dataset.snapshot
    features = encode_text(dataset, load_text_encoder(None), args.cache)
    settings = ModelSettings(seed=args.seed)
    trained = {name: train_model(name, dataset, features, ("rec",), settings) for name in ("text-zero-shot", "graph-only", "fused")}
    fused = trained["fused"].model
    seconds = {name: round(t.history.seconds, 1) for name, t in trained.items()}

    def cold_targets(split: str, targets: torch.Tensor) -> torch.Tensor:
        visible = torch.as_tensor(snapshot.visible(split)["product"].to_numpy().copy())
        return popularity_counts(visible, snapshot.num_products)[targets] < COLD_THRESHOLD

    def per_user(model, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        result = evaluate(model, snapshot, split, (10,), 50)
        return result.per_user["ndcg@10"].float(), cold_targets(split, result.targets)

    baseline = {name: per_user(trained[name].model, "test")[0] for name in ("text-zero-shot", "graph-only")}
    grid = [float(b) for b in args.grid.split(",") if b.strip()]
    rows: list[dict] = []
    base_test: torch.Tensor | None = None
    for boost in grid:
        fused.config = replace(fused.config, cold_text_prior=boost)
        row: dict = {"cold_boost": boost, "text_prior": fused.config.text_prior}
        for split in ("valid", "test"):
            ndcg, cold = per_user(fused, split)
            row[split] = {"all": float(ndcg.mean()), "cold": float(ndcg[cold].mean()), "warm": float(ndcg[~cold].mean()),
                          "n_cold": int(cold.sum()), "n_warm": int((~cold).sum())}
            if split == "test":
                test, test_cold = ndcg, cold
        base_test = test if base_test is None else base_test

        def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
            t = paired_test(a.tolist(), b.tolist(), n_boot=args.bootstrap, seed=args.seed)
            return {"diff": t.diff, "relative": t.relative, "ci": [t.ci_low, t.ci_high], "p": t.p_bootstrap, "n": t.n}

        row["cold_vs_text_zero_shot"] = paired(test[test_cold], baseline["text-zero-shot"][test_cold])
        row["warm_vs_graph_only"] = paired(test[~test_cold], baseline["graph-only"][~test_cold])
        row["all_vs_boost_0"] = paired(test, base_test)
        row["goals_met"] = row["cold_vs_text_zero_shot"]["diff"] >= 0 and row["warm_vs_graph_only"]["diff"] >= 0
        rows.append(row)
        print(f"boost {boost:g}: test all {row['test']['all']:.4f} cold {row['test']['cold']:.4f} warm {row['test']['warm']:.4f}",
              flush=True)

    references = {name: {"all": float(v.mean()), "cold": float(v[test_cold].mean()), "warm": float(v[~test_cold].mean())}
                  for name, v in baseline.items()}
    lines = ["| cold boost | valid all | test all | vs boost 0 | test cold | vs text-zero-shot (cold) | test warm | "
             "vs graph-only (warm) | both goals |", "|" + "---:|" * 9]
    for r in rows:
        def cell(c: dict) -> str:
            return f"{c['diff']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] p={c['p']:.2g}"
        lines.append(f"| {r['cold_boost']:g} | {r['valid']['all']:.4f} | {r['test']['all']:.4f} | {cell(r['all_vs_boost_0'])} | "
                     f"{r['test']['cold']:.4f} | {cell(r['cold_vs_text_zero_shot'])} | {r['test']['warm']:.4f} | "
                     f"{cell(r['warm_vs_graph_only'])} | {'yes' if r['goals_met'] else 'no'} |")
    for name, ref in references.items():
        lines.append(f"| {name} | | {ref['all']:.4f} | | {ref['cold']:.4f} | | {ref['warm']:.4f} | | |")
    table = "\n".join(lines)
    print(table)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/cold_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "store": str(args.store), "seed": args.seed, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cold_threshold": COLD_THRESHOLD, "text_prior": fused.config.text_prior,
        "text_prior_valid_curve": {str(w): v for w, v in trained["fused"].text_prior_curve.items()},
        "train_seconds": seconds, "references": references, "rows": rows, "table": table,
        "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
