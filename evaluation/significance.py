"""Confidence intervals and paired significance tests over per-user metrics.

Everything works on per-example metric values (one number per evaluated user/target, as in
:attr:`kgrec.evaluation.recommendation.EvalResult.per_user`), so the tests are *paired*: two models are
compared on the same users.

* :func:`bootstrap_means` / :func:`bootstrap_ci`: the percentile bootstrap of the mean,
  vectorised (resampling counts times values, one matrix product per chunk) and seeded;
  the same seed draws the same resamples for every model (common random numbers).
* :func:`paired_test`: the difference of means with its bootstrap CI and three p-values —
  a paired bootstrap test (resampled differences recentred on 0), the paired t-test and the
  Wilcoxon signed-rank test (scipy).
* :func:`compare_to_reference`: the reference model (``fused``) against every other model,
  per metric, with Holm's correction over the baselines of each metric.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of one bootstrap resample each (rows sum to ``n``)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)


def bootstrap_means(values, n_boot: int = 2000, seed: int = 0, chunk: int = 250) -> np.ndarray:
    """Bootstrap distribution of the mean.

    Args:
        values: ``[N]`` or ``[N, M]`` (M columns resampled together, i.e. paired).
        n_boot: resamples. seed: the generator's seed. chunk: resamples per matrix product.

    Returns:
        ``[n_boot]`` or ``[n_boot, M]`` means of the resamples.
    """
    x = _as_array(values)
    one = x.ndim == 1
    x = x[:, None] if one else x
    n = x.shape[0]
    if n == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, x.shape[1]))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        out[start : start + b] = resample_counts(n, b, rng) @ x / n
    return out[:, 0] if one else out


@dataclass
class Interval:
    """A mean with its two-sided bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    level: float = 0.95
    n: int = 0

    def format(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean of ``values`` (``[N]``)."""
    x = _as_array(values)
    means = bootstrap_means(x, n_boot, seed)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(x.mean()), float(low), float(high), level, int(len(x)))


def bootstrap_cis(per_metric: dict, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """:func:`bootstrap_ci` for several metrics of one model at once (same resamples for all)."""
    names = list(per_metric)
    if not names:
        return {}
    x = np.stack([_as_array(per_metric[m]) for m in names], axis=1)
    means = bootstrap_means(x, n_boot, seed)
    alpha = (1.0 - level) / 2
    lows, highs = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return {m: Interval(float(x[:, i].mean()), float(lows[i]), float(highs[i]), level, int(len(x))) for i, m in enumerate(names)}


@dataclass
class PairedResult:
    """Model ``a`` against model ``b`` on one metric, over the same ``n`` examples."""

    mean_a: float
    mean_b: float
    diff: float  # mean_a - mean_b
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_ttest: float
    p_wilcoxon: float
    n: int
    level: float = 0.95

    @property
    def relative(self) -> float:
        """``diff / mean_b`` (inf when ``mean_b`` is 0)."""
        return self.diff / self.mean_b if self.mean_b else float("inf")

    def as_dict(self) -> dict:
        return {**asdict(self), "relative": self.relative}


def paired_test(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> PairedResult:
    """Paired comparison of per-example values ``a`` and ``b`` (same examples, same order).

    * ``ci_low``/``ci_high``: percentile bootstrap CI of ``mean(a - b)``;
    * ``p_bootstrap``: two-sided paired bootstrap test: the share of resampled mean differences,
      recentred on 0 (the null), at least as far from 0 as the observed one, ``(1 + #) / (1 + n_boot)``
      (Efron & Tibshirani, 1993, ch. 16);
    * ``p_ttest``: :func:`scipy.stats.ttest_rel`;
    * ``p_wilcoxon``: :func:`scipy.stats.wilcoxon` (zero differences dropped, ``zero_method="wilcox"``;
      normal approximation, ``method="approx"``, sound for the thousands of users of a test split).

    When every difference is 0, all p-values are 1.
    """
    from scipy import stats

    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values must be two 1-d arrays of one length, got {x.shape} and {y.shape}")
    d = x - y
    observed = float(d.mean())
    boots = bootstrap_means(d, n_boot, seed)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    if np.all(d == 0):
        p_boot = p_t = p_w = 1.0
    else:
        extreme = np.abs(boots - observed) >= abs(observed) - 1e-15
        p_boot = float((1 + extreme.sum()) / (1 + n_boot))
        p_t = float(stats.ttest_rel(x, y).pvalue) if np.std(d) > 0 else (0.0 if observed else 1.0)
        # normal approximation: exact / permutation p-values cost seconds and n is in the thousands
        p_w = float(stats.wilcoxon(x, y, zero_method="wilcox", method="approx").pvalue)
    return PairedResult(float(x.mean()), float(y.mean()), observed, float(low), float(high), p_boot, p_t, p_w, int(len(d)), level)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = _as_array(pvalues)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def compare_to_reference(
    per_user: dict[str, dict],
    reference: str = "fused",
    metrics: tuple[str, ...] = ("ndcg@10", "recall@10"),
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> list[dict]:
    """``reference`` against every other model of ``per_user`` (``{model: {metric: [N]}}``).

    Returns one row per (baseline, metric): the :class:`PairedResult` fields, ``relative``,
    ``p_holm`` (Holm over the baselines of that metric, applied to ``p_bootstrap``) and
    ``significant`` (``p_holm < alpha``).
    """
    if reference not in per_user:
        raise ValueError(f"reference model {reference!r} not among {sorted(per_user)}")
    others = [m for m in per_user if m != reference]
    rows = []
    for metric in metrics:
        block = []
        for other in others:
            r = paired_test(per_user[reference][metric], per_user[other][metric], n_boot, seed, level)
            block.append({"reference": reference, "baseline": other, "metric": metric, **r.as_dict()})
        adjusted = holm([row["p_bootstrap"] for row in block])
        for row, p in zip(block, adjusted):
            row["p_holm"] = float(p)
            row["significant"] = bool(p < alpha)
        rows.extend(block)
    return rows
