"""Training-seed statistics (issue 16, items 1 and 2): coverage where seed variance dominates,
false-positive rate and power of the seed-level test, and the exact permutation against scipy."""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from dlm_bench.stats import seed_level as seeds


def _in_band(cov, n):
    mc = 2 * math.sqrt(0.95 * 0.05 / n)
    return 0.93 - mc <= cov <= 0.97 + mc


@pytest.mark.parametrize("k", [1, 16])
def test_seed_dominated_null_small(k):
    n = 400
    hier, prob, fpr = seeds.null_study(n, 50, 5, 16, k, seed_sd=0.6, seed=k)
    assert _in_band(hier, n), hier
    assert prob < 0.85, prob  # the problem-level CI ignores retraining: far below 95%
    assert fpr <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n), fpr


def test_power_grows_with_effect():
    n = 300
    _, _, fpr = seeds.null_study(n, 50, 5, 16, 1, seed_sd=0.2, seed=1)
    _, _, power = seeds.null_study(n, 50, 5, 16, 1, seed_sd=0.2, shift=0.5, seed=1)
    assert power > 0.6 > fpr, (power, fpr)


def test_exact_seed_permutation_matches_scipy():
    rng = np.random.default_rng(0)
    ma, mb = rng.normal(0.3, 0.1, 4), rng.normal(0.4, 0.1, 3)
    p, how = seeds.seed_permutation_p(ma, mb)
    def stat(x, y, axis=-1):  # |difference of means|, one-sided: the same two-sided p
        return np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis))
    ref = scipy.stats.permutation_test((ma, mb), stat, n_resamples=np.inf, vectorized=True,
                                       alternative="greater").pvalue
    assert how == "exact" and p == pytest.approx(ref)


def test_few_seeds_say_the_smallest_p():
    rng = np.random.default_rng(2)
    r = seeds.seed_compare(rng.random((3, 20)), rng.random((3, 20)) + 0.5)
    assert r.p_seed == pytest.approx(0.1) and "smallest attainable p = 0.1" in r.note


def test_one_seed_says_sampling_only():
    rng = np.random.default_rng(3)
    r = seeds.seed_compare(rng.random((1, 30)), rng.random((1, 30)))
    assert r.note == seeds.SAMPLING_ONLY and math.isnan(r.p_seed) and r.ci_method == "t"


def test_components_match_brute_force_variance():
    """The SE estimates the sd of the difference over many retrains of the same design."""
    rng = np.random.default_rng(4)
    diffs, ses = [], []
    for _ in range(1500):
        ya, yb = seeds.simulate_seeds(rng, 40, 4, 16, 1, seed_sd=0.4)
        diffs.append(ya.mean() - yb.mean())
        ses.append(seeds.variance_components_se(ya, yb))
    assert np.mean(np.square(ses)) == pytest.approx(np.var(diffs), rel=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("k", [1, 5, 16])
@pytest.mark.parametrize("seed_sd", [0.0, 0.6])
def test_seed_null_full(n_seeds, k, seed_sd):
    n = 1000
    hier, prob, fpr = seeds.null_study(n, 50, n_seeds, 16, k, seed_sd=seed_sd, seed=10 * n_seeds + k)
    assert _in_band(hier, n), hier
    if seed_sd:
        assert prob < 0.85, prob
    assert fpr <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n), fpr


def _write_run(folder, method, rates, n, rng, tag):
    import json
    folder.mkdir(parents=True)
    with open(folder / "scores.jsonl", "w") as f:
        for pid, p in enumerate(rates):
            for s in range(n):
                f.write(json.dumps({"method": method, "task": "testbed", "temperature": 0.6, "gen_length": 8,
                                    "problem_id": str(pid), "sample": s, "seed": s, "config_hash": tag,
                                    "correct": bool(rng.random() < p)}) + "\n")


def test_compare_cli_uses_seed_folders(tmp_path, capsys):
    from dlm_bench.cli import main
    rng = np.random.default_rng(0)
    rates = rng.random(12)
    for k in range(3):
        _write_run(tmp_path / "a" / f"seed-{k}" / "run", "a", np.clip(rates + 0.1 * k, 0, 1), 4, rng, f"a{k}")
    _write_run(tmp_path / "base" / "run", "base", rates, 4, rng, "b")
    out_json = tmp_path / "t.json"
    assert main(["compare", "a", "base", "--runs", str(tmp_path), "--k", "1", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "across training seeds" in out and "3/1" in out
    import json
    row = json.loads(out_json.read_text())["rows"][0]
    assert (row["n_seeds_a"], row["n_seeds_b"], row["n_problems"]) == (3, 1, 12)


def test_compare_cli_without_seeds_says_sampling_only(tmp_path, capsys):
    from dlm_bench.cli import main
    rng = np.random.default_rng(1)
    _write_run(tmp_path / "a" / "run", "a", rng.random(10), 4, rng, "a")
    _write_run(tmp_path / "base" / "run", "base", rng.random(10), 4, rng, "b")
    assert main(["compare", "a", "base", "--runs", str(tmp_path), "--k", "1"]) == 0
    assert seeds.SAMPLING_ONLY in capsys.readouterr().out


def test_report_headlines_are_seed_means_with_seed_level_intervals(tmp_path):
    """Three seeds of `a` against the one untrained base run: every headline number is the mean over
    seeds, every interval the seed-level one (checked against seed_level directly), and each seed's
    own numbers are in their own labelled section."""
    from dlm_bench.report.build import ReportConfig, render
    from dlm_bench.stats.metrics import counts_table, pass_at_k
    rng = np.random.default_rng(4)
    rates = rng.random(12)
    runs = tmp_path / "runs"
    for k in range(3):
        _write_run(runs / "a" / f"seed-{k}" / "run", "a", np.clip(rates + 0.1 * k, 0, 1), 4, rng, f"a{k}")
    _write_run(runs / "base" / "run", "base", rates, 4, rng, "b")
    rep = render(ReportConfig(runs=str(runs), out=str(tmp_path / "out"), k=2, bar_k=2, formats=("png",)))
    text = "\n".join(rep.lines)
    from dlm_bench.runs.index import read_seeded_scores
    counts = counts_table(read_seeded_scores(runs), ["method", "train_seed", "task", "gen_length", "temperature"])
    def matrix(m, k):
        g = counts[counts["method"] == m].pivot_table(index="train_seed", columns="problem_id", values=["n", "c"])
        return pass_at_k(g["n"].to_numpy().ravel(), g["c"].to_numpy().ravel(), k).reshape(g["n"].shape)
    ya, yb = matrix("a", 1), matrix("base", 1)
    level = seeds.seed_mean_ci(ya)
    fig1c = pd.read_csv(tmp_path / "out" / "tables" / "fig1c_all_methods.csv")
    row = fig1c[(fig1c["method"] == "a") & (fig1c["k"] == 1)].iloc[0]
    assert row["n_seeds"] == 3 and row["pass_at_k"] == pytest.approx(ya.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((level.low, level.high)) and level.method == seeds.SEED_CI
    gap = pd.read_csv(tmp_path / "out" / "tables" / "fig1b_gap_to_base.csv")
    r = gap[(gap["method"] == "a") & (gap["k"] == 1)].iloc[0]
    direct = seeds.seed_compare(ya, yb, fixed_b=True)
    assert (r["gap"], r["ci_low"], r["ci_high"], r["mde"]) == pytest.approx(
        (direct.diff, direct.ci_low, direct.ci_high, direct.mde))
    assert "| testbed | 8 | a | 12 | 3 | 4 |" in text.split("## Figure 1c")[1]      # problems, seeds, n
    assert "trained methods: mean over 3 training seeds" in text
    head = text.split("## Per training seed")[0]
    assert "3/1" in head and "MDE (pp)" in head and "Every method minus base: difference of seed means" in head
    assert "## Per training seed" in text and "base 1, a 3" in text
    ax = rep.figures["fig_seeds"].axes[0]
    assert len(ax.lines) == 3 + 1 + 1 + 1  # a: three thin seeds + mean; base: one seed + mean
    per_seed = pd.read_csv(tmp_path / "out" / "tables" / "per_seed_passk.csv")
    assert sorted(per_seed["train_seed"]) == [-1, 0, 1, 2]
    assert per_seed.loc[per_seed["train_seed"] == 1, "pass@1"].iloc[0] == pytest.approx(ya[1].mean())
    div = pd.read_csv(tmp_path / "out" / "tables" / "diversity_seeds.csv")
    assert sorted(zip(div["method"], div["n_seeds"])) == [("a", 3), ("base", 1)]
    summary = pd.read_csv(tmp_path / "out" / "tables" / "seeds_summary.csv")
    assert sorted(summary["k"].unique()) == [1, 2, 4]          # Pass@1, the primary k, Pass@n


def test_diversity_across_seeds_by_hand():
    """Two seeds of one method: seed 0 finds 2 distinct correct answers on its one solved problem,
    seed 1 finds 1 on each of two: mean over seeds (2 + 1) / 2, range 1-2, solved 1/2 and 2/2."""
    from dlm_bench.report.seed_level import diversity_across_seeds
    rows = []
    for seed, answers in ((0, {"p0": ["4", "5", None], "p1": [None, None, None]}),
                          (1, {"p0": ["4", "4", None], "p1": ["7", None, None]})):
        for pid, ans in answers.items():
            for s, a in enumerate(ans):
                rows.append({"method": "a", "train_seed": seed, "task": "gsm8k", "gen_length": 8, "temperature": 0.6,
                             "problem_id": pid, "sample": s, "correct": a is not None, "extracted": a})
    t = diversity_across_seeds(pd.DataFrame(rows)).iloc[0]
    assert (t["mean"], t["low"], t["high"], t["solved"], t["n_seeds"]) == (1.5, 1.0, 2.0, 0.75, 2)


def test_smallest_p_with_unequal_seed_counts():
    """3 trained seeds vs the one untrained base: 4 label splits, each its own |difference|, so an
    extreme observation has p = 1/4 (the note says so); 2 vs 2: mirror splits pair up, p >= 2/6."""
    rng = np.random.default_rng(0)
    ya, yb = rng.random((3, 6)) + 5.0, rng.random((1, 6))
    r = seeds.seed_compare(ya, yb)
    assert r.p_seed == pytest.approx(0.25) and "smallest attainable p = 0.25" in r.note
    r = seeds.seed_compare(rng.random((2, 6)) + 5.0, rng.random((2, 6)))
    assert r.p_seed == pytest.approx(2 / 6) and "smallest attainable p = 0.333" in r.note
