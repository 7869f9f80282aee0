"""RecBole 1.2.1 peers (BPR, LightGCN, SASRec) on kgrec's own split, side by side with kgrec.

Usage (from the repository root, with kgrec's virtual env active)::

    python benchmarks/recbole_peers.py runs/demo/results.json            # kgrec numbers + peers
    python benchmarks/recbole_peers.py --setup-only                      # only build the peers' venv
    python benchmarks/recbole_peers.py runs/demo/results.json --stored   # against the committed peers, no RecBole run
    python benchmarks/recbole_peers.py runs/demo/results.json --models BPR,LightGCN \\
        --epochs BPR=300,LightGCN=150,SASRec=8 --jobs 2

What it does:

1. builds RecBole's own virtual env (default ``benchmarks/.venv-recbole``, git-ignored) the way
   ``shared/notes/recbole-peers.md`` describes: torch 2.13.0 (the CPU wheel on disk), recbole
   1.2.1 without its dependencies, then only what its imports need, pinned (:data:`PEER_PINS`);
   skipped when a stamp file says the same pins are installed;
2. applies the two one-line fixes to the installed package (idempotent: a file already fixed is
   left alone; a file that has neither form stops the run): ``weights_only=False`` on the trainer's
   two ``torch.load`` calls (torch >= 2.6), ``A._dict.update`` in LightGCN (current scipy);
3. writes RecBole atomic files from the catalogue tables (``data/amazon-scientific``), split by
   :func:`kgrec.kg.export.leave_one_out` (timestamp = position in the user's sequence): benchmark files
   ``train/valid/test`` for BPR and LightGCN; one ``.inter`` file with ``LS: valid_and_test`` for
   SASRec, which cannot read benchmark files;
4. trains each peer in a subprocess of that env (``nice``, ``--threads`` each, ``--jobs`` at once),
   keeps RecBole's early stopping on valid NDCG@10 and its best checkpoint, and scores the test
   users *with kgrec's protocol*: every item is ranked, the user's train+valid items are excluded
   (RecBole itself does not exclude them for sequential models), and the metrics are
   :mod:`kgrec.evaluation.metrics` (this checkout's file, loaded by path: it needs only torch). RecBole's own
   evaluator's numbers are kept beside them for reference;
5. checks that the test (and valid) targets RecBole built are kgrec's leave-one-out targets
   (prints the number of mismatches, which must be 0);
6. prints one table (kgrec's models from the results JSON, then the peers) and writes
   ``benchmarks/results/peers.json`` (numbers, configs, timings, versions, the split check) and
   ``benchmarks/results/peers_per_user.csv.gz`` (each test user's target position and rank, so
   significance against kgrec can be recomputed; ``--kgrec-per-user`` does it at once from a
   ``kgrec evaluate`` folder's ``per_user.parquet``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / "benchmarks" / ".venv-recbole"
DEFAULT_WORK = ROOT / "runs" / "recbole-peers"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "peers.json"
DEFAULT_DATA = ROOT / "data" / "amazon-scientific"

#: What the peers' venv gets, in install order (recbole without its dependencies).
TORCH_PIN = "torch==2.13.0"
RECBOLE_PIN = "recbole==1.2.1"
PEER_PINS = (
    "numpy==1.26.4",  # < 2: RecBole uses np.float & co.
    "pandas==2.2.3",
    "scipy==1.15.3",
    "scikit-learn==1.6.1",
    "tensorboard==2.19.0",  # SummaryWriter
    "colorlog==4.7.2",
    "colorama==0.4.4",
    "pyyaml==6.0.2",
    "tqdm==4.67.1",
    "texttable==1.7.0",
    "tabulate==0.9.0",
)

#: (file inside the recbole package, unfixed text, fixed text, expected count).
FIXES = (
    (
        "trainer/trainer.py",
        "torch.load(resume_file, map_location=self.device)",
        "torch.load(resume_file, map_location=self.device, weights_only=False)",
        1,
    ),
    (
        "trainer/trainer.py",
        "torch.load(checkpoint_file, map_location=self.device)",
        "torch.load(checkpoint_file, map_location=self.device, weights_only=False)",
        1,
    ),
    ("model/general_recommender/lightgcn.py", "A._update(data_dict)", "A._dict.update(data_dict)", 1),
)

PEERS = ("BPR", "LightGCN", "SASRec")
DEFAULT_EPOCHS = {"BPR": 300, "LightGCN": 150, "SASRec": 8}
#: RecBole settings per peer besides its defaults (recorded in peers.json with the numbers).
PEER_CONFIG = {
    "BPR": {"train_batch_size": 2048, "learning_rate": 0.001, "embedding_size": 64,
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
    "LightGCN": {"train_batch_size": 2048, "learning_rate": 0.001, "embedding_size": 64, "n_layers": 2, "reg_weight": 1e-5,
                 "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
    "SASRec": {"train_batch_size": 2048, "learning_rate": 0.001, "hidden_size": 64, "inner_size": 256, "n_layers": 2,
               "n_heads": 2, "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "loss_type": "CE",
               "MAX_ITEM_LIST_LENGTH": 50, "train_neg_sample_args": None},
}
COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@20", "auc")


# --------------------------------------------------------------------------- the peers' venv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, log=print) -> Path:
    """Create and fill the peers' venv unless its stamp matches :data:`PEER_PINS`."""
    stamp = venv / "kgrec-peers.stamp"
    wanted = "\n".join((TORCH_PIN, RECBOLE_PIN, *PEER_PINS))
    if venv_python(venv).exists() and stamp.exists() and stamp.read_text() == wanted:
        return venv_python(venv)
    log(f"building {venv} (torch, recbole --no-deps, {len(PEER_PINS)} pinned packages) ...")
    if not venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(["nice", "-n", "10", *pip, TORCH_PIN], check=True)
    subprocess.run(["nice", "-n", "10", *pip, "--no-deps", RECBOLE_PIN], check=True)
    subprocess.run(["nice", "-n", "10", *pip, *PEER_PINS], check=True)
    stamp.write_text(wanted)
    return venv_python(venv)


def recbole_dir(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages/recbole"))
    if not found:
        raise SystemExit(f"recbole is not installed in {venv}")
    return found[0]


def apply_fixes(package: Path, log=print) -> list[str]:
    """Apply :data:`FIXES` to the installed package; idempotent. Returns what was done per fix."""
    done = []
    for rel, old, new, count in FIXES:
        path = package / rel
        text = path.read_text()
        if old in text:  # (`old` is no substring of `new`: the call's closing bracket differs)
            if text.count(old) != count:
                raise SystemExit(f"{path}: expected {count} x {old!r}, found {text.count(old)}")
            path.write_text(text.replace(old, new))
            done.append(f"{rel}: {new!r} applied")
        elif text.count(new) == count:
            done.append(f"{rel}: {new!r} already there")
        else:
            raise SystemExit(f"{path}: neither {old!r} nor {new!r} found; is this recbole 1.2.1?")
    for line in done:
        log("  " + line)
    return done


# --------------------------------------------------------------------------- the split


def kgrec_split(data: Path):
    """The catalogue's interactions with kgrec's leave-one-out labels (``user_id, product_id, order, split``)."""
    from kgrec.ingest.tables import read_tables
    from kgrec.kg.export import leave_one_out

    inter = read_tables(data).interactions[["user_id", "product_id", "order"]].copy()
    if inter.duplicated(["user_id", "order"]).any():
        raise SystemExit("two interactions of one user share an 'order': the sequence is ambiguous")
    inter = inter.sort_values(["user_id", "order"], kind="stable").reset_index(drop=True)
    inter["split"] = leave_one_out(inter.rename(columns={"user_id": "user"})).to_numpy()
    return inter


def store_split(store: str):
    """The interactions of an ingested store (``kgrec ingest``, any input layout) with the split kgrec's
    workflow gives them (``user_id, product_id, order, split``; ``order`` = position in the user's
    sequence as kgrec orders it, so timestamp ties cannot reorder RecBole's sequences)."""
    from kgrec.kg.export import leave_one_out
    from kgrec.workflow.data import load_dataset
    from kgrec.workflow.store import open_store

    with open_store(store) as graph:
        snapshot = load_dataset(graph).snapshot
    inter = snapshot.interactions
    users, products = snapshot.id_maps["user"], snapshot.id_maps["product"]
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"user_id": [str(users[u]) for u in inter["user"]],
                          "product_id": [str(products[i]) for i in inter["product"]],
                          "split": inter["split"].to_numpy(), "stamp": inter["order"].to_numpy(),
                          "row": -np.arange(len(inter))})
    # leave_one_out breaks a tie of stamps towards the earlier row as the more recent: the same order here
    frame = frame.sort_values(["user_id", "stamp", "row"], kind="stable")
    frame["order"] = frame.groupby("user_id", sort=False).cumcount()
    frame = frame.drop(columns=["stamp", "row"])
    if (leave_one_out(frame.rename(columns={"user_id": "user"})).to_numpy() != frame["split"].to_numpy()).any():
        raise SystemExit(f"{store}: the store's split is not leave-one-out by sequence position")
    return frame.sort_values(["user_id", "order"], kind="stable").reset_index(drop=True)


def write_atomic_files(inter, work: Path) -> dict[str, Path]:
    """RecBole atomic files: benchmark files for general models, one .inter for sequential ones."""
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    general, seq = work / "data" / "scientific", work / "data" / "scientific_seq"
    general.mkdir(parents=True, exist_ok=True)
    seq.mkdir(parents=True, exist_ok=True)

    def dump(frame, path: Path) -> None:
        with open(path, "w") as fh:
            fh.write(header)
            for u, p, o in zip(frame["user_id"], frame["product_id"], frame["order"]):
                fh.write(f"{u}\t{p}\t{float(o)}\n")

    for split in ("train", "valid", "test"):
        dump(inter[inter["split"] == split], general / f"scientific.{split}.inter")
    dump(inter, seq / "scientific_seq.inter")
    targets = {s: dict(zip(inter.loc[inter["split"] == s, "user_id"], inter.loc[inter["split"] == s, "product_id"]))
               for s in ("valid", "test")}
    visible = {}
    for s, allowed in (("valid", ("train",)), ("test", ("train", "valid"))):
        part = inter[inter["split"].isin(allowed)]
        visible[s] = {u: sorted(set(g)) for u, g in part.groupby("user_id")["product_id"]}
    (work / "split.json").write_text(json.dumps({"targets": targets, "visible": visible}))
    return {"general": general, "seq": seq}


# --------------------------------------------------------------------------- the worker (peers' venv)


def kgrec_metrics_module():
    """kgrec's metric functions (``evaluation/metrics.py`` of this checkout) inside the peers' venv,
    which has no kgrec installed (its pins clash with kgrec's); the file needs only torch, so it is
    loaded from its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kgrec_evaluation_metrics", ROOT / "evaluation" / "metrics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(model_name: str, work: Path, epochs: int, stopping_step: int, threads: int, seed: int,
           eval_step: int = 1, device: str = "cpu") -> None:
    """Train one peer with RecBole and score it with kgrec's protocol; writes ``work/<model>.json``."""
    import numpy as np
    import torch

    # numpy 2 (e.g. a GPU machine's image): RecBole's Config.compatibility_settings reads these removed aliases
    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)
    torch.set_num_threads(threads)
    work = Path(work).resolve()
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    metrics = kgrec_metrics_module()
    auc_from_rank, metrics_from_position, target_rank = metrics.auc_from_rank, metrics.metrics_from_position, metrics.target_rank

    sys.argv = sys.argv[:1]  # RecBole's Config reads `--key=value` from the command line

    sequential = model_name == "SASRec"
    config_dict = {
        "data_path": str(work / "data"),
        "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "metrics": ["Recall", "NDCG", "MRR", "Hit", "Precision"], "topk": [10, 20], "valid_metric": "NDCG@10",
        "epochs": epochs, "stopping_step": stopping_step, "eval_step": eval_step, "eval_batch_size": 4096,
        "seed": seed, "reproducibility": True, "use_gpu": device != "cpu", "gpu_id": "0", "show_progress": False,
        **PEER_CONFIG[model_name],
    }
    if sequential:
        dataset_name = "scientific_seq"
        config_dict["eval_args"] = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"}
    else:
        dataset_name = "scientific"
        config_dict["benchmark_filename"] = ["train", "valid", "test"]
        config_dict["eval_args"] = {"order": "TO", "mode": "full", "group_by": "user"}
    config = Config(model=model_name, dataset=dataset_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # RecBole's own log, under work/log/
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best = {"epoch": -1}
    save = trainer._save_checkpoint

    def remember(epoch, *args, **kwargs):
        best["epoch"] = epoch
        return save(epoch, *args, **kwargs)

    trainer._save_checkpoint = remember
    start = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False, verbose=True)
    fit_seconds = time.perf_counter() - start
    recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best epoch

    split = json.loads((work / "split.json").read_text())
    uid, iid = dataset.uid_field, dataset.iid_field
    token2id = dataset.field2token_id[iid]
    id2user = dataset.field2id_token[uid]
    id2item = dataset.field2id_token[iid]
    n_items = dataset.item_num

    def own_eval(data, name):
        """Full ranking with kgrec's exclusion (visible history) and metrics."""
        visible = split["visible"][name]
        users, targets, positions, ranks, cands = [], [], [], [], []
        model.eval()
        with torch.no_grad():
            for batched in data:
                interaction, _, positive_u, positive_i = batched
                scores = model.full_sort_predict(interaction.to(config["device"])).view(-1, n_items).float().cpu()
                rows_user = interaction[uid].cpu().numpy()
                exclude = torch.zeros_like(scores, dtype=torch.bool)
                exclude[:, 0] = True  # RecBole's padding item
                for r, u in enumerate(rows_user):
                    hist = [token2id[p] for p in visible.get(id2user[u], []) if p in token2id]
                    exclude[r, hist] = True
                tgt = torch.full((len(rows_user),), -1, dtype=torch.long)
                tgt[positive_u] = positive_i
                if (tgt < 0).any():
                    raise SystemExit(f"{name}: a user without a target in RecBole's {name} data")
                top = torch.topk(scores.masked_fill(exclude, float("-inf")), 50, dim=1).indices
                hit = (top == tgt.unsqueeze(1)) & ~exclude.gather(1, tgt.unsqueeze(1))
                pos = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros(len(tgt))).long()
                rank, num = target_rank(scores, tgt, exclude)
                users += [id2user[u] for u in rows_user]
                targets += [id2item[t] for t in tgt.tolist()]
                positions.append(pos)
                ranks.append(rank)
                cands.append(num)
        pos, rank, num = torch.cat(positions), torch.cat(ranks), torch.cat(cands)
        per_user = metrics_from_position(pos, (10, 20, 50))
        per_user["auc"] = auc_from_rank(rank, num)
        metrics = {k: float(v.mean()) for k, v in per_user.items()}
        return metrics, users, targets, pos.tolist(), rank.tolist(), num.tolist()

    test_metrics, users, targets, pos, rank, num = own_eval(test_data, "test")
    valid_metrics, v_users, v_targets, *_ = own_eval(valid_data, "valid")
    epochs_run = len(trainer.train_loss_dict)
    payload = {
        "model": model_name,
        "recbole": recbole.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": str(config["device"]) + (f" ({torch.cuda.get_device_name(0)})" if device != "cpu" else ""),
        "config": {k: config_dict[k] for k in config_dict if k not in ("data_path", "checkpoint_dir")},
        "epochs_max": epochs,
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"] + 1,
        "fit_seconds": round(fit_seconds, 1),
        "seconds_per_epoch": round(fit_seconds / max(epochs_run, 1), 2),
        "best_valid_recbole": float(best_valid),
        "recbole_test": {k.lower(): float(v) for k, v in recbole_test.items()},
        "test": test_metrics,
        "valid": valid_metrics,
        "test_targets": dict(zip(users, targets)),
        "valid_targets": dict(zip(v_users, v_targets)),
        "per_user": {"user_id": users, "target": targets, "position": pos, "rank": rank, "num_candidates": num},
    }
    (work / f"{model_name}.json").write_text(json.dumps(payload))


# --------------------------------------------------------------------------- the driver


def parse_epochs(text: str | None) -> dict[str, int]:
    epochs = dict(DEFAULT_EPOCHS)
    if text:
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name not in PEERS:
                raise SystemExit(f"--epochs: unknown peer {name!r}; choose from {PEERS}")
            epochs[name] = int(value)
    return epochs


def mismatches(expected: dict[str, str], got: dict[str, str]) -> dict[str, int]:
    missing = sum(1 for u in expected if u not in got)
    extra = sum(1 for u in got if u not in expected)
    differ = sum(1 for u, p in expected.items() if u in got and got[u] != p)
    return {"missing": missing, "extra": extra, "different": differ, "total": missing + extra + differ}


def kgrec_rows(path: Path | None) -> list[dict]:
    if path is None:
        return []
    payload = json.loads(Path(path).read_text())
    rows = []
    for r in payload["results"]:
        test = r["test"]
        rows.append({"name": f"kgrec {r['model']}", "test": test, "train_seconds": r.get("train_seconds"),
                     "epochs": r.get("epochs"), "best_epoch": r.get("best_epoch")})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [c for c in COLUMNS if any(c in r["test"] for r in rows)]
    lines = ["| model | " + " | ".join(cols) + " | epochs (best) | train s |", "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        cells = [f"{r['test'][c]:.4f}" if c in r["test"] else "–" for c in cols]
        ep = f"{r.get('epochs')} ({r.get('best_epoch')})" if r.get("epochs") is not None else "–"
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "–"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {ep} | {secs} |")
    return "\n".join(lines)


def paired_vs_kgrec(per_user_parquet: Path, peers: dict[str, dict], reference: str = "fused") -> list[dict]:
    """Paired tests of kgrec's ``reference`` model against each peer on the common test users."""
    import numpy as np
    import pandas as pd
    import torch

    from kgrec.evaluation.metrics import metrics_from_position
    from kgrec.evaluation.significance import holm, paired_test

    frame = pd.read_parquet(per_user_parquet)
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"] == "full"]
    ref = frame[(frame["model"] == reference) & (frame["split"] == "test")].set_index("user_id")
    if ref.empty:
        raise SystemExit(f"{per_user_parquet} has no full-ranking test rows of kgrec model {reference!r}")
    rows = []
    for name, result in peers.items():
        peer = pd.DataFrame(result["per_user"]).set_index("user_id")
        common = ref.index.intersection(peer.index)
        a_pos = torch.as_tensor(ref.loc[common, "position"].to_numpy().astype(np.int64))
        b_pos = torch.as_tensor(peer.loc[common, "position"].to_numpy().astype(np.int64))
        a, b = metrics_from_position(a_pos, (10, 20)), metrics_from_position(b_pos, (10, 20))
        for metric in ("ndcg@10", "recall@10", "ndcg@20", "recall@20"):
            t = paired_test(a[metric].numpy(), b[metric].numpy(), seed=0)
            rows.append({"reference": f"kgrec {reference}", "peer": f"RecBole {name}", "metric": metric,
                         "users": int(len(common)), **{k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                                       for k, v in t.as_dict().items()}})
    for metric in {r["metric"] for r in rows}:  # Holm over the peers, per metric (bootstrap p-values)
        block = [r for r in rows if r["metric"] == metric]
        for r, p in zip(block, holm([r["p_bootstrap"] for r in block])):
            r["p_holm"] = float(p)
            r["significant"] = bool(p < 0.05)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kgrec_results", nargs="?", type=Path, help="kgrec results JSON (e.g. runs/demo/results.json)")
    ap.add_argument("--models", default=",".join(PEERS), help="comma-separated peers: BPR,LightGCN,SASRec")
    ap.add_argument("--epochs", default=None, help="max epochs per peer, e.g. BPR=300,LightGCN=150,SASRec=8")
    ap.add_argument("--stopping-step", type=int, default=10, help="RecBole early stopping: validations without improvement")
    ap.add_argument("--eval-step", type=int, default=1, help="RecBole: validate every this many epochs")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (the peers' torch must see a GPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per peer")
    ap.add_argument("--jobs", type=int, default=1, help="peers trained at once")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--store", default=None, help="an ingested store (e.g. RecBole atomic files with a KG): its "
                    "interactions and kgrec's split instead of --data's catalogue tables")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--kgrec-per-user", type=Path, default=None,
                    help="per_user.parquet of a `kgrec evaluate` run: paired tests of kgrec fused vs each peer")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse peers already trained in --work (their own recorded settings go into peers.json)")
    ap.add_argument("--setup-only", action="store_true", help="build the venv and apply the fixes, then stop")
    ap.add_argument("--stored", action="store_true",
                    help="compare the kgrec run with the peers committed in benchmarks/results (peers.json and "
                         "peers_per_user.csv.gz: same split and protocol) instead of training them; paired tests "
                         "from the run's per_user.parquet; writes --out (default benchmarks/results/peers_vs_run.json)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()  # the peer workers chdir into it

    if args.worker:
        epochs = parse_epochs(args.epochs)[args.worker]
        worker(args.worker, args.work, epochs, args.stopping_step, args.threads, args.seed, args.eval_step, args.device)
        return 0

    if args.stored:
        return stored_comparison(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {PEERS}")
    epochs = parse_epochs(args.epochs)
    python = ensure_venv(args.venv)
    print(f"peers' venv: {args.venv}")
    fixes = apply_fixes(recbole_dir(args.venv))
    if args.setup_only:
        return 0

    inter = store_split(args.store) if args.store else kgrec_split(args.data)
    args.work.mkdir(parents=True, exist_ok=True)
    write_atomic_files(inter, args.work)
    split = json.loads((args.work / "split.json").read_text())
    counts = inter["split"].value_counts().to_dict()
    repeats = sum(1 for u, p in split["targets"]["test"].items() if p in set(split["visible"]["test"].get(u, [])))
    print(f"split: {counts}; test targets already in the user's history (cannot be hit): {repeats}")

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    settings = {m: {"epochs": epochs[m], "stopping_step": args.stopping_step, "eval_step": args.eval_step,
                    "threads": args.threads, "seed": args.seed, "device": args.device} for m in models}
    pending = []
    for m in models:
        result_file, settings_file = args.work / f"{m}.json", args.work / f"{m}.settings.json"
        if args.reuse and result_file.exists() and settings_file.exists():
            settings[m] = json.loads(settings_file.read_text())  # the settings it was trained with
            print(f"{m}: reusing {result_file} (trained with {settings[m]})")
            continue
        result_file.unlink(missing_ok=True)
        settings_file.write_text(json.dumps(settings[m]))
        pending.append(m)
    running: list[tuple[str, subprocess.Popen, float]] = []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.jobs:
            m = pending.pop(0)
            cmd = ["nice", "-n", "10", str(python), str(Path(__file__).resolve()), "--worker", m, "--work", str(args.work),
                   "--epochs", f"{m}={epochs[m]}", "--stopping-step", str(args.stopping_step),
                   "--eval-step", str(args.eval_step), "--device", args.device,
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            print(f"{m}: training (max {epochs[m]} epochs, log {args.work / f'{m}.log'})")
            with open(args.work / f"{m}.log", "w") as log:  # the worker keeps its own copy of the handle
                running.append((m, subprocess.Popen(cmd, cwd=args.work, env=env, stdout=log, stderr=subprocess.STDOUT),
                                time.perf_counter()))
        time.sleep(2)
        for item in list(running):
            m, proc, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0:
                tail = (args.work / f"{m}.log").read_text()[-3000:]
                raise SystemExit(f"{m} failed (exit {proc.returncode}):\n{tail}")
            print(f"{m}: done in {time.perf_counter() - t0:.0f} s")
    wall = time.perf_counter() - start

    peers, checks = {}, {}
    for m in models:
        result = json.loads((args.work / f"{m}.json").read_text())
        peers[m] = result
        checks[m] = {s: mismatches(split["targets"][s], result[f"{s}_targets"]) for s in ("valid", "test")}
    rows = kgrec_rows(args.kgrec_results)
    for m, r in peers.items():
        rows.append({"name": f"RecBole {m}", "test": r["test"], "train_seconds": r["fit_seconds"],
                     "epochs": r["epochs_run"], "best_epoch": r["best_epoch"]})
    table = format_table(rows)
    print()
    print("test split, full ranking over all products, each user's train+valid products excluded")
    print(table)
    for m in models:
        c = checks[m]
        print(f"{m}: target mismatches vs kgrec.kg.export.leave_one_out: test {c['test']['total']}, valid {c['valid']['total']}; "
              f"RecBole's own evaluator ndcg@10 {peers[m]['recbole_test'].get('ndcg@10', float('nan')):.4f}")
    significance = paired_vs_kgrec(args.kgrec_per_user, peers) if args.kgrec_per_user else []
    for s in significance:
        if s["metric"] == "ndcg@10":
            print(f"{s['reference']} vs {s['peer']} ndcg@10 on {s['users']} users: diff {s['diff']:+.4f} "
                  f"[{s['ci_low']:+.4f}, {s['ci_high']:+.4f}], p_bootstrap {s['p_bootstrap']:.4f}, Holm {s['p_holm']:.4f}")

    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "protocol": "leave-one-out by order (kgrec.kg.export.leave_one_out); full ranking over all products; "
                    "the user's train+valid products excluded; metrics of kgrec.evaluation.metrics",
        "data": str(args.store or args.data),
        "split": {"interactions": {k: int(v) for k, v in counts.items()}, "repeat_test_targets": repeats},
        "fixes": fixes,
        "wall_seconds": round(wall, 1),
        "kgrec_results": str(args.kgrec_results) if args.kgrec_results else None,
        "table_markdown": table,
        "rows": [{"name": r["name"], "test": r["test"], "train_seconds": r["train_seconds"], "epochs": r["epochs"],
                  "best_epoch": r["best_epoch"]} for r in rows],
        "peers": {m: {k: v for k, v in r.items() if k not in ("test_targets", "valid_targets", "per_user")} | {"settings": settings[m]}
                  for m, r in peers.items()},
        "target_mismatches": checks,
        "significance_vs_kgrec": significance,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    per_user_rows = ["peer,user_id,target,position,rank,num_candidates"]
    for m, r in peers.items():
        pu = r["per_user"]
        for u, t, p, k, n in zip(pu["user_id"], pu["target"], pu["position"], pu["rank"], pu["num_candidates"]):
            per_user_rows.append(f"{m},{u},{t},{p},{k},{n}")
    import gzip

    per_user_path = args.out.parent / ("peers_per_user.csv.gz" if args.out == DEFAULT_OUT else f"{args.out.stem}_per_user.csv.gz")
    with open(per_user_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:  # reproducible bytes
        gz.write(("\n".join(per_user_rows) + "\n").encode())
    print(f"\nwrote {args.out} and {per_user_path}")
    bad = [m for m in models if checks[m]["test"]["total"]]
    return 1 if bad else 0


def stored_comparison(args: argparse.Namespace) -> int:
    """The kgrec run of ``args.kgrec_results`` beside the committed peers, with paired tests."""
    import pandas as pd

    if args.kgrec_results is None:
        raise SystemExit("--stored needs a kgrec results JSON (e.g. runs/demo/results.json)")
    stored = json.loads(DEFAULT_OUT.read_text())
    per_user = pd.read_csv(DEFAULT_OUT.parent / "peers_per_user.csv.gz", dtype={"user_id": str, "target": str})
    peers = {m: {"per_user": {c: frame[c].tolist() for c in ("user_id", "target", "position", "rank", "num_candidates")}}
             for m, frame in per_user.groupby("peer", sort=False)}
    rows = kgrec_rows(args.kgrec_results) + [r for r in stored["rows"] if r["name"].startswith("RecBole ")]
    table = format_table(rows)
    print("test split, full ranking over all products, each user's train+valid products excluded")
    print(table)
    significance = paired_vs_kgrec(args.kgrec_results.parent / "per_user.parquet", peers)
    for r in significance:
        if r["metric"] == "ndcg@10":
            print(f"{r['reference']} vs {r['peer']} ndcg@10 on {r['users']} users: diff {r['diff']:+.4f} "
                  f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], p_bootstrap {r['p_bootstrap']:.4f}, Holm {r['p_holm']:.4f}")
    out = args.out if args.out != DEFAULT_OUT else DEFAULT_OUT.parent / "peers_vs_run.json"
    out.write_text(json.dumps({"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
                               "kgrec_results": str(args.kgrec_results), "peers_from": stored["command"],
                               "table_markdown": table, "rows": rows, "significance_vs_kgrec": significance}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
