"""Power and the minimum detectable difference (stats/power.py), checked against simulation: the
t test on normal data, the problem-level coverage simulation of `intervals`, and the seed-level one
of `seed_level`; and the seed-level intervals against an untrained base and for one method's level."""
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from dlm_bench.stats import intervals, power
from dlm_bench.stats import seed_level as seeds


def _mc_band(rate, target, n):
    return abs(rate - target) <= 3 * math.sqrt(target * (1 - target) / n) + 0.02


def test_power_matches_simulated_t_tests():
    """Normal data, known sd: power_at against the rejection rate of scipy's one-sample t test."""
    rng = np.random.default_rng(0)
    n, delta, reps = 15, 0.6, 20_000
    x = rng.normal(delta, 1.0, size=(reps, n))
    rate = np.mean(scipy.stats.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05)
    assert power.power_at(delta, 1 / math.sqrt(n), n - 1) == pytest.approx(rate, abs=0.015)
    m = power.mde(1 / math.sqrt(n), n - 1)
    assert power.power_at(m, 1 / math.sqrt(n), n - 1) == pytest.approx(0.8, abs=1e-6)
    assert m > (1.96 + 0.84) / math.sqrt(n)          # few degrees of freedom: above the normal 2.8 SE


def _paired_at(shift, studies, problems, k, seed):
    d, true = intervals.simulate_paired(np.random.default_rng(seed), studies, problems, 16, k, shift)
    se = d.std(axis=1, ddof=1) / math.sqrt(problems)
    mdes = se * power.mde_factor(problems - 1)
    lo, hi = intervals.t_interval(d)
    return true, float(mdes.mean()), float(np.mean((lo > 0) | (hi < 0)))


@pytest.mark.parametrize("k", [1, 5])
def test_problem_level_mde_is_detected_80_percent(k):
    """Find the shift whose true Pass@k gain equals the MDE the studies report from their own
    variance; at that shift the paired t-interval excludes 0 in about 80% of the studies."""
    lo, hi = 0.0, 2.0
    for _ in range(12):                      # bisection on true gain - reported MDE
        mid = (lo + hi) / 2
        true, m, _ = _paired_at(mid, 300, 50, k, seed=1)
        lo, hi = (mid, hi) if true < m else (lo, mid)
    true, m, rate = _paired_at((lo + hi) / 2, 1500, 50, k, seed=2)
    assert true == pytest.approx(m, rel=0.05)
    assert _mc_band(rate, 0.8, 1500), rate
    print(f"k={k}: detected {rate:.3f} at a true gain of {true:.4f} (mean MDE {m:.4f})")


def _true_level(shift, seed_sd, k, a=0.6, b=1.2, draws=2_000_000, seed=9):
    """Population mean of the true Pass@k over problems and retrains (Monte Carlo, SE < 0.0005)."""
    rng = np.random.default_rng(seed)
    q = np.clip(rng.beta(a, b, draws), 1e-12, 1 - 1e-12)
    p = scipy.special.expit(scipy.special.logit(q) + rng.normal(0, seed_sd, draws) + shift)
    return float(np.mean(1 - (1 - p) ** k))


def _seed_studies(shift, studies, n_seeds, seed_sd, untrained_b, seed):
    rng = np.random.default_rng(seed)
    b = dict(n_seeds_b=1, seed_sd_b=0.0) if untrained_b else {}
    rows = []
    for i in range(studies):
        ya, yb = seeds.simulate_seeds(rng, 50, n_seeds, 16, 1, seed_sd, shift, **b)
        r = seeds.seed_compare(ya, yb, n_permutations=200, seed=i, fixed_b=untrained_b)
        rows.append((r.mde, r.ci_low, r.ci_high))
    return np.array(rows)


@pytest.mark.parametrize("untrained_b", [False, True])
def test_seed_level_mde_is_detected_80_percent(untrained_b):
    """5 seeds of A against 5 of B (or against one untrained run): a true gain equal to the
    reported MDE is detected (seed-level interval above 0) in about 80% of the studies."""
    sd = 0.2
    true_b = _true_level(0.0, 0.0 if untrained_b else sd, 1)
    lo, hi = 0.0, 1.5
    for _ in range(10):
        mid = (lo + hi) / 2
        gap = _true_level(mid, sd, 1) - true_b - _seed_studies(mid, 150, 5, sd, untrained_b, 3)[:, 0].mean()
        lo, hi = (mid, hi) if gap < 0 else (lo, mid)
    res = _seed_studies((lo + hi) / 2, 1000, 5, sd, untrained_b, 4)
    rate = float(np.mean(res[:, 1] > 0))
    assert _mc_band(rate, 0.8, 1000), rate
    print(f"untrained_b={untrained_b}: detected {rate:.3f}")


def test_untrained_base_interval_covers_and_the_pooled_one_over_covers():
    """A retrained 5 times against the one untrained base run: the interval that gives the base
    sampling variance only covers the true difference about 95% of the time; pooling the base with
    A's retraining variance (the general formula) over-covers, i.e. it loses power."""
    sd, shift, n = 0.3, 0.3, 800
    true = _true_level(shift, sd, 1) - _true_level(0.0, 0.0, 1)
    rng = np.random.default_rng(5)
    fixed = pooled = 0
    for i in range(n):
        ya, yb = seeds.simulate_seeds(rng, 50, 5, 16, 1, sd, shift, n_seeds_b=1, seed_sd_b=0.0)
        r = seeds.seed_compare(ya, yb, n_permutations=100, seed=i, fixed_b=True)
        fixed += r.ci_low <= true <= r.ci_high
        r = seeds.seed_compare(ya, yb, n_permutations=100, seed=i)
        pooled += r.ci_low <= true <= r.ci_high
    assert _mc_band(fixed / n, 0.95, n), fixed / n
    assert pooled / n > 0.98, pooled / n
    print(f"coverage: untrained-base interval {fixed / n:.3f}, pooled {pooled / n:.3f}")


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_seed_mean_interval_covers_the_level(n_seeds):
    """One method's Pass@1 over seeds and problems: the seed-level interval of the level covers the
    population mean (over problems and retrains) about 95% of the time."""
    sd, n = 0.3, 800
    true = _true_level(0.0, sd, 1)
    rng = np.random.default_rng(6 + n_seeds)
    hits = 0
    for _ in range(n):
        y, _ = seeds.simulate_seeds(rng, 50, n_seeds, 16, 1, sd)
        level = seeds.seed_mean_ci(y)
        hits += level.low <= true <= level.high
        how = level.method
    assert how == seeds.SEED_CI and _mc_band(hits / n, 0.95, n), hits / n
    print(f"{n_seeds} seeds: level coverage {hits / n:.3f}")


def test_verdict_words():
    assert power.verdict(True, 0.05, 0.04, 0.9) == "—"
    assert power.verdict(False, 0.01, 0.04, 0.1) == "no (10% power at this size)"
    assert power.verdict(False, 0.05, 0.04, 0.85) == "yes (85% power at this size)"
    assert power.verdict(False, 0.01, math.nan, math.nan) == "n/a"
