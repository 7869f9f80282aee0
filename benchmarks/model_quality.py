"""Model quality of the fused scorer against its baselines, on one split per data set, in one run.

Usage (repository root, kgrec's venv)::

    python benchmarks/model_quality.py --data scientific --models text-zero-shot,graph-only,fused \\
        --seeds 0,1,2 --threads 1 --out benchmarks/results/model_quality_scientific.json
    python benchmarks/model_quality.py --data ml100k --kg both --models graph-only,fused
    python benchmarks/model_quality.py --data scientific --models "fused,fused:user_tower=recency"

What one run does, for every data set variant (``--kg both`` trains each model without and with
the knowledge-graph triples of a RecBole folder, on the same interactions and split):

1. ingests the data through the library's one path (:func:`kgrec.ingest.sources.discover` +
   :class:`kgrec.ingest.pipeline.Ingestor` into an :class:`kgrec.kg.embedded.EmbeddedStore` under
   ``--workdir``, reused when present), exports the snapshot (:func:`kgrec.kg.export.export_snapshot`)
   and encodes the product texts with MiniLM (:class:`kgrec.encoders.text.TextEncoder`, cached);
2. builds each model from the registry (``name`` or ``name:field=value,...`` overriding fields of
   its typed config), trains it with :func:`kgrec.fusion.train.fit` (early stopping on validation
   NDCG@10, the untrained model competes, the best epoch is kept) for every seed;
3. evaluates on test by full ranking (:func:`kgrec.evaluation.recommendation.evaluate_detailed`),
   overall, on cold targets (fewer than ``--cold`` visible interactions before the split) and on
   warm ones, with bootstrap confidence intervals and paired tests against the reference models
   (``--reference``) on the same users; with ``--peers`` also against the stored per-user results
   of the RecBole peers (``benchmarks/results/peers_per_user.csv.gz``, same split and protocol).

Prints a markdown table and writes the JSON (``--out``): every number, the command, the configs,
the threads, per-seed histories and timings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = {
    "scientific": ROOT / "data" / "amazon-scientific",
    "ml100k": ROOT.parent / "shared" / "data" / "ml-100k-kg",
}
KG_KINDS = ("triple", "link")


def parse_model(text: str) -> tuple[str, str, dict]:
    """``"fused:user_tower=recency,gnn_layers=3"`` -> (label, registry name, overrides)."""
    name, _, rest = text.partition(":")
    overrides = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        overrides[key.strip()] = _value(value.strip())
    return text, name.strip(), overrides


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def scientific_as_recbole(tables: Path, target: Path) -> Path:
    """The demo tables as RecBole atomic files whose category and brand are KG triples: ``.inter``
    (timestamp = order), ``.item`` (title), ``.kg`` (``item -in_category-> deepest category``,
    ``category -subcategory_of-> parent``, ``item -made_by-> brand``) and ``.link`` (item -> its entity).
    The same products, users, interactions and split as the table version; only the catalogue
    structure arrives as triples instead of the product's own fields."""
    if (target / "scientific.link").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    products = pd.read_json(tables / "products.jsonl", lines=True, dtype={"product_id": str})
    inter = pd.read_csv(tables / "interactions.csv", dtype={"user_id": str, "product_id": str})
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{p}\t{o}" for u, p, o in zip(inter["user_id"], inter["product_id"], inter["order"])]
    (target / "scientific.inter").write_text("\n".join(lines) + "\n")
    titles = products["title"].fillna("").str.replace("\t", " ")
    (target / "scientific.item").write_text("item_id:token\ttitle:token_seq\n"
                                           + "".join(f"{p}\t{t}\n" for p, t in zip(products["product_id"], titles)))
    triples, links = set(), []
    for pid, path, brand in zip(products["product_id"], products["category_path"], products["brand"]):
        entity = f"item:{pid}"
        links.append(f"{pid}\t{entity}")
        levels = list(path) if isinstance(path, list) else []
        for depth in range(1, len(levels) + 1):
            node = "cat:" + " > ".join(levels[:depth])
            if depth == len(levels):
                triples.add((entity, "in_category", node))
            if depth > 1:
                triples.add((node, "subcategory_of", "cat:" + " > ".join(levels[: depth - 1])))
        if isinstance(brand, str) and brand.strip():
            triples.add((entity, "made_by", "brand:" + brand.strip()))
    (target / "scientific.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n"
                                         + "".join(f"{h}\t{r}\t{t}\n" for h, r, t in sorted(triples)))
    (target / "scientific.link").write_text("item_id:token\tentity_id:token\n" + "\n".join(links) + "\n")
    return target


def load_snapshot(data: str, kg: bool, workdir: Path, export_options: dict):
    """Ingest ``data`` (with or without its KG files) into a store under ``workdir`` once, export it."""
    from kgrec.ingest.pipeline import IngestConfig, Ingestor
    from kgrec.ingest.sources import discover
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import KgExport, export_snapshot

    if data == "scientific-kg":
        path = scientific_as_recbole(DATA["scientific"], workdir / "scientific-kg")
    else:
        path = DATA.get(data, Path(data))
    found = discover([path])
    sources = [s for s in found.sources if kg or s.kind not in KG_KINDS]
    name = f"{Path(path).name}{'' if kg else '-nokg'}"
    store_dir = workdir / "stores" / name
    done = store_dir / "INGESTED"
    store = EmbeddedStore(store_dir)
    if not done.exists():
        report = Ingestor(store, IngestConfig(dangling=found.dangling)).run(sources)
        if report.rejected:
            raise SystemExit(f"{path}: {report.rejected} rows rejected while ingesting")
        done.write_text(json.dumps(store.counts()))
    start = time.perf_counter()
    snapshot = export_snapshot(store, kg=KgExport(**export_options))
    return snapshot, name, time.perf_counter() - start


def encode_text(snapshot, workdir: Path) -> tuple[torch.Tensor, str]:
    from kgrec.encoders.text import EmbeddingCache, TextEncoder

    encoder = TextEncoder()
    vectors = encoder.encode(snapshot.product_text, cache=EmbeddingCache(workdir / "text-cache"), progress=False)
    return vectors, encoder.fingerprint


def ndcg_from_position(position: np.ndarray, k: int = 10) -> np.ndarray:
    position = np.asarray(position, dtype=np.float64)
    hit = (position >= 1) & (position <= k)
    return np.where(hit, 1.0 / np.log2(np.where(hit, position, 1.0) + 1.0), 0.0)


def peer_ndcg(peers_csv: Path, snapshot, users: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-example NDCG@10 of each stored RecBole peer, aligned to ``users`` (a peer missing a user
    or with another target for it raises: the split must be the same)."""
    frame = pd.read_csv(peers_csv, dtype={"user_id": str, "target": str})
    user_ids = np.asarray(snapshot.id_maps["user"])[users.numpy()]
    target_ids = np.asarray(snapshot.id_maps["product"])[targets.numpy()]
    out = {}
    for peer, part in frame.groupby("peer", sort=True):
        part = part.set_index("user_id").reindex(user_ids)
        if part["target"].isna().any():
            raise SystemExit(f"{peers_csv}: peer {peer} lacks {int(part['target'].isna().sum())} of the test users")
        mismatch = int((part["target"].to_numpy() != target_ids).sum())
        if mismatch:
            raise SystemExit(f"{peers_csv}: peer {peer} has {mismatch} other test targets: not the same split")
        out[f"RecBole {peer}"] = ndcg_from_position(part["position"].to_numpy())
    return out


#: Settings of a model label that are not fields of its config: ``tuning=lora|full|...`` trains the
#: text tower jointly (:class:`kgrec.encoders.tuning.TunedTextEncoder`); ``time_limit=S``, ``batch_size=N``,
#: ``epochs=N``, ``lr=X`` set that model's trainer.
BENCHMARK_SETTINGS = ("tuning", "time_limit", "batch_size", "epochs", "lr")


def run_model(label: str, name: str, overrides: dict, snapshot, text, seed: int, args) -> dict:
    from kgrec.evaluation.recommendation import evaluate_detailed, ndcg_validator
    from kgrec.fusion.models import ModelInputs
    from kgrec.fusion.registry import build_model, spec
    from kgrec.fusion.train import fit

    entry = spec(name)
    overrides = dict(overrides)
    settings = {k: overrides.pop(k) for k in BENCHMARK_SETTINGS if k in overrides}
    config = entry.config(**overrides)
    train = entry.training
    train_cfg = None
    if train is not None:
        from dataclasses import replace

        changes = {"seed": seed, "device": "cpu"}
        for key in ("epochs", "patience", "lr", "batch_size"):
            if getattr(args, key) is not None:
                changes[key] = getattr(args, key)
        for key, cast in (("time_limit", float), ("batch_size", int), ("epochs", int), ("lr", float)):
            if key in settings:
                changes[key] = cast(settings[key])
        train_cfg = replace(train, **changes)
    extra = {}
    if settings.get("tuning", "frozen") != "frozen":
        from kgrec.encoders.text import TextEncoder
        from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder

        extra = {"text_tower": TunedTextEncoder(TextEncoder(), TextTuningConfig(mode=settings["tuning"])),
                 "product_texts": list(snapshot.product_text)}
    inputs = ModelInputs.from_snapshot(snapshot, text if entry.reads_text else None, **extra)
    model = build_model(name, inputs, config, seed=seed)
    max_history = train_cfg.max_history if train_cfg else 50
    start = time.perf_counter()
    history = None
    if train_cfg is not None:
        validators = {"rec": ndcg_validator(snapshot, "valid", max_history=max_history)}
        history = fit(model, snapshot, train_cfg, progress=args.progress, validators=validators)
    else:
        model.set_graph(snapshot.message_passing("train"))
    seconds = time.perf_counter() - start
    result = evaluate_detailed(model, snapshot, "test", ks=(10, 20), max_history=max_history)
    cold = (result.target_popularity < args.cold).numpy()
    ndcg = result.per_user["ndcg@10"].numpy()
    row = {
        "label": label, "model": name, "seed": seed, "config": asdict(config) if hasattr(config, "__dataclass_fields__") else {},
        "settings": settings,
        "train": asdict(train_cfg) if train_cfg else None,
        "train_seconds": round(history.train_seconds if history else 0.0, 2),
        "seconds": round(seconds, 2),
        "epochs": len(history.losses) if history else 0,
        "best_epoch": history.best_epoch if history else 0,
        "valid_curve": history.valid_ndcg if history else [],
        "losses": history.losses if history else [],
        "valid_ndcg@10": (history.best("rec") if history and history.valid else None),
        "test": result.metrics,
        "test_cold_ndcg@10": float(ndcg[cold].mean()) if cold.any() else None,
        "test_warm_ndcg@10": float(ndcg[~cold].mean()) if (~cold).any() else None,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return row, ndcg, cold, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="scientific",
                        help="scientific (the demo tables) | scientific-kg (the same, category and brand as KG "
                             "triples in RecBole files) | ml100k | a folder")
    parser.add_argument("--kg", default="with", choices=("with", "without", "both"),
                        help="ingest the .kg/.link triples of a RecBole folder (both: one run each)")
    parser.add_argument("--models", default="text-zero-shot,graph-only,fused",
                        help="comma-separated registry names; 'name:field=value' overrides a config field "
                             "(separate several models with ';' when overrides hold commas)")
    parser.add_argument("--reference", default="fused", help="label the paired tests compare against")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    parser.add_argument("--cold", type=int, default=5, help="cold target: fewer visible interactions than this")
    parser.add_argument("--peers", type=Path, default=None, help="per-user RecBole results (peers_per_user.csv.gz)")
    parser.add_argument("--export", default="", help="KgExport options, e.g. kg_hops=0")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "model-quality")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from kgrec.evaluation.significance import bootstrap_ci, paired_test

    models = [parse_model(m) for m in (args.models.split(";") if ";" in args.models else args.models.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]
    export_options = {k: _value(v) for k, v in (p.split("=") for p in filter(None, args.export.split(",")))}
    variants = {"both": (False, True), "with": (True,), "without": (False,)}[args.kg]
    started = time.perf_counter()
    runs = []
    for kg in variants:
        snapshot, data_name, export_seconds = load_snapshot(args.data, kg, args.workdir, export_options)
        text, text_fp = encode_text(snapshot, args.workdir)
        graph = snapshot.message_passing("train")
        run = {"data": data_name, "kg": kg, "export_seconds": round(export_seconds, 2),
               "nodes": snapshot.num_nodes, "edge_types": len(graph.edge_types),
               "edges": int(sum(graph[e].edge_index.shape[1] for e in graph.edge_types)),
               "text_model": text_fp, "data_fingerprint": snapshot.fingerprint(), "rows": []}
        per_user: dict[str, np.ndarray] = {}
        cold_mask = None
        for label, name, overrides in models:
            for seed in seeds:
                row, ndcg, cold, result = run_model(label, name, overrides, snapshot, text, seed, args)
                run["rows"].append(row)
                print(f"[{data_name}] {label} seed {seed}: test ndcg@10 {row['test']['ndcg@10']:.4f} "
                      f"cold {row['test_cold_ndcg@10']} warm {row['test_warm_ndcg@10']} "
                      f"valid {row['valid_ndcg@10']} ({row['train_seconds']:.0f} s)", flush=True)
                if seed == seeds[0]:
                    per_user[label] = ndcg
                    cold_mask = cold
                    users, targets = result.users, result.targets
        if args.peers is not None:
            per_user.update(peer_ndcg(args.peers, snapshot, users, targets))
        run["cold_targets"] = int(cold_mask.sum())
        run["test_targets"] = int(len(cold_mask))
        run["ci"] = {label: {part: asdict(bootstrap_ci(values[mask]))
                             for part, mask in (("all", np.ones_like(cold_mask)), ("cold", cold_mask), ("warm", ~cold_mask))
                             if mask.any()}
                     for label, values in per_user.items()}
        run["paired"] = {}
        if args.reference in per_user:
            for label, values in per_user.items():
                if label == args.reference:
                    continue
                run["paired"][label] = {part: paired_test(per_user[args.reference][mask], values[mask]).as_dict()
                                        for part, mask in (("all", np.ones_like(cold_mask)), ("cold", cold_mask),
                                                           ("warm", ~cold_mask)) if mask.any()}
        runs.append(run)
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/model_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "protocol": "leave-one-out by order; full ranking over all products; the user's visible history excluded; "
                    f"cold target = fewer than {args.cold} visible interactions before the split",
        "runs": runs, "seconds": round(time.perf_counter() - started, 1),
    }
    print(markdown(payload, args.reference))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, default=float))
        print(f"wrote {args.out}")
    return 0


def markdown(payload: dict, reference: str) -> str:
    lines = []
    for run in payload["runs"]:
        lines += [f"\n**{run['data']}** ({'with' if run['kg'] else 'without'} KG; {run['test_targets']} test targets, "
                  f"{run['cold_targets']} cold)", "",
                  "| model | seeds | valid NDCG@10 | test NDCG@10 | cold | warm | Recall@10 | train s | "
                  f"{reference} vs it (p) |", "|---|---|---|---|---|---|---|---|---|"]
        labels = list(dict.fromkeys(r["label"] for r in run["rows"]))
        for label in labels:
            rows = [r for r in run["rows"] if r["label"] == label]

            def stat(values):
                values = [v for v in values if v is not None]
                if not values:
                    return "–"
                if len(values) == 1:
                    return f"{values[0]:.4f}"
                return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"

            paired = run["paired"].get(label, {}).get("all")
            vs = f"{paired['relative']:+.1%} ({paired['p_bootstrap']:.3f})" if paired else "–"
            lines.append(f"| {label} | {len(rows)} | {stat([r['valid_ndcg@10'] for r in rows])} | "
                         f"{stat([r['test']['ndcg@10'] for r in rows])} | {stat([r['test_cold_ndcg@10'] for r in rows])} | "
                         f"{stat([r['test_warm_ndcg@10'] for r in rows])} | {stat([r['test']['recall@10'] for r in rows])} | "
                         f"{np.mean([r['train_seconds'] for r in rows]):.0f} | {vs} |")
        for label, parts in run["paired"].items():
            if label.startswith("RecBole"):
                p = parts["all"]
                lines.append(f"| {label} (stored) | – | – | {p['mean_b']:.4f} | – | – | – | – | "
                             f"{p['relative']:+.1%} ({p['p_bootstrap']:.3f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
