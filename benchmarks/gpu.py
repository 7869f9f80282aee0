"""Joint LoRA-BERT + GNN training on one device: throughput, peak memory, metrics.

The prepared GPU check of issue 8 — the same code path as on CPU and as ``kgrec train``
(``kgrec.workflow``: ingest, dataset, text features, ``train_model`` -> ``kgrec.fusion.train.fit``),
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
import contextlib
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from kgrec.encoders.text import TextEncoder, TextEncoderConfig
from kgrec.encoders.tuning import TunedTextEncoder
from kgrec.evaluation.recommendation import evaluate
from kgrec.fusion.train import TrainConfig, autocast_dtype, resolve_device
from kgrec.ingest.tables import read_tables, write_tables
from kgrec.workflow.data import load_dataset
from kgrec.workflow.features import encode_text
from kgrec.workflow.ingest import DEMO_DATA, ingest_files
from kgrec.workflow.models import ModelSettings, train_model
from kgrec.workflow.store import open_store

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def counting_bert_tokens() -> Iterator[dict[str, int]]:
    """Count the tokens text towers send through BERT in training mode (``counter["n"]``): the
    towers are built inside :func:`~kgrec.workflow.models.train_model`, so the count wraps the
    class's tokenizer for the duration of the block."""
    counter = {"n": 0}
    original = TunedTextEncoder.tokenize

    def tokenize(tower: TunedTextEncoder, texts):
        batch = original(tower, texts)
        if tower.training:
            counter["n"] += int(batch["attention_mask"].sum())
        return batch

    setattr(TunedTextEncoder, "tokenize", tokenize)  # noqa: B010 - a measurement hook, restored below
    try:
        yield counter
    finally:
        setattr(TunedTextEncoder, "tokenize", original)  # noqa: B010


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEMO_DATA, help="a kgrec tables folder (the demo data)")
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

    device = resolve_device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="kgrec-gpu-"))
    data = args.data
    if args.max_users is not None:
        tables = read_tables(args.data)
        keep = set(tables.users["user_id"].head(args.max_users))
        tables.users = tables.users[tables.users["user_id"].isin(keep)]
        tables.interactions = tables.interactions[tables.interactions["user_id"].isin(keep)]
        data = workdir / "data"
        write_tables(tables, data)
    ingest_files([data], workdir / "store")
    store = open_store(workdir / "store")
    try:
        dataset = load_dataset(store)
    finally:
        store.close()
    snapshot = dataset.snapshot
    encoder = TextEncoder(TextEncoderConfig(model_path=str(args.text_model) if args.text_model else None,
                                            max_length=args.max_length, batch_size=512)).to(device)
    t0 = time.perf_counter()
    features = encode_text(dataset, encoder)
    encode_seconds = time.perf_counter() - t0
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, patience=args.epochs,
                         device=str(device), precision=args.precision)
    settings = ModelSettings(train=config, text_tuning=args.mode, tuned_batch_size=args.batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with counting_bert_tokens() as tokens:
        trained = train_model("fused", dataset, features, ("rec",), settings, progress=True)
    model, history = trained.model, trained.history
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
        "trainable_parameters": trained.trainable_parameters,
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
