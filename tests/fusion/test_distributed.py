"""The distributed path: ``torchrun`` with 2 CPU processes (gloo) and DistributedDataParallel."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kgrec.fusion.distributed import init_distributed, launched_by_torchrun, rank_and_world

HERE = Path(__file__).resolve().parent


def _torchrun(args, tmp_path, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=timeout)


def test_single_process_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not launched_by_torchrun()
    assert init_distributed() == (0, 1) and rank_and_world() == (0, 1)


@pytest.mark.slow
def test_two_process_gloo_training_keeps_replicas_in_sync(tmp_path):
    result = _torchrun([str(HERE / "ddp_worker.py"), str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    for r in reports:
        assert r["param_change"] > 0  # it trained
        assert r["max_param_diff_across_ranks"] == 0.0  # DDP averaged the gradients: identical replicas
        assert len(r["losses"]) == 3 and all(v == v for v in r["losses"])
    # every rank evaluates the same weights on the same split: the same early-stopping decisions
    assert reports[0]["valid"] == reports[1]["valid"]


@pytest.mark.slow
def test_kgrec_train_under_torchrun_writes_one_artifact(tiny_store, tiny_bert_dir, tmp_path):
    out = tmp_path / "artifact"
    result = _torchrun(["-m", "kgrec.cli", "train", "--store", str(tiny_store.root), "--out", str(out),
                        "--text-model", tiny_bert_dir, "--epochs", "2", "--batch-size", "8", "--device", "cpu",
                        "--cache", str(tmp_path / "cache"), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout[result.stdout.index("{"):])  # rank 0 alone prints
    assert payload["world_size"] == 2 and payload["epochs"] >= 1
    assert (out / "config.json").is_file()
    from kgrec.serving.artifact import load_artifact

    artifact = load_artifact(out)
    assert artifact.model.num_products == 24
