"""Time and peak memory of every stage of kgrec on synthetic catalogues of growing size.

For each size (:data:`kgrec.ingest.synthetic.SIZES`: ``10k``, ``100k``, ``1m`` products; 10 interactions
per user on average) the stages run one after another, **each in its own Python process**
(``python benchmarks/scale.py --stage NAME --size S --workdir W``), reading what the stage before
wrote to ``W/S/``; the child's ``ru_maxrss`` is then that stage's peak resident memory (imports
included: the "imports MiB" column says how much of it torch & co. take before the stage starts).

Stages:

``generate``  :func:`kgrec.ingest.synthetic.generate_catalogue` (in memory).
``write``     the tables to ``W/S/tables`` (:func:`kgrec.ingest.synthetic.write_tables_fast`; same process
              as ``generate``, so its peak includes the generated tables).
``ingest``    the tables into an embedded store (``W/S/store``), the pipeline ``kgrec ingest`` runs
              (:func:`kgrec.ingest.sources.discover` + :class:`kgrec.ingest.pipeline.Ingestor`, with checkpoint and reports).
``export``    the store to a :class:`kgrec.kg.export.GraphSnapshot` (saved to ``W/S/snapshot`` for the next stages,
              not timed).
``encode``    the distinct product texts with all-MiniLM-L6-v2 (:class:`kgrec.encoders.text.TextEncoder`, no cache).
              With more distinct texts than ``--encode-limit`` the stage is *not run* and the
              training stage uses random unit vectors in their place (said so in its notes).
``train``     one epoch of the fused model (:class:`kgrec.fusion.models.FusedRecommender`, built as
              ``kgrec.fusion.registry.build_model`` builds it): the step of :func:`kgrec.fusion.train.fit`
              (bf16 autocast on CUDA, fp32 on CPU) without the per-epoch validation; by default
              full batch (the GNN over the whole graph, softmax over all products), with
              ``--sampled`` over sampled subgraphs (``kgrec.fusion.minibatch.SampledFusedLoss``,
              ``--fanouts``, 1024 negatives, as ``TrainConfig.neighbor_sampling`` trains). Building
              the training examples is timed apart. If the epoch would outlast ``--train-budget``
              seconds, the steps run so far give the per-step time and the epoch time is
              *projected* (steps run / steps per epoch in the notes).
``evaluate``  full ranking (:func:`kgrec.evaluation.recommendation.rank_top_k_pairs`, history excluded) of up to
              ``--eval-users`` sampled test users, then top-100 candidate retrieval with
              :class:`kgrec.serving.retrieval.ProductIndex` (exact and IVF) over the fused product vectors for
              the same users (history excluded), with IVF's recall@100 against the full ranking.

Usage::

    python benchmarks/scale.py                              # sizes 10k,100k, CPU or CUDA (auto)
    python benchmarks/scale.py --sizes 1m --train-budget 300 --eval-users 1000
    python benchmarks/scale.py --device cuda --sizes 10k,100k,1m

Prints a markdown table (size x stage x seconds x peak MiB) and writes
``benchmarks/results/scale.json`` (with the machine: CPUs, torch version, device name).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("generate", "ingest", "export", "encode", "train", "evaluate")  # processes; generate also writes


# -- measurement -----------------------------------------------------------------------------


def peak_mib() -> float:
    """This process's peak resident memory so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Recorder:
    """Collects the rows of one stage process and writes them to ``W/S/stage-NAME.json``."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.rows: list[dict] = []
        self.imports_mib = round(rss_mib(), 1)
        self.cuda = args.device_obj.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def add(self, stage: str, seconds: float | None, status: str = "ok", notes: str = "", **extra) -> None:
        row = {"size": self.args.size, "stage": stage, "seconds": None if seconds is None else round(seconds, 3),
               "peak_mib": round(peak_mib(), 1), "imports_mib": self.imports_mib, "status": status,
               "notes": notes, **extra}
        if self.cuda:
            import torch

            row["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        self.rows.append(row)

    def write(self) -> None:
        path = self.args.dir / stage_file(self.args.stage, self.args.sampled)
        path.write_text(json.dumps({"rows": self.rows}, indent=2) + "\n")


def stage_file(stage: str, sampled: bool) -> str:
    return f"stage-{stage}{'-sampled' if sampled and stage == 'train' else ''}.json"


# -- the snapshot on disk (between stage processes; safetensors + Parquet + JSON, no pickle) -------


def save_snapshot(snapshot, directory: Path) -> None:
    import pandas as pd
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for node_type, ids in snapshot.id_maps.items():
        pd.DataFrame({"id": ids}).to_parquet(directory / f"ids-{node_type}.parquet", index=False)
    pd.DataFrame({"text": snapshot.product_text}).to_parquet(directory / "product_text.parquet", index=False)
    save_file({"|".join(k): v.contiguous() for k, v in snapshot.structure.items()}, str(directory / "structure.safetensors"))
    snapshot.interactions.to_parquet(directory / "interactions.parquet", index=False)
    (directory / "node_types.json").write_text(json.dumps(sorted(snapshot.id_maps)))


def load_snapshot(directory: Path):
    import pandas as pd
    from safetensors.torch import load_file

    from kgrec.kg.export import GraphSnapshot

    types = json.loads((directory / "node_types.json").read_text())
    id_maps = {t: pd.read_parquet(directory / f"ids-{t}.parquet")["id"].astype(str).tolist() for t in types}
    text = pd.read_parquet(directory / "product_text.parquet")["text"].astype(str).tolist()
    structure = {tuple(k.split("|")): v for k, v in load_file(str(directory / "structure.safetensors")).items()}
    inter = pd.read_parquet(directory / "interactions.parquet")
    return GraphSnapshot(id_maps=id_maps, product_text=text, structure=structure, interactions=inter)


# -- stages ----------------------------------------------------------------------------------


def stage_generate(args, rec: Recorder) -> None:
    from kgrec.ingest.synthetic import SyntheticConfig, generate_catalogue, write_tables_fast

    t0 = time.perf_counter()
    tables = generate_catalogue(SyntheticConfig.preset(args.size, seed=args.seed))
    rec.add("generate", time.perf_counter() - t0, rows=len(tables.products) + len(tables.users) + len(tables.interactions),
            notes=f"{len(tables.products):,} products, {len(tables.users):,} users, {len(tables.interactions):,} interactions")
    t0 = time.perf_counter()
    write_tables_fast(tables, args.dir / "tables")
    size = sum(p.stat().st_size for p in (args.dir / "tables").iterdir())
    rec.add("write", time.perf_counter() - t0, notes=f"{size / 2**20:,.0f} MiB on disk (write_tables_fast)")


def stage_ingest(args, rec: Recorder) -> None:
    import shutil

    from kgrec.ingest.pipeline import IngestConfig, Ingestor
    from kgrec.ingest.sources import discover
    from kgrec.kg.embedded import EmbeddedStore

    store_dir = args.dir / "store"
    shutil.rmtree(store_dir, ignore_errors=True)
    t0 = time.perf_counter()
    sources = discover([args.dir / "tables"]).sources
    store = EmbeddedStore(store_dir)
    report = Ingestor(store, IngestConfig(state_dir=store_dir / "_ingest")).run(sources)
    seconds = time.perf_counter() - t0
    if report.rejected or report.errors:
        raise SystemExit(f"ingest rejected {report.rejected} rows / errors {report.errors}")
    rec.add("ingest", seconds, rows=report.read, notes=f"{report.read / seconds:,.0f} rows/s, embedded store")


def stage_export(args, rec: Recorder) -> None:
    from kgrec.kg.embedded import EmbeddedStore
    from kgrec.kg.export import export_snapshot

    t0 = time.perf_counter()
    snapshot = export_snapshot(EmbeddedStore(args.dir / "store"))
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    save_snapshot(snapshot, args.dir / "snapshot")
    edges = sum(v.shape[1] for v in snapshot.structure.values()) + len(snapshot.interactions)
    rec.add("export", seconds, notes=f"{edges:,} edges; saving for the next stages {time.perf_counter() - t1:.1f} s, not counted")


def stage_encode(args, rec: Recorder) -> None:
    import pandas as pd
    from safetensors.torch import save_file

    from kgrec.encoders.text import TextEncoder, TextEncoderConfig

    texts = pd.read_parquet(args.dir / "snapshot" / "product_text.parquet")["text"].astype(str)
    codes, distinct = pd.factorize(texts)
    out = args.dir / "text.safetensors"
    out.unlink(missing_ok=True)
    if args.encode_limit is not None and len(distinct) > args.encode_limit:
        rec.add("encode", None, status="not run",
                notes=f"{len(distinct):,} distinct texts > --encode-limit {args.encode_limit:,}")
        return
    encoder = TextEncoder(TextEncoderConfig(model_path=args.text_model, batch_size=args.encode_batch)).to(args.device_obj)
    encoder.eval()
    rec.sync()
    t0 = time.perf_counter()
    vectors = encoder.encode(list(distinct))
    rec.sync()
    seconds = time.perf_counter() - t0
    save_file({"text": vectors[codes].contiguous()}, str(out))
    rec.add("encode", seconds, rows=len(distinct),
            notes=f"{len(distinct):,} distinct texts, {len(distinct) / seconds:,.0f} texts/s, "
                  f"{args.text_model or 'all-MiniLM-L6-v2'} (max_length 64, batch {args.encode_batch})")


def _text_features(args, num_products: int):
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    path = args.dir / "text.safetensors"
    if path.exists():
        return load_file(str(path))["text"], ""
    g = torch.Generator().manual_seed(args.seed)
    return F.normalize(torch.randn(num_products, 384, generator=g), dim=-1), "random 384-d text stand-in (encode not run); "


def _build_fused(snapshot, text):
    from kgrec.fusion.models import FusedConfig
    from kgrec.fusion.registry import ModelInputs, build_model

    return build_model("fused", ModelInputs.from_snapshot(snapshot, text), FusedConfig())


def stage_train(args, rec: Recorder) -> None:
    import math

    import torch
    from safetensors.torch import save_file

    from kgrec.fusion.data import training_examples
    from kgrec.fusion.train import TrainConfig, autocast_dtype, seed_everything

    t0 = time.perf_counter()
    snapshot = load_snapshot(args.dir / "snapshot")
    text, note = _text_features(args, snapshot.num_products)
    load_s = time.perf_counter() - t0
    seed_everything(args.seed)
    device = args.device_obj
    model = _build_fused(snapshot, text).to(device)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=3e-3, device=str(device),
                      neighbor_sampling=tuple(args.fanouts) if args.sampled else None)
    train_graph = snapshot.message_passing("train")
    loss_fn = None
    if args.sampled:
        from kgrec.fusion.minibatch import SampledFusedLoss

        loss_fn = SampledFusedLoss(model, train_graph, cfg.neighbor_sampling, cfg.num_negatives, seed=cfg.seed)
        note += f"sampled: kgrec.fusion.minibatch.SampledFusedLoss, fanouts {list(cfg.neighbor_sampling)}, {cfg.num_negatives} negatives; "
    else:
        note += "full batch (whole graph, softmax over all products); "
    amp = autocast_dtype(cfg, device)
    note += f"{'bf16 autocast' if amp is not None else 'fp32'}; "

    t0 = time.perf_counter()
    examples = training_examples(snapshot, cfg.max_history)
    examples_s = time.perf_counter() - t0

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    steps_total = math.ceil(len(examples) / args.batch_size)
    rec.sync()
    t0 = time.perf_counter()
    model.set_graph(train_graph)
    if loss_fn is not None:
        loss_fn.set_graph(train_graph)
    model.train()
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
    steps, total = 0, 0.0
    for begin in range(0, len(examples), args.batch_size):  # the step of kgrec.fusion.train.fit
        batch = examples[order[begin:begin + args.batch_size]].to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = loss_fn(batch) if loss_fn is not None else model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()
        total += float(loss.detach())
        steps += 1
        if args.train_budget is not None and time.perf_counter() - t0 > args.train_budget and steps < steps_total:
            break
    rec.sync()
    ran = time.perf_counter() - t0
    if steps < steps_total:
        seconds, status = ran / steps * steps_total, "projected"
        note += f"{steps}/{steps_total} steps run in {ran:.0f} s, epoch projected; "
    else:
        seconds, status = ran, "ok"
        note += f"{steps_total} steps; "
    note += f"batch {args.batch_size}, mean loss {total / steps:.3f}; examples built in {examples_s:.1f} s, not counted"
    rec.add("train (sampled)" if args.sampled else "train", seconds, status=status, notes=note, steps_run=steps,
            steps_per_epoch=steps_total, examples=len(examples), examples_s=round(examples_s, 2), load_s=round(load_s, 2))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(args.dir / "model.safetensors"))


def stage_evaluate(args, rec: Recorder) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from kgrec.evaluation.metrics import hit_matrix, mean_metrics, per_user_metrics
    from kgrec.evaluation.recommendation import evaluation_inputs, rank_top_k_pairs
    from kgrec.serving.retrieval import CSR, ProductIndex, recall_at_k

    snapshot = load_snapshot(args.dir / "snapshot")
    text, note = _text_features(args, snapshot.num_products)
    model = _build_fused(snapshot, text)
    model.load_state_dict(load_file(str(args.dir / "model.safetensors")))
    model.to(args.device_obj).eval()

    rec.sync()
    t0 = time.perf_counter()
    model.set_graph(snapshot.message_passing("test"))
    batch, rows, cols = evaluation_inputs(snapshot, "test", 50)
    n = min(args.eval_users, len(batch))
    pick = np.sort(np.random.default_rng(args.seed).choice(len(batch), size=n, replace=False))
    keep = np.isin(rows.numpy(), pick)
    new_row = np.searchsorted(pick, rows.numpy()[keep])
    sub = batch[torch.as_tensor(pick)]
    sub_rows, sub_cols = torch.as_tensor(new_row), cols[torch.as_tensor(keep)]
    topk = rank_top_k_pairs(model, sub, sub_rows, sub_cols, 100)
    rec.sync()
    full_s = time.perf_counter() - t0
    metrics = mean_metrics(per_user_metrics(hit_matrix(topk, sub.targets), torch.ones(n), (10, 100)))
    rec.add("evaluate", full_s, rows=n,
            notes=f"{note}full ranking of {n:,} test users over {snapshot.num_products:,} products: "
                  f"recall@10 {metrics['recall@10']:.4f}, ndcg@10 {metrics['ndcg@10']:.4f}, recall@100 {metrics['recall@100']:.4f}",
            **{f"test_{k}": round(v, 4) for k, v in metrics.items()})

    # candidate retrieval: faiss over the fused product vectors, the same users, history excluded
    try:
        import faiss  # noqa: F401
    except ImportError:
        rec.add("retrieve", None, status="not run", notes="faiss is not installed here")
        return
    with torch.no_grad():
        state = model.serving_state()
        users = model.serving_users({k: v.to(args.device_obj) for k, v in state.items()}, sub.to(args.device_obj)).cpu()
    products = state["products"]
    exclude = CSR.from_pairs(sub_rows, sub_cols, n)
    save_file({"products": products.contiguous(), "users": users.contiguous()}, str(args.dir / "vectors.safetensors"))
    out = {}
    for kind in ("exact", args.ann_kind):
        t0 = time.perf_counter()
        index = ProductIndex(kind).build(products)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids, _ = index.search(users, 100, exclude=exclude)
        out[kind] = (build_s, time.perf_counter() - t0, ids, index)
    ann_build, ann_search, ann_ids, ann_index = out[args.ann_kind]
    recall = recall_at_k(ann_ids, topk, 100)
    agree = recall_at_k(out["exact"][2], topk, 100)
    setting = f"nlist {ann_index.nlist}, nprobe {ann_index.config.nprobe}" if args.ann_kind == "ivf" else f"M {ann_index.config.hnsw_m}"
    rec.add("retrieve", ann_build + ann_search, rows=n,
            notes=f"faiss top-100 for {n:,} users: exact build {out['exact'][0]:.1f} s + search {out['exact'][1]:.2f} s "
                  f"(agrees with full ranking {agree:.4f}); {args.ann_kind} ({setting}) build {ann_build:.1f} s + search "
                  f"{ann_search:.2f} s, recall@100 vs full ranking {recall:.4f}",
            ann_recall_at_100=round(recall, 4), exact_agreement=round(agree, 4), ann_build_s=round(ann_build, 3),
            ann_search_s=round(ann_search, 3), exact_build_s=round(out["exact"][0], 3), exact_search_s=round(out["exact"][1], 3))


# -- the orchestrator --------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    import torch

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(0)
    else:
        info["device_name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def table(rows: list[dict]) -> str:
    cuda = any("cuda_peak_mib" in r for r in rows)
    head = "| size | stage | seconds | peak MiB | imports MiB |" + (" CUDA peak MiB |" if cuda else "") + " status | notes |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:,.1f}"
        cells = [r["size"], r["stage"], secs, f"{r['peak_mib']:,.0f}", f"{r['imports_mib']:,.0f}"]
        if cuda:
            cells.append(f"{r['cuda_peak_mib']:,.0f}" if "cuda_peak_mib" in r else "–")
        cells += [r["status"], r.get("notes", "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace, argv: list[str]) -> dict:
    # the children get every option but --sizes and --out (and their values)
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--sizes", "--out"):
            skip = True
            continue
        if a.startswith("--sizes=") or a.startswith("--out="):
            continue
        cleaned.append(a)
    passthrough = cleaned
    rows: list[dict] = []
    started = time.time()
    result: dict = {}

    def save() -> None:  # after every stage, so a run cut short keeps what it measured
        result.update({
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python benchmarks/scale.py " + " ".join(argv),
            "wall_s": round(time.time() - started, 1),
            "machine": machine_info(str(args.device_obj)),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                         if k not in ("device_obj", "dir", "stage", "size")},
            "rows": rows,
            "markdown": table(rows),
        })
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    plan = [(stage, args.sampled) for stage in STAGES]
    if args.both:
        passthrough = [a for a in passthrough if a not in ("--both", "--sampled")]
        i = plan.index(("train", False))
        plan[i:i + 1] = [("train", False), ("train", True)]
        plan = [(stage, True) if stage == "evaluate" else (stage, sampled) for stage, sampled in plan]
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        for stage, sampled in plan:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--size", size, *passthrough,
                   *(["--sampled"] if sampled and "--sampled" not in passthrough else [])]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=str(ROOT))
            wall = time.perf_counter() - t0
            path = Path(args.workdir) / size / stage_file(stage, sampled)
            if proc.returncode != 0 or not path.exists():
                rows.append({"size": size, "stage": stage, "seconds": None, "peak_mib": 0.0, "imports_mib": 0.0,
                             "status": f"failed (exit {proc.returncode})", "notes": ""})
                print(f"{size} {stage}: failed (exit {proc.returncode}); later stages of this size skipped", flush=True)
                save()
                break
            for row in json.loads(path.read_text())["rows"]:
                row["process_wall_s"] = round(wall, 1)
                rows.append(row)
                secs = "–" if row["seconds"] is None else f"{row['seconds']:.1f} s"
                print(f"{size} {row['stage']}: {secs}, peak {row['peak_mib']:,.0f} MiB  {row['notes']}", flush=True)
            save()
    save()
    print()
    print(result["markdown"])
    print(f"wrote {args.out}")
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10k,100k", help="comma-separated presets of kgrec.ingest.synthetic.SIZES")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "scale")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-model", default=None, help="local BERT directory (default: the packaged MiniLM)")
    ap.add_argument("--encode-limit", type=int, default=None, help="skip encoding above this many distinct texts")
    ap.add_argument("--encode-batch", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2048, help="training examples per step")
    ap.add_argument("--train-budget", type=float, default=300.0,
                    help="seconds of training before the epoch time is projected from the steps run (0 = whole epoch)")
    ap.add_argument("--sampled", action="store_true", help="train with kgrec.fusion.minibatch.SampledFusedLoss")
    ap.add_argument("--both", action="store_true",
                    help="train twice, full batch then --sampled (evaluate uses the sampled model)")
    ap.add_argument("--fanouts", type=int, nargs="+", default=[10, 10], help="neighbours per layer with --sampled")
    ap.add_argument("--eval-users", type=int, default=2000, help="test users ranked in the evaluate stage")
    ap.add_argument("--ann-kind", default="ivf", choices=("ivf", "hnsw"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--stage", choices=STAGES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_budget is not None and args.train_budget <= 0:
        args.train_budget = None
    from kgrec.fusion.train import resolve_device

    args.device_obj = resolve_device(args.device)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.stage is None:
        return orchestrate(args, argv)
    from kgrec.ingest.synthetic import SIZES

    if args.size not in SIZES:
        raise SystemExit(f"unknown size {args.size!r}; presets: {list(SIZES)}")
    args.dir = Path(args.workdir) / args.size
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / stage_file(args.stage, args.sampled)).unlink(missing_ok=True)
    rec = Recorder(args)
    {"generate": stage_generate, "ingest": stage_ingest, "export": stage_export, "encode": stage_encode,
     "train": stage_train, "evaluate": stage_evaluate}[args.stage](args, rec)
    rec.write()
    return None


if __name__ == "__main__":
    main()
