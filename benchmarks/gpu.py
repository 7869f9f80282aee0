"""Joint LoRA-BERT + GNN training on one device: throughput, peak memory, metrics.

The prepared GPU check of issue 8 — the same code path as on CPU (``kgrec.fusion.train.fit``),
with bf16 autocast on CUDA (``--precision auto``). Usage (repository root)::

    python benchmarks/gpu.py --device cuda                       # a few minutes on one H100
    python benchmarks/gpu.py --device cpu --epochs 1 --max-users 500   # a CPU smoke run

On the demo data (Amazon Industrial & Scientific) it trains the fused recommender with a
LoRA-tuned MiniLM text tower (the batch's target products re-encoded with grad each step,
the rest from the per-epoch cache) and the heterogeneous GNN, jointly, then evaluates on the
test split with full ranking. Records interactions/s and BERT tokens/s of the training steps,
peak memory (CUDA allocator, or the process's max RSS on CPU), the test metrics and the
precision used. Writes ``benchmarks/results/gpu_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "amazon-scientific")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | fp32 | bf16")
    parser.add_argument("--mode", default="lora", help="text tower: frozen | lora | ia3 | prompt | full")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-users", type=int, default=None, help="keep only the first N users (smoke runs)")
    parser.add_argument("--text-model", type=Path, default=None)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from kgrec.encoders.text import TextEncoder, TextEncoderConfig
    from kgrec.encoders.tuning import TextTuningConfig, TunedTextEncoder
    from kgrec.evaluation.recommendation import evaluate, ndcg_validator
    from kgrec.fusion.models import FusedConfig, FusedRecommender
    from kgrec.fusion.train import TrainConfig, autocast_dtype, fit, resolve_device
    from kgrec.ingest.load import load_tables
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot

    device = resolve_device(args.device)
    tables = read_tables(args.data)
    if args.max_users is not None:
        keep = set(tables.users["user_id"].head(args.max_users))
        tables.users = tables.users[tables.users["user_id"].isin(keep)]
        tables.interactions = tables.interactions[tables.interactions["user_id"].isin(keep)]
    store = EmbeddedStore(Path(tempfile.mkdtemp(prefix="kgrec-gpu-")) / "store")
    load_tables(tables, store, progress=False)
    snapshot = export_snapshot(store)
    encoder = TextEncoder(TextEncoderConfig(model_path=str(args.text_model) if args.text_model else None,
                                            max_length=args.max_length, batch_size=512)).to(device)
    t0 = time.perf_counter()
    text = encoder.encode(snapshot.product_text)
    encode_seconds = time.perf_counter() - t0
    tower = TunedTextEncoder(encoder, TextTuningConfig(mode=args.mode)) if args.mode != "frozen" else None
    tokens = {"n": 0}
    if tower is not None:  # count the tokens that go through BERT in training steps
        tokenize = tower.tokenize

        def counting(texts):
            batch = tokenize(texts)
            if tower.training:
                tokens["n"] += int(batch["attention_mask"].sum())
            return batch

        tower.tokenize = counting
    torch.manual_seed(0)
    model = FusedRecommender(snapshot.num_users, snapshot.num_products, FusedConfig(), text_features=text,
                             num_nodes=snapshot.num_nodes, edge_types=list(snapshot.message_passing("train").edge_types),
                             text_tower=tower, product_texts=list(snapshot.product_text) if tower is not None else None)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, patience=args.epochs,
                         device=str(device), precision=args.precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history = fit(model, snapshot, config, progress=True,
                  validators={"rec": ndcg_validator(snapshot, "valid", max_history=config.max_history)})
    metrics = evaluate(model, snapshot, "test", (10, 20), config.max_history).metrics
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    steps_examples = history.examples_per_second * history.train_seconds
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "precision": str(autocast_dtype(config, device) or torch.float32),
        "mode": args.mode, "users": snapshot.num_users, "products": snapshot.num_products,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "encode_seconds": round(encode_seconds, 2),
        "train_step_seconds": round(history.train_seconds, 2), "epochs": len(history.losses),
        "interactions_per_second": round(history.examples_per_second, 1),
        "bert_tokens_per_second": round(tokens["n"] / max(history.train_seconds, 1e-9), 1),
        "training_examples": int(steps_examples),
        "peak_memory_mib": round(peak, 1), "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "max RSS",
        "valid_ndcg@10": history.valid_ndcg, "test": metrics,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "test"}, indent=2))
    print("test:", {k: round(v, 4) for k, v in metrics.items()})
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
