"""Bootstrap CIs and paired tests: against direct (loop) versions, normal theory and scipy."""
import numpy as np
import pytest
import torch
from scipy import stats

from kgrec.evaluation.significance import (
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_means,
    compare_to_reference,
    holm,
    paired_test,
    resample_counts,
)


def test_vectorised_bootstrap_equals_the_loop():
    x = np.random.default_rng(0).normal(size=37)
    rng = np.random.default_rng(11)
    counts = resample_counts(37, 50, rng)
    assert (counts.sum(1) == 37).all()
    loop_rng = np.random.default_rng(11)
    idx = loop_rng.integers(0, 37, size=(50, 37))
    np.testing.assert_allclose(counts @ x / 37, x[idx].mean(1), rtol=1e-12)
    # chunking does not change the result for a given seed and chunk size; seeds reproduce
    np.testing.assert_array_equal(bootstrap_means(x, 300, seed=3), bootstrap_means(x, 300, seed=3))
    assert not np.array_equal(bootstrap_means(x, 300, seed=3), bootstrap_means(x, 300, seed=4))


def test_ci_matches_normal_theory_and_accepts_tensors():
    x = np.random.default_rng(1).normal(loc=0.3, scale=1.0, size=2000)
    ci = bootstrap_ci(torch.as_tensor(x), n_boot=2000, seed=0)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert ci.mean == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.2 * half)
    assert ci.n == 2000 and "[" in ci.format()


def test_ci_coverage_on_binary_metric():
    """A hit-rate-like metric: the 95% CI covers the true rate in about 95% of samples."""
    rng = np.random.default_rng(2)
    covered = 0
    for trial in range(200):
        x = (rng.random(400) < 0.1).astype(float)
        ci = bootstrap_ci(x, n_boot=400, seed=trial)
        covered += ci.low <= 0.1 <= ci.high
    assert 0.88 <= covered / 200 <= 0.99


def test_several_metrics_at_once_match_one_by_one():
    rng = np.random.default_rng(3)
    per = {"ndcg@10": rng.random(300), "recall@10": (rng.random(300) < 0.2).astype(float)}
    together = bootstrap_cis(per, n_boot=500, seed=5)
    for name, values in per.items():
        alone = bootstrap_ci(values, n_boot=500, seed=5)
        assert together[name].low == pytest.approx(alone.low) and together[name].high == pytest.approx(alone.high)


def test_paired_test_against_scipy_and_sanity():
    rng = np.random.default_rng(4)
    base = rng.normal(size=500)
    b = base + rng.normal(scale=0.5, size=500)
    a = b + 0.15 + rng.normal(scale=0.5, size=500)  # a clearly better
    r = paired_test(a, b, n_boot=2000, seed=0)
    assert r.diff == pytest.approx((a - b).mean())
    assert r.ci_low < r.diff < r.ci_high and r.ci_low > 0
    assert r.p_ttest == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b, method="approx").pvalue)
    assert r.p_bootstrap < 0.01 and r.p_ttest < 0.01
    # no effect: large p-values, and the bootstrap p is close to the t-test's
    c = b + rng.normal(scale=0.5, size=500)
    null = paired_test(c, b, n_boot=4000, seed=1)
    assert null.p_bootstrap == pytest.approx(null.p_ttest, abs=0.05)
    same = paired_test(b, b)
    assert (same.p_bootstrap, same.p_ttest, same.p_wilcoxon, same.diff) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        paired_test(a, b[:10])


def test_holm():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    assert holm([]).size == 0


def test_compare_to_reference_rows():
    rng = np.random.default_rng(6)
    hits = lambda p: (rng.random(800) < p).astype(float)
    per_user = {
        "popularity": {"ndcg@10": hits(0.02), "recall@10": hits(0.03)},
        "mf-bpr": {"ndcg@10": hits(0.2), "recall@10": hits(0.2)},
        "fused": {"ndcg@10": hits(0.2), "recall@10": hits(0.3)},
    }
    rows = compare_to_reference(per_user, "fused", ("ndcg@10", "recall@10"), n_boot=500)
    assert [(r["baseline"], r["metric"]) for r in rows] == [
        ("popularity", "ndcg@10"), ("mf-bpr", "ndcg@10"), ("popularity", "recall@10"), ("mf-bpr", "recall@10")]
    by = {(r["baseline"], r["metric"]): r for r in rows}
    assert by[("popularity", "ndcg@10")]["significant"] and by[("popularity", "recall@10")]["significant"]
    assert not by[("mf-bpr", "ndcg@10")]["significant"]
    assert all(r["p_holm"] >= r["p_bootstrap"] for r in rows)
    with pytest.raises(ValueError):
        compare_to_reference(per_user, "nope")
