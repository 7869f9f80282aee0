"""Result rows of a comparison (recommendation and search), their JSON file and markdown tables."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class ModelResult:
    """One row of the comparison."""

    model: str
    valid: dict[str, float]
    test: dict[str, float]
    train_seconds: float
    epochs: int
    best_epoch: int
    parameters: int
    config: dict


@dataclass
class SearchResult:
    """One row of the comparison: test metrics per protocol, cost."""

    model: str
    mode: str
    test: dict[str, dict[str, float]]
    valid_ndcg: float | None
    train_seconds: float
    trainable_parameters: int
    epochs: int
    extra: dict = field(default_factory=dict)


def write_results(results: list[ModelResult], path: str | Path, extra: dict | None = None) -> None:
    """Write the comparison as JSON (with environment facts)."""
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        **(extra or {}),
        "results": [asdict(r) for r in results],
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def results_markdown(results: list[ModelResult], split: str = "test", ks: tuple[int, ...] = (10, 20)) -> str:
    """The comparison as a markdown table (best value of each column in bold)."""
    columns = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")] + [f"mrr@{max(ks)}"]
    rows = [(r.model, [getattr(r, split)[c] for c in columns], r.train_seconds) for r in results]
    best = [max(v[i] for _, v, _ in rows) for i in range(len(columns))]
    lines = ["| model | " + " | ".join(columns) + " | train s |", "|---" * (len(columns) + 2) + "|"]
    for name, values, secs in rows:
        cells = [f"**{v:.4f}**" if v == b else f"{v:.4f}" for v, b in zip(values, best)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.0f} |")
    return "\n".join(lines)


def search_results_markdown(results: list[SearchResult], k: int = 10) -> str:
    """The comparison as a markdown table (best of each metric column in bold)."""
    columns = [("full", f"{m}@{k}") for m in ("ndcg", "mrr", "map")] + [("rerank", "ndcg@3"), ("rerank", f"ndcg@{k}")]
    values = [[r.test[p][m] for p, m in columns] for r in results]
    best = [max(v[i] for v in values) for i in range(len(columns))] if values else []
    head = ("| model | mode | " + " | ".join(f"{m} ({p})" for p, m in columns)
            + " | vs BM25 ndcg@10 (full) | trainable params | train s |")
    lines = [head, "|---" * (len(columns) + 5) + "|"]
    for r, v in zip(results, values):
        cells = [f"**{x:.4f}**" if x == b else f"{x:.4f}" for x, b in zip(v, best)]
        paired = r.extra.get("vs_bm25_ndcg@10")
        versus = f"{paired['relative']:+.1%} (p={paired['p_bootstrap']:.2g})" if paired else ""
        lines.append(f"| {r.model} | {r.mode} | " + " | ".join(cells)
                     + f" | {versus} | {r.trainable_parameters:,} | {r.train_seconds:.0f} |")
    return "\n".join(lines)
