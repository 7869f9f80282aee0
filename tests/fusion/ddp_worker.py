"""Run by ``torchrun`` from test_distributed.py: trains the fused model on a tiny catalogue
with DistributedDataParallel (gloo, CPU) and writes what each rank saw to JSON."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import build_tiny_tables

from kgrec.evaluation.recommendation import ndcg_validator
from kgrec.fusion.distributed import init_distributed, shutdown
from kgrec.fusion.models import FusedConfig
from kgrec.fusion.registry import ModelInputs, build_model
from kgrec.fusion.train import TrainConfig, fit
from kgrec.ingest.load import load_tables
from kgrec.kg.embedded import EmbeddedStore
from kgrec.kg.export import export_snapshot


def main(out: Path) -> None:
    rank, world = init_distributed("gloo")
    store = EmbeddedStore(out / f"store-{rank}")
    load_tables(build_tiny_tables(), store, progress=False)
    snapshot = export_snapshot(store)
    text = torch.randn(snapshot.num_products, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = build_model("fused", ModelInputs.from_snapshot(snapshot, text), FusedConfig(graph_dim=8, max_history=5))
    before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    history = fit(model, snapshot, TrainConfig(epochs=3, batch_size=8, lr=1e-2, patience=5, max_history=5, device="cpu"), progress=False,
                  validators={"rec": ndcg_validator(snapshot, "valid", max_history=5)})
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    report = {
        "rank": rank, "world": world, "losses": history.losses, "valid": history.valid_ndcg,
        "max_param_diff_across_ranks": max(float((g - params).abs().max()) for g in gathered),
        "param_change": float((params - before).abs().max()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
