"""Pass@k, bootstrap CIs, the paired tests and BH: checked against brute force and simulation."""
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats

from dlm_bench.stats import metrics as M
from dlm_bench.errors import UserError


def brute_pass_at_k(n, c, k):
    """Share of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(1, 11))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        assert M.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_all_k_from_one_count_array():
    n = np.array([8, 8, 8, 6, 6])
    c = np.array([0, 3, 8, 1, 5])
    ks = list(range(1, 7))
    got = M.pass_at_k(n, c, ks)
    assert got.shape == (5, 6)
    want = [[brute_pass_at_k(nn, cc, k) for k in ks] for nn, cc in zip(n, c)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(M.pass_at_k(n, c, 1), c / n)  # k = 1 is the accuracy


def test_pass_at_k_stable_for_large_n():
    # C(1000, 500) overflows a float; the product form does not need it.
    exact = 1 - math.comb(600, 300) / math.comb(1000, 300)
    assert M.pass_at_k(1000, 400, 300) == pytest.approx(exact, rel=1e-12)
    assert M.pass_at_k(1000, 1, 1000) == 1.0
    with pytest.raises(UserError):
        M.pass_at_k([16, 4], [1, 1], 5)  # k above a problem's n


def _scores(spec, hash_="h"):
    """spec: {(method, task, temperature, gen_length): {problem_id: [bool, ...]}} -> score rows."""
    rows = []
    for (method, task, temp, length), problems in spec.items():
        for pid, outcomes in problems.items():
            for s, ok in enumerate(outcomes):
                rows.append(dict(method=method, task=task, temperature=temp, gen_length=length,
                                 problem_id=pid, sample=s, correct=ok, extracted=None,
                                 reason="", config_hash=hash_))
    return pd.DataFrame(rows)


def test_passk_table_mean_and_se():
    cell = ("m", "gsm8k", 0.6, 256)
    df = _scores({cell: {"p1": [True, False, False, False], "p2": [True] * 4,
                         "p3": [False] * 4}})
    t = M.passk_table(df, ks=[1, 2])
    per = np.array([[0.25, 0.5], [1, 1], [0, 0]])
    for j, k in enumerate([1, 2]):
        row = t[t["k"] == k].iloc[0]
        assert row["pass_at_k"] == pytest.approx(per[:, j].mean())
        assert row["se"] == pytest.approx(per[:, j].std(ddof=1) / math.sqrt(3))
        assert row["n_problems"] == 3 and row["n_samples"] == 4
    per_problem = M.per_problem_passk(df, ks=[1, 2])
    np.testing.assert_allclose(per_problem[["pass@1", "pass@2"]], per)
    md = M.passk_markdown(t, 2)
    assert "Pass@2 (%) ± SE" in md and "50.0 ±" in md


def test_counts_table_guards():
    cell = ("m", "gsm8k", 0.6, 256)
    df = _scores({cell: {"p1": [True, False]}})
    with pytest.raises(UserError, match="lack column"):
        M.counts_table(df.drop(columns="correct"))
    mixed = pd.concat([df, _scores({cell: {"p2": [True, True]}}, hash_="other")])
    with pytest.raises(UserError, match="config_hash"):
        M.counts_table(mixed)
    nulls = df.astype({"correct": object})
    nulls.loc[0, "correct"] = None  # a failed grading is not a success
    assert M.counts_table(nulls)["c"].tolist() == [0]
    with pytest.warns(UserWarning, match="duplicate"):
        assert M.counts_table(pd.concat([df, df]))["n"].tolist() == [2]


def _simulate_problems(rng, n_problems, a=0.6, b=1.2, n=16, k=5):
    p = rng.beta(a, b, size=n_problems)
    c = rng.binomial(n, p)
    return M.pass_at_k(np.full(n_problems, n), c, k)


def test_bootstrap_ci_coverage_near_nominal():
    """200 simulated benchmarks of 40 problems (per-problem rates ~ Beta(0.6, 1.2), 16 samples).
    Target: the population mean of Pass@5, 1 - B(a, b+5)/B(a, b). A 90% CI should cover it in
    about 90% of datasets. Bootstrap intervals undercover a little at 40 problems (1000-dataset
    runs of this design measured 0.88 for BCa, 0.89 percentile, 0.91 Student t), and a 200-dataset
    estimate has SE sqrt(.88*.12/200) = 0.023; [0.82, 0.96] is 0.88 - 3 SE to 0.90 + 3 SE, which a
    correct method fails with probability < 1%. The seed is fixed, so the run is reproducible."""
    a, b, k = 0.6, 1.2, 5
    truth = 1 - scipy.special.beta(a, b + k) / scipy.special.beta(a, b)
    rng = np.random.default_rng(20240)
    hits = 0
    for _ in range(200):
        ci = M.bootstrap_ci(_simulate_problems(rng, 40, a, b, k=k), 0.90, 2000, rng)
        assert ci.method == "BCa"
        hits += ci.low <= truth <= ci.high
    assert 0.82 <= hits / 200 <= 0.96


def test_paired_bootstrap_ci_coverage():
    """Same design for a paired difference: B's per-problem rate is A's plus 0.05 (clipped to 1);
    the true difference of population Pass@5 means comes from a 400k-draw Monte Carlo (SE ~1e-4).
    Tolerance as above."""
    rng = np.random.default_rng(7)
    big = rng.beta(0.6, 1.2, size=400_000)
    truth = np.mean((1 - (1 - big) ** 5) - (1 - (1 - np.clip(big + 0.05, 0, 1)) ** 5))
    hits = 0
    for _ in range(200):
        p = rng.beta(0.6, 1.2, size=40)
        ca, cb = rng.binomial(16, p), rng.binomial(16, np.clip(p + 0.05, 0, 1))
        a, b = M.pass_at_k(np.full(40, 16), ca, 5), M.pass_at_k(np.full(40, 16), cb, 5)
        ci = M.paired_bootstrap_ci(a, b, 0.90, 2000, rng)
        hits += ci.low <= truth <= ci.high
    assert 0.82 <= hits / 200 <= 0.96


def test_constant_values_fall_back_to_percentile_without_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's degenerate-data warnings must not leak
        ci = M.bootstrap_ci(np.ones(30), 0.95, 1000, 0)
        assert (ci.low, ci.high, ci.method) == (1.0, 1.0, "percentile")
        res = M.paired_compare(np.ones(30), np.ones(30), n_resamples=1000)
    assert res.ci_method == "t" and (res.ci_low, res.ci_high) == (0.0, 0.0)
    assert res.p_perm == 1.0 and res.p_wilcoxon == 1.0 and res.d_z == 0.0
    assert M.bootstrap_ci([0.5], 0.95).method == "undefined"


def test_sign_flip_exact_matches_brute_force():
    d = np.array([0.3, -0.1, 0.25, 0.0, 0.4, -0.05, 0.2, 0.0, 0.15, 0.1])
    nz = d[d != 0]
    stats = [abs(np.dot(s, nz)) for s in itertools.product([-1, 1], repeat=nz.size)]
    want = np.mean(np.array(stats) >= abs(nz.sum()) - 1e-12)
    p, how = M.sign_flip_test(d)
    assert how == "exact" and p == pytest.approx(want)
    p_mc, how = M.sign_flip_test(d, n_resamples=50_000, exact_max=0, rng=3)
    assert how == "monte-carlo" and p_mc == pytest.approx(want, abs=0.01)
    assert M.sign_flip_test(np.zeros(5)) == (1.0, "exact")


def test_permutation_false_positive_rate_under_null():
    """400 null datasets per design; at alpha = 0.05 the rejection rate's SE is 0.011, so the
    continuous-data rate must lie in [0.017, 0.083] (3 SE). Pass@k differences are discrete with
    many ties, which can only make the test conservative: there it must stay <= 0.083."""
    rng = np.random.default_rng(11)
    alpha, reps = 0.05, 400
    cont = [M.sign_flip_test(rng.standard_normal(30), 1000, rng=rng)[0] for _ in range(reps)]
    assert 0.017 <= np.mean(np.array(cont) <= alpha) <= 0.083
    disc = []
    for _ in range(reps):
        p = rng.beta(0.6, 1.2, size=30)
        a = M.pass_at_k(np.full(30, 16), rng.binomial(16, p), 5)
        b = M.pass_at_k(np.full(30, 16), rng.binomial(16, p), 5)
        disc.append(M.sign_flip_test(a - b, 1000, rng=rng)[0])
    assert np.mean(np.array(disc) <= alpha) <= 0.083


def test_wilcoxon_handles_zero_differences():
    d = np.r_[np.zeros(20), [0.1, 0.2, 0.15, 0.3, 0.05, 0.25]]
    p = M.wilcoxon_p(d)
    assert 0 < p < 0.05
    assert M.wilcoxon_p(np.zeros(10)) == 1.0


def test_bh_hand_computed():
    # sorted p: .005 .01 .03 .04 .20 -> p*m/rank: .025 .025 .05 .05 .20, monotone from the top
    p = [0.01, 0.04, 0.03, 0.005, 0.20]
    np.testing.assert_allclose(M.bh_adjust(p), [0.025, 0.05, 0.05, 0.025, 0.20])
    # the step-up minimum matters: raw .03 .03 .025 -> all .025
    np.testing.assert_allclose(M.bh_adjust([0.01, 0.02, 0.025]), [0.025] * 3)
    q = M.bh_adjust([0.01, np.nan, 0.04])  # NaN neither counts nor gets a q
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02) and q[2] == pytest.approx(0.04)


@pytest.mark.skipif(not hasattr(scipy.stats, "false_discovery_control"), reason="scipy < 1.11")
def test_bh_matches_scipy():
    p = np.random.default_rng(5).uniform(size=37) ** 2
    np.testing.assert_allclose(M.bh_adjust(p), scipy.stats.false_discovery_control(p, method="bh"))


def _two_methods(rng, n_problems=60, shift=0.25):
    spec = {}
    for task, eff in (("gsm8k", shift), ("math500", 0.0)):
        p = rng.beta(0.8, 0.8, size=n_problems)
        for method, pm in (("trafl", np.clip(p + eff, 0, 1)), ("base", p)):
            spec[(method, task, 0.6, 256)] = {
                f"q{i}": list(rng.random(16) < pm[i]) for i in range(n_problems)}
    return _scores(spec)


def test_compare_table_and_markdown():
    df = _two_methods(np.random.default_rng(3))
    df = df[~((df["method"] == "base") & (df["problem_id"] == "q0"))]  # q0 unpaired for base
    t = M.compare_table(df, "trafl", "base", 5, n_resamples=2000, n_permutations=5000)
    assert list(t["task"]) == ["gsm8k", "math500"]
    assert (t["n_problems"] == 59).all() and (t["n_unpaired"] == 1).all()
    big, null = t.iloc[0], t.iloc[1]
    assert big["diff"] > 0.05 and big["ci_low"] > 0 and big["q_bh"] < 0.05 and big["sig"]
    assert null["ci_low"] < 0 < null["ci_high"]  # no effect there: the CI straddles zero
    assert big["diff"] == pytest.approx(big["pass_a"] - big["pass_b"])
    np.testing.assert_allclose(t["q_bh"], M.bh_adjust(t["p_perm"]))
    assert t.attrs["primary_k"] == 5 and (t["k"] == 5).all()
    md = M.compare_markdown(t)
    assert md.startswith("**Pass@5 (primary k = 5): trafl (A) vs base (B)**")
    assert md.count("\n| gsm8k |") == 1 and "59 (1 unpaired)" in md
    assert "Benjamini–Hochberg over the 2 cells" in md and "A − B" in md
    again = M.compare_table(df, "trafl", "base", 5, n_resamples=2000, n_permutations=5000)
    pd.testing.assert_frame_equal(t, again)  # seeded: reruns agree
    with pytest.raises(UserError, match="not in the scores"):
        M.compare_table(df, "trafl", "nope", 5)
