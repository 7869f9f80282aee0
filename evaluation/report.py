"""The evaluation report: the side-by-side benchmark with confidence intervals, significance
against the fused model, curves and breakdowns, written as ``report.md`` and ``report.html``.

Two steps, each usable alone, after a comparison (:func:`kgrec.workflow.evaluate.evaluate_store`)
has gathered a :class:`ReportRun` (the rows, the training histories and the per-example test results
of :func:`kgrec.evaluation.recommendation.evaluate_detailed`):

1. :func:`save_run` writes ``results.json`` (the payload of
   :func:`kgrec.evaluation.results.write_results`, plus histories, aggregates and split facts) and
   ``per_user.parquet`` (one row per model and test example: the target's position in the
   top 50 and its full rank, from which every metric@K is recomputed, see
   :func:`kgrec.evaluation.metrics.metrics_from_position`), so significance can be recomputed later;
2. :func:`write_report` reads those two files (or a bare ``results.json`` of ``kgrec demo``,
   which gives a table without intervals) and writes the report with its figures.
"""
from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kgrec.evaluation.metrics import metrics_from_position
from kgrec.evaluation.results import write_results
from kgrec.evaluation.significance import bootstrap_cis, compare_to_reference

#: Metrics of the main table (per-example means, with bootstrap CIs), in order.
TABLE_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@20", "auc")
#: Metrics tested against the reference model.
TEST_METRICS = ("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@20", "auc")
#: Depth of the stored top lists and of the metric@K curves.
CURVE_DEPTH = 50
#: Buckets: visible history length, and target popularity (visible interactions of the target).
HISTORY_EDGES = (1, 5, 7, 10, 20)
POPULARITY_EDGES = (0, 1, 5, 10, 20, 50)
#: A target with fewer visible interactions than this is "cold" (5 = the data's k-core).
COLD_THRESHOLD = 5


@dataclass
class ReportRun:
    """Everything one benchmark run leaves for the report."""

    results: list  # list[kgrec.evaluation.results.ModelResult]
    histories: dict  # model -> kgrec.fusion.train.TrainHistory
    evals: dict  # model -> kgrec.evaluation.recommendation.DetailedEvalResult (test)
    sampled: dict = field(default_factory=dict)  # model -> EvalResult of the sampled protocol
    snapshot_facts: dict = field(default_factory=dict)


def per_user_frame(run: ReportRun, snapshot) -> pd.DataFrame:
    """One row per (model, test example): ids, position in the top 50 (0 = absent), full rank,
    candidates, history length, target popularity, repeat flag, auc, arp@k, top-20 list."""
    frames = []
    users_ext = np.asarray(snapshot.id_maps["user"], dtype=object)
    products_ext = np.asarray(snapshot.id_maps["product"], dtype=object)
    for name, ev in run.evals.items():
        users, targets = ev.users.numpy(), ev.targets.numpy()
        frame = pd.DataFrame({
            "model": name,
            "protocol": "full",
            "split": "test",
            "user": users,
            "user_id": users_ext[users],
            "target": targets,
            "target_id": products_ext[targets],
            "position": ev.position.numpy().astype(np.int16),
            "rank": ev.rank.numpy().astype(np.float64),
            "num_candidates": ev.num_candidates.numpy().astype(np.int32),
            "history_length": ev.history_length.numpy().astype(np.int32),
            "target_popularity": ev.target_popularity.numpy().astype(np.int32),
            "target_seen": ev.target_seen.numpy().astype(bool),
            "auc": ev.per_user["auc"].numpy(),
        })
        for key in ev.per_user:
            if key.startswith("arp@"):
                frame[key] = ev.per_user[key].numpy()
        frame["top20"] = list(ev.topk[:, :20].numpy().astype(np.int32))
        frames.append(frame)
    for name, ev in run.sampled.items():
        hits = ev.topk == ev.targets.unsqueeze(1)
        position = hits.float().argmax(1) + 1  # the target is always among the candidates
        frames.append(pd.DataFrame({
            "model": name, "protocol": f"sampled-{ev.topk.shape[1] - 1}", "split": "test",
            "user": ev.users.numpy(), "user_id": users_ext[ev.users.numpy()],
            "target": ev.targets.numpy(), "target_id": products_ext[ev.targets.numpy()],
            "position": position.numpy().astype(np.int16), "auc": ev.per_user["auc"].numpy(),
        }))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def save_run(run: ReportRun, snapshot, out: str | Path, config=None, extra: dict | None = None) -> dict[str, Path]:
    """Write ``results.json`` and ``per_user.parquet`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload_extra = dict(extra or {})
    payload_extra["histories"] = {
        m: {"losses": h.losses, "valid_ndcg": h.valid_ndcg, "best_epoch": h.best_epoch, "seconds": h.seconds}
        for m, h in run.histories.items()
    }
    payload_extra["facts"] = run.snapshot_facts
    if config is not None:
        payload_extra["benchmark_config"] = _jsonable(asdict(config))
    if run.sampled:
        payload_extra["sampled"] = {m: ev.metrics for m, ev in run.sampled.items()}
    write_results(run.results, out / "results.json", payload_extra)
    per_user_frame(run, snapshot).to_parquet(out / "per_user.parquet", index=False)
    return {"results": out / "results.json", "per_user": out / "per_user.parquet"}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------- a small document model


class Document:
    """Blocks rendered to Markdown and to one self-contained HTML page (figures inlined)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], note: str | None = None) -> None:
        self.blocks.append(("table", header, rows, note))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", path, caption))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def to_markdown(self, base: Path) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                lines += [block[1], ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                _, header, rows, note = block
                lines.append("| " + " | ".join(header) + " |")
                lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
                lines += ["| " + " | ".join(row) + " |" for row in rows]
                lines += ([""] + [note] if note else []) + [""]
            elif kind == "img":
                lines += [f"![{block[2]}]({block[1].relative_to(base).as_posix()})", "", f"*{block[2]}*", ""]
            elif kind == "code":
                lines += ["```", block[1].rstrip(), "```", ""]
        return "\n".join(lines)

    @staticmethod
    def _inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", text)

    def to_html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px}"
            "td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
            "code,pre{background:#f6f6f6;font-size:0.9em}pre{padding:0.8em;overflow-x:auto}"
            "figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"
            ".note{color:#555;font-size:0.9em}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                parts.append(f"<h{block[1]}>{self._inline(block[2])}</h{block[1]}>")
            elif kind == "p":
                parts.append(f"<p>{self._inline(block[1])}</p>")
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{self._inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                _, header, rows, note = block
                head = "".join(f"<th>{self._inline(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(f"<td>{self._inline(c)}</td>" for c in row) + "</tr>" for row in rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
                if note:
                    parts.append(f'<p class="note">{self._inline(note)}</p>')
            elif kind == "img":
                data = base64.b64encode(Path(block[1]).read_bytes()).decode()
                parts.append(f'<figure><img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{self._inline(block[2])}</figcaption></figure>")
            elif kind == "code":
                parts.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        parts.append("</body></html>")
        return "\n".join(parts)


# --------------------------------------------------------------------------- computing the report


def load_run(path: str | Path) -> tuple[dict, pd.DataFrame | None]:
    """``(results payload, per-user frame or None)`` from a folder (or a results JSON beside which
    ``per_user.parquet`` may lie)."""
    path = Path(path)
    results = path / "results.json" if path.is_dir() else path
    payload = json.loads(results.read_text())
    parquet = results.parent / "per_user.parquet"
    frame = pd.read_parquet(parquet) if parquet.exists() else None
    return payload, frame


def per_user_metrics_from_frame(frame: pd.DataFrame, ks: tuple[int, ...]) -> dict[str, dict[str, np.ndarray]]:
    """``{model: {metric: [N]}}`` for the full-ranking rows of ``frame``, examples in one order."""
    full = frame[frame["protocol"] == "full"]
    order = None
    out = {}
    for model, part in full.groupby("model", sort=False):
        part = part.sort_values(["user", "target"], kind="stable")
        key = part[["user", "target"]].to_numpy()
        if order is None:
            order = key
        elif not np.array_equal(order, key):
            raise ValueError(f"model {model!r} was evaluated on other examples than the first model")
        metrics = {k: v.numpy().astype(np.float64) for k, v in
                   metrics_from_position(torch.as_tensor(part["position"].to_numpy().astype(np.int64)), ks).items()}
        metrics["auc"] = part["auc"].to_numpy(dtype=np.float64)
        for col in part.columns:
            if col.startswith("arp@"):
                metrics[col] = part[col].to_numpy(dtype=np.float64)
        out[model] = metrics
    return out


def _bucket_labels(edges: tuple[int, ...]) -> list[str]:
    labels = []
    for lo, hi in zip(edges, list(edges[1:]) + [None]):
        if hi is None:
            labels.append(f"{lo}+")
        elif hi - lo == 1:
            labels.append(f"{lo}")
        else:
            labels.append(f"{lo}-{hi - 1}")
    return labels


def bucketize(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Bucket index of each value: ``edges[i] <= v < edges[i+1]`` -> i (last bucket open); -1 below."""
    return np.searchsorted(np.asarray(edges), values, side="right") - 1


def breakdown(frame: pd.DataFrame, column: str, edges: tuple[int, ...], metric: str = "ndcg@10",
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean ``metric`` (with a bootstrap CI) per model and bucket of ``column``."""
    k = int(metric.split("@")[1])
    full = frame[frame["protocol"] == "full"]
    labels = _bucket_labels(edges)
    rows = []
    for model, part in full.groupby("model", sort=False):
        values = metrics_from_position(torch.as_tensor(part["position"].to_numpy().astype(np.int64)), (k,))[metric].numpy()
        buckets = bucketize(part[column].to_numpy(), edges)
        for b, label in enumerate(labels):
            sel = values[buckets == b]
            if len(sel) == 0:
                continue
            ci = bootstrap_cis({metric: sel}, n_boot=n_boot, seed=seed)[metric]
            rows.append({"model": model, "bucket": label, "n": int(len(sel)), "mean": ci.mean, "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_curves(per_model_positions: dict[str, np.ndarray], path: Path, depth: int) -> Path:
    plt = _pyplot()
    ks = tuple(range(1, depth + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, pos in per_model_positions.items():
        m = metrics_from_position(torch.as_tensor(pos.astype(np.int64)), ks)
        axes[0].plot(ks, [float(m[f"ndcg@{k}"].mean()) for k in ks], label=model)
        axes[1].plot(ks, [float(m[f"recall@{k}"].mean()) for k in ks], label=model)
    for ax, name in zip(axes, ("NDCG@K", "Recall@K (= HR@K, one target)")):
        ax.set_xlabel("K")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(histories: dict[str, dict], path: Path) -> Path | None:
    trained = {m: h for m, h in histories.items() if h.get("losses")}
    if not trained:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, h in trained.items():
        epochs = np.arange(1, len(h["losses"]) + 1)
        axes[0].plot(epochs, h["losses"], marker="o", ms=3, label=model)
        valid = h.get("valid_ndcg") or []
        line = axes[1].plot(np.arange(len(valid)), valid, marker="o", ms=3, label=model)[0]  # 0 = untrained
        best = h.get("best_epoch", 0)
        if 0 <= best < len(valid):
            axes[1].plot([best], [valid[best]], marker="*", ms=12, color=line.get_color())
    axes[0].set_title("training loss (each model its own loss)")
    axes[0].set_yscale("log")
    axes[1].set_title("valid NDCG@10 (epoch 0: untrained; star: the kept weights)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_breakdown(table: pd.DataFrame, path: Path, title: str, xlabel: str) -> Path | None:
    if table.empty:
        return None
    plt = _pyplot()
    models = list(dict.fromkeys(table["model"]))
    buckets = list(dict.fromkeys(table["bucket"]))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, model in enumerate(models):
        part = table[table["model"] == model].set_index("bucket").reindex(buckets)
        x = np.arange(len(buckets)) + (i - (len(models) - 1) / 2) * width
        err = np.vstack([part["mean"] - part["low"], part["high"] - part["mean"]])
        ax.bar(x, part["mean"], width, yerr=err, capsize=2, label=model)
    counts = table.drop_duplicates("bucket").set_index("bucket")["n"].reindex(buckets)
    ax.set_xticks(np.arange(len(buckets)), [f"{b}\n(n={n})" for b, n in counts.items()])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("NDCG@10")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(models), 4))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the report itself


def _fmt(x: float, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def write_report(
    source: str | Path,
    out: str | Path,
    reference: str = "fused",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out`` from a run folder
    (``results.json`` + ``per_user.parquet``) or a bare results JSON. Returns the written paths."""
    payload, frame = load_run(source)
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    results = payload.get("results", [])
    doc = Document("kgrec evaluation report")
    facts = payload.get("facts", {})
    split = facts.get("split", {})
    test_split = split.get("test", {})

    doc.paragraph(
        f"Created {payload.get('created', '?')} by `{payload.get('command', '?')}`; torch {payload.get('torch', '?')}, "
        f"Python {payload.get('python', '?')}, {payload.get('threads', '?')} threads, device {payload.get('device', '?')}. "
        f"Data fingerprint `{payload.get('data_fingerprint', facts.get('data_fingerprint', '?'))}`"
        + (f", text model `{payload['text_model']}`." if payload.get("text_model") else ".")
    )
    doc.heading("Protocol")
    protocol = payload.get("protocol", {"name": "leave-one-out"})
    items = [] if not results else [
        f"Recommendation split: **{protocol.get('name', 'leave-one-out')}**"
        + (f" ({protocol['detail']})" if protocol.get("detail") else "")
        + (f"; interactions per split {split.get('interactions')}" if split.get("interactions") else ""),
        "Ranking: **full ranking** — every product is scored; the products of the user's visible history (all of it) "
        "are excluded; the model's graph is the one visible before the split, so no test interaction is in it.",
    ]
    if test_split:
        items.append(
            f"Test: {test_split.get('examples')} examples of {test_split.get('users')} users over "
            f"{facts.get('num_products', '?')} products. **{test_split.get('repeat_targets')} test targets repeat a product "
            "already in the user's history**: the ranking excludes seen products, so these can never be hit (they count "
            "as misses and get AUC 0 for every model)."
        )
    leak = facts.get("leakage")
    if leak:
        items.append(f"Leakage check (held-out pairs found in message passing or training examples): {sum(leak.values())} "
                     f"over {len(leak)} checks.")
    if results:
        items.append("Ties: top-K lists use `torch.topk` order among equal scores; AUC counts a tie as 1/2 (mid-rank).")
    search = protocol.get("search") if payload.get("search") else None
    if search:
        queries = facts.get("search_queries", {})
        items.append(
            f"Search split: **query-disjoint** — every judgement of a query in one split (shares {search.get('fractions')}; "
            f"queries per split {queries}); only train queries become graph nodes. Protocols: `full` ranks all "
            f"{facts.get('num_products', '?')} products (unjudged ones gain 0), `rerank` orders each query's judged products. "
            f"Graded gains `2^grade - 1`; a judgement with grade >= {search.get('min_grade', 1)} counts as relevant for MRR/MAP/recall.")
    for task, reason in facts.get("skipped", {}).items():
        items.append(f"Not evaluated: {'recommendation' if task == 'rec' else task} — {reason}.")
    doc.bullets(items)

    have_users = False
    if results:
        have_users = _recommendation_sections(doc, payload, frame, out, figures, reference, n_boot, seed, level)
    if payload.get("search"):
        _search_sections(doc, payload, Path(source), n_boot, seed, level)
    # ---- config
    doc.heading("Configuration")
    config = {k: payload[k] for k in ("command", "benchmark_config", "protocol", "data", "text_model", "data_fingerprint",
                                       "device") if k in payload}
    config["models"] = {r["model"]: {"parameters": r.get("parameters"), **r.get("config", {})} for r in results}
    config["search_models"] = {r["model"]: {"parameters": r.get("trainable_parameters"), **{k: v for k, v in r.get("extra", {}).items()
                                                                                           if k in ("tasks", "lexical_weight")}}
                               for r in payload.get("search", [])}
    doc.code(json.dumps(config, indent=2, default=str))
    doc.paragraph("Per-example results: `per_user.parquet` (one row per model and test example: `position` of the target in the "
                  "top 50, 0 = absent; full `rank`; history length; target popularity) — `kgrec evaluate --from-run DIR` "
                  "recomputes this report from it." if have_users else
                  "Run `kgrec evaluate` to get per-example results, intervals and tests.")

    md = out / "report.md"
    md.write_text(doc.to_markdown(out))
    page = out / "report.html"
    page.write_text(doc.to_html())
    written = {"markdown": md, "html": page}
    written.update({p.stem: p for p in figures.glob("*.png")})
    return written


def _recommendation_sections(doc: Document, payload: dict, frame: pd.DataFrame | None, out: Path, figures: Path,
                             reference: str, n_boot: int, seed: int, level: float) -> bool:
    """The recommendation part of the report; returns whether per-example results were there."""
    results = payload["results"]
    models = [r["model"] for r in results]
    have_users = frame is not None and not frame.empty and set(models) <= set(frame["model"])
    per_user = per_user_metrics_from_frame(frame, (10, 20)) if have_users else {}

    # ---- main table
    doc.heading("Test results")
    header = ["model"]
    cols = [m for m in TABLE_METRICS if all(m in r["test"] for r in results)]
    extra_cols = [c for c in ("gauc", "coverage@10", "arp@10") if all(c in r["test"] for r in results)]
    header += cols + extra_cols + ["valid ndcg@10", "epochs (best)", "train s"]
    rows, intervals = [], {}
    for r in results:
        if per_user:
            intervals[r["model"]] = bootstrap_cis({m: per_user[r["model"]][m] for m in cols}, level, n_boot, seed)
        cells = [r["model"]]
        for m in cols:
            if per_user:
                ci = intervals[r["model"]][m]
                cells.append(f"{ci.mean:.4f} [{ci.low:.4f}, {ci.high:.4f}]")
            else:
                cells.append(_fmt(r["test"][m]))
        cells += [_fmt(r["test"][c], 4 if not c.startswith("arp") else 1) for c in extra_cols]
        cells += [_fmt(r["valid"].get("ndcg@10")), f"{r.get('epochs')} ({r.get('best_epoch')})", f"{r.get('train_seconds', 0):.0f}"]
        rows.append(cells)
    note = (f"Means over test examples with {int(level * 100)}% percentile-bootstrap intervals ({n_boot} resamples, seed {seed}). "
            if per_user else "No per-user results beside this results JSON: means only, no intervals or tests. ")
    note += ("`gauc`: mean over users of their mean AUC; `coverage@10`: share of the catalogue in any top-10; "
             "`arp@10`: average visible-interaction count of the recommended top-10 (popularity bias).")
    doc.table(header, rows, note)

    # ---- significance
    tests = []
    if per_user and reference in per_user and len(per_user) > 1:
        tests = compare_to_reference(per_user, reference, tuple(m for m in TEST_METRICS if m in cols), n_boot, seed, level)
        doc.heading(f"Significance: {reference} against each model")
        trows = []
        for t in tests:
            trows.append([t["baseline"], t["metric"], _fmt(t["mean_a"]), _fmt(t["mean_b"]),
                          f"{t['diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]",
                          "–" if not np.isfinite(t["relative"]) else f"{100 * t['relative']:+.1f}%",
                          _p(t["p_bootstrap"]), _p(t["p_holm"]), _p(t["p_ttest"]), _p(t["p_wilcoxon"]),
                          "**yes**" if t["significant"] else "no"])
        doc.table(["baseline", "metric", reference, "baseline mean", "difference [CI]", "relative", "p (paired bootstrap)",
                   "p (Holm)", "p (t-test)", "p (Wilcoxon)", "significant"], trows,
                  f"Paired over the same {len(next(iter(per_user.values()))['auc'])} test examples. Significant: Holm-adjusted "
                  "paired-bootstrap p < 0.05 over the baselines of each metric.")
        pd.DataFrame(tests).to_csv(out / "significance.csv", index=False)
    elif per_user:
        doc.paragraph(f"No significance tests: the reference model `{reference}` is not among {models}.")

    # ---- sampled protocol, when it was named
    if payload.get("sampled"):
        doc.heading("Sampled protocol (named explicitly; not comparable to full ranking)")
        neg = None
        if frame is not None:
            sampled = frame[frame["protocol"].str.startswith("sampled")]
            neg = sampled["protocol"].iloc[0] if len(sampled) else None
        sm = payload["sampled"]
        keys = [k for k in ("hit@1", "hit@5", "ndcg@5", "hit@10", "ndcg@10", "auc") if k in next(iter(sm.values()))]
        doc.table(["model"] + keys, [[m] + [_fmt(sm[m][k]) for k in keys] for m in sm],
                  f"{neg or 'sampled'}: the target against uniformly sampled products the user has not interacted with "
                  "(seeded, the same for every model); ties count against the target.")

    # ---- figures
    if have_users:
        assert frame is not None  # have_users implies a frame
        full = frame[frame["protocol"] == "full"]
        depth = int(min(CURVE_DEPTH, full["num_candidates"].min()))
        positions = {m: full.loc[full["model"] == m, "position"].to_numpy() for m in models}
        doc.heading(f"Metric@K, K = 1..{depth}")
        doc.figure(plot_metric_curves(positions, figures / "metric_at_k.png", depth), "NDCG@K and Recall@K on the test split")
    histories = payload.get("histories", {})
    if histories:
        path = plot_training(histories, figures / "training.png")
        if path:
            doc.heading("Training curves")
            doc.figure(path, "Training loss and validation NDCG@10 per epoch; the starred epoch's weights are the ones tested")
    if have_users:
        assert frame is not None  # have_users implies a frame
        for column, edges, title, xlabel, name in (
            ("history_length", HISTORY_EDGES, "NDCG@10 by the user's history length", "products in the visible history", "by_history"),
            ("target_popularity", POPULARITY_EDGES, "NDCG@10 by the target product's popularity (cold to warm)",
             "visible interactions of the target product", "by_popularity"),
        ):
            table = breakdown(frame, column, edges, n_boot=max(200, n_boot // 4), seed=seed)
            path = plot_breakdown(table, figures / f"{name}.png", title, xlabel)
            if path is None:
                continue
            doc.heading(title)
            doc.figure(path, f"{title}, with {int(level * 100)}% bootstrap intervals; n = test examples per bucket")
            buckets = list(dict.fromkeys(table["bucket"]))
            wide = table.pivot(index="model", columns="bucket", values="mean").reindex(index=models, columns=buckets)
            counts = table.drop_duplicates("bucket").set_index("bucket")["n"]
            doc.table(["model"] + [f"{b} (n={counts[b]})" for b in buckets],
                      [[m] + [_fmt(wide.loc[m, b]) for b in buckets] for m in models])
            table.to_csv(out / f"{name}.csv", index=False)
        full = frame[frame["protocol"] == "full"]
        cold = full["target_popularity"] < COLD_THRESHOLD
        crow = []
        for m in models:
            part = full[full["model"] == m]
            vals = metrics_from_position(torch.as_tensor(part["position"].to_numpy().astype(np.int64)), (10,))["ndcg@10"].numpy()
            c = (part["target_popularity"] < COLD_THRESHOLD).to_numpy()
            crow.append([m, _fmt(vals[c].mean() if c.any() else float("nan")), _fmt(vals[~c].mean() if (~c).any() else float("nan"))])
        n_cold = int(cold[full["model"] == models[0]].sum())
        doc.table(["model", f"cold targets (< {COLD_THRESHOLD} visible interactions, n={n_cold})",
                   f"warm targets (n={int((full['model'] == models[0]).sum()) - n_cold})"], crow, "NDCG@10.")

    return have_users


#: Search table columns: (protocol, metric).
SEARCH_COLUMNS = (("full", "ndcg@10"), ("full", "mrr@10"), ("full", "map@10"), ("rerank", "ndcg@3"), ("rerank", "ndcg@10"))


def _search_sections(doc: Document, payload: dict, source: Path, n_boot: int, seed: int, level: float) -> None:
    """The search part of the report: the table (bootstrap intervals when the per-query results are
    there) and the paired test of each model against BM25."""
    rows = payload["search"]
    folder = source if source.is_dir() else source.parent
    per_query = folder / "search_per_query.parquet"
    frame = pd.read_parquet(per_query) if per_query.exists() else None
    columns = [(p, m) for p, m in SEARCH_COLUMNS if all(m in r["test"].get(p, {}) for r in rows)]
    table = []
    for r in rows:
        cells = [r["model"], r.get("mode", "-")]
        for protocol, metric in columns:
            value = r["test"][protocol][metric]
            part = None if frame is None else frame[(frame["model"] == r["model"]) & (frame["protocol"] == protocol)]
            if part is not None and len(part) and metric in part.columns:
                ci = bootstrap_cis({metric: part[metric].to_numpy()}, level, n_boot, seed)[metric]
                cells.append(f"{value:.4f} [{ci.low:.4f}, {ci.high:.4f}]")
            else:
                cells.append(_fmt(value))
        versus = r.get("extra", {}).get("vs_bm25_ndcg@10")
        cells.append(f"{100 * versus['relative']:+.1f}% (p={_p(versus['p_bootstrap'])})" if versus else "")
        cells.append(_fmt(r.get("valid_ndcg")) if r.get("valid_ndcg") is not None else "")
        cells += [f"{r.get('trainable_parameters', 0):,}", f"{r.get('train_seconds', 0):.0f}"]
        table.append(cells)
    n = int(len(frame[(frame["model"] == rows[0]["model"]) & (frame["protocol"] == "full")])) if frame is not None else None
    doc.heading("Search test results")
    doc.table(["model", "BERT"] + [f"{m} ({p})" for p, m in columns] + ["vs BM25 ndcg@10 (full)", "valid ndcg@10",
                                                                       "trainable params", "train s"], table,
              (f"Means over {n} test queries with {int(level * 100)}% percentile-bootstrap intervals ({n_boot} resamples). " if n
               else "") + "*vs BM25*: relative NDCG@10 difference on the same test queries and the two-sided paired-bootstrap "
              "p-value (t-test and Wilcoxon p-values in results.json). `+ bm25`: the model's and BM25's per-query "
              "standardised scores mixed with the weight chosen on the validation queries.")
