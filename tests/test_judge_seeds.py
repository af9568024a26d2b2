"""The judge across training seeds, without a server: seed pairing, the seed-level aggregation
checked by hand (mean, t-interval from scipy, sign-flip p by brute force), and a null simulation
where the seed pairs, not the problems, carry the variance."""
import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats

from dlm_bench.judge import seed_pairs as J
from dlm_bench.stats import seed_level as seeds
from dlm_bench.errors import UserError
from dlm_bench.stats.metrics import bootstrap_ci, sign_flip_test


def test_pair_seeds():
    assert J.pair_seeds([0, 1, 2], [0, 1, 2]) == ([(0, 0), (1, 1), (2, 2)], None)
    assert J.pair_seeds([0, 1, 2], [-1]) == ([(0, -1), (1, -1), (2, -1)], None)  # base pairs with all
    assert J.pair_seeds([-1], [3, 5]) == ([(-1, 3), (-1, 5)], None)
    pairs, note = J.pair_seeds([0, 1, 2], [4, 7])
    assert pairs == [(0, 4), (1, 7)] and "first 2" in note
    assert J.pair_label(2, -1) == "A2-B*"
    with pytest.raises(UserError, match="no stored samples"):
        J.method_seeds(pd.DataFrame({"method": ["x"], "train_seed": [0]}), "y")


def _rows(cell, pair, pid, outcomes, status=("ok", "ok")):
    return [dict(task=cell[0], gen_length=cell[1], temperature=cell[2], seed_pair=pair,
                 problem_id=pid, method_a="x", method_b="y", status=s, outcome=o if s == "ok" else None)
            for o, s in zip(outcomes, status)]


def _brute_sign_flip(d):
    """Two-sided p by looping over every sign assignment as the bits of an integer."""
    s, obs, hits = len(d), abs(sum(d) / len(d)), 0
    for mask in range(2 ** s):
        flipped = [-v if mask >> i & 1 else v for i, v in enumerate(d)]
        hits += abs(sum(flipped) / s) >= obs - 1e-12
    return hits / 2 ** s


def test_seed_win_rates_by_hand():
    rng = np.random.default_rng(3)
    cell, other = ("gsm8k", 256, 0.6), ("gsm8k", 512, 0.6)
    pairs = ["A0-B0", "A1-B1", "A2-B2", "A3-B3"]
    rows, expect, n_split = [], {}, 0
    for k, pair in enumerate(pairs):
        # pair k leans towards A by k/4: the per-pair differences are known from the counts below
        draws = rng.choice(["win", "tie", "loss"], p=[0.2 + k / 8, 0.3, 0.5 - k / 8], size=(6, 2))
        for i, two in enumerate(draws):
            rows += _rows(cell, pair, f"p{i}", two)
        rows += _rows(cell, pair, "p-failed", ["win", None], status=("ok", "unavailable"))  # left out
        rows += _rows(other, pair, "q0", ["win", "win"])
        # a problem with one win and one loss followed the position: it counts as a tie
        split = np.array([sorted(two) == ["loss", "win"] for two in draws])
        kept = draws[~split]
        n_split += split.sum()
        expect[pair] = ((kept == "win").sum() / draws.size, ((kept == "tie").sum() + 2 * split.sum()) / draws.size,
                        (kept == "loss").sum() / draws.size)
    assert n_split > 0                      # the draws include position-following problems
    table = J.seed_win_rates(pd.DataFrame(rows))
    assert list(table["gen_length"]) == [256, 512, "all"]
    r = table.iloc[0]
    d = [expect[p][0] - expect[p][2] for p in pairs]
    assert r["n_pairs"] == 4 and r["problems_min"] == r["problems_max"] == 6
    assert r["pair_diffs"] == pytest.approx(dict(zip(pairs, d)))
    assert r["diff"] == pytest.approx(np.mean(d))
    assert (r["win"], r["tie"], r["loss"]) == pytest.approx(tuple(np.mean([expect[p][j] for p in pairs])
                                                                  for j in range(3)))
    lo, hi = scipy.stats.t.interval(0.95, 3, loc=np.mean(d), scale=scipy.stats.sem(d))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((max(lo, -1), min(hi, 1)))
    assert r["p_seed"] == pytest.approx(_brute_sign_flip(d)) and r["p_method"] == "exact"
    assert "2/2^4 = 0.125" in r["note"] and "no seed-level claim at 0.05" in r["note"]
    assert table.iloc[1]["diff"] == 1.0 and table.iloc[1]["p_seed"] == pytest.approx(2 / 16)
    md = J.seed_win_rates_markdown(table)
    assert f"A0-B0 {100 * d[0]:+.0f}, A1-B1" in md and "sign-flip" in md and "| all | all | all | 4 |" in md


def test_few_and_many_pairs():
    one = J.seed_level([0.3])
    assert one["diff"] == 0.3 and math.isnan(one["ci_low"]) and "one seed pair" in one["note"]
    three = J.seed_level([0.1, 0.2, 0.3])
    assert three["p_seed"] == pytest.approx(0.25) and "2/2^3 = 0.25" in three["note"]
    six = J.seed_level([0.1, 0.2, 0.3, 0.1, 0.2, 0.3])
    assert six["p_seed"] == pytest.approx(2 / 64) and "no seed-level claim" not in six["note"]
    d = np.random.default_rng(0).normal(0.05, 0.1, size=20)
    p, how = sign_flip_test(d, exact_max=J.EXACT_FLIPS_MAX_PAIRS, rng=1)
    assert how == "monte-carlo" and abs(p - scipy.stats.ttest_1samp(d, 0).pvalue) < 0.05


def _null_judgments(rng, n_studies, n_pairs, n_problems, pair_sd):
    """A and B exchangeable: each verdict is A's win with probability expit(u), u ~ N(0, pair_sd)
    drawn per (study, seed pair) and shared by its problems (a retrain that happens to judge
    well), else A's loss; both orders drawn independently. Each study is one 'cell'."""
    u = rng.normal(0, pair_sd, size=(n_studies, n_pairs, 1, 1))
    win = rng.random((n_studies, n_pairs, n_problems, 2)) < scipy.special.expit(u)
    st, pa, pr, _ = np.indices(win.shape).reshape(4, -1)
    return pd.DataFrame({"study": st, "seed_pair": [f"A{k}-B{k}" for k in pa], "problem_id": pr.astype(str),
                         "status": "ok", "outcome": np.where(win.ravel(), "win", "loss"),
                         "method_a": "x", "method_b": "y"})


def test_seed_level_null_false_positive_rate():
    """A and B exchangeable, the seed pairs carrying most of the variance (5 pairs x 20 problems):
    the seed-level test (sign-flip over pairs) rejects in <= 5% (+ 3 Monte-Carlo SE) of studies; a
    bootstrap over the 100 pooled (pair, problem) units, as a judge blind to seeds would run,
    rejects far more often. With 5 pairs the sign-flip test cannot reject at 0.05 at all (smallest
    p 2/32), so it is also checked at 8 pairs. The t-interval over the pairs is slightly liberal
    for these bounded, light-tailed differences (a t-test on 5 draws of 2·expit(N(0, 1)) - 1 rejects
    5.9% of 200,000 nulls, 5.0% for normal draws), hence its extra 1.5 points."""
    rng = np.random.default_rng(11)
    n = 1000
    mc = 3 * math.sqrt(0.065 * 0.935 / n)
    j = _null_judgments(rng, n, 5, 20, pair_sd=1.0)
    table = J.seed_win_rates(j, cells=("study",)).iloc[:n]
    assert (table["p_seed"] >= 2 / 32 - 1e-12).all()  # never below the floor, so never < 0.05
    t_fpr = float(np.mean((table["ci_low"] > 0) | (table["ci_high"] < 0)))
    assert t_fpr <= 0.05 + 0.015 + mc, t_fpr
    units = J.problem_scores(j, ["study"]).assign(net=lambda f: f["win"] - f["loss"])
    n_boot, prob_rej = 150, 0  # the bootstrap is the slow part: fewer studies, still clear-cut
    for i, grp in units[units["study"] < n_boot].groupby("study"):
        ci = bootstrap_ci(grp["net"].to_numpy(), 0.95, 500, rng=[11, i])
        prob_rej += not ci.low <= 0 <= ci.high
    assert prob_rej / n_boot > max(0.3, 4 * t_fpr), (prob_rej / n_boot, t_fpr)

    eight = J.seed_win_rates(_null_judgments(rng, n, 8, 20, pair_sd=1.0), cells=("study",)).iloc[:n]
    assert float(np.mean(eight["p_seed"] < 0.05)) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / n)


# --------------------------------------------------------------------------- the command, on seed folders

def _store_run(folder, method, tag, n_problems=3, temps=(0.6,)):
    """One run folder of stored samples whose text names the method and the training seed `tag`."""
    from dlm_bench.runs.store import Store
    rows = [dict(method=method, task="testbed", temperature=t, gen_length=12, problem_id=f"p{i}",
                 sample=s, seed=s, config_hash=f"{method}-{tag}-{t}", prompt_hash="ph",
                 text=f"p{i} {method} {tag} try {s}", tokens=[1], nfe=12, length=5, seconds=0.0,
                 correct=True, extracted="1", reason="")
            for t in temps for i in range(n_problems) for s in range(2)]
    Store(folder).append("scores", rows)


def _shown_tags(body):
    """(method, seed tag) of every solution in each of the two sets the judge was shown."""
    user = body["messages"][-1]["content"]
    first, second = user.split("=== Set A")[1].split("=== Set B")
    tags = lambda text: set(re.findall(r"p\d+ (\w+) (\w+) try", text))  # noqa: E731
    return tags(first), tags(second)


def _seed_judge(body):
    """Prefers A's samples in seed pair 0 and B's in seed pair 1, whatever order they are shown in."""
    from test_judge import _verdict
    first, second = _shown_tags(body)
    (m1, tag), = first
    want = "A" if tag == "seed0" else "B"
    return 200, _verdict("A" if m1 == want else "B")


def test_judge_cli_pairs_training_seeds(tmp_path, capsys):
    from dlm_bench.cli import main
    from fake_openai import FakeServer
    runs = tmp_path / "runs"
    for k in range(3):                      # A has a third seed that B lacks: left out, with a note
        _store_run(runs / "A" / f"seed-{k}" / "run", "A", f"seed{k}")
    for k in range(2):
        _store_run(runs / "B" / f"seed-{k}" / "run", "B", f"seed{k}")
    _store_run(runs / "base" / "run", "base", "single")
    srv = FakeServer(_seed_judge)
    try:
        flags = ["--runs", str(runs), "--judge-url", srv.url, "--judge-model", "fake", "--retries", "0",
                 "--no-problems", "--resamples", "200", "--save", str(tmp_path / "j.csv")]
        assert main(["judge", "A", "B"] + flags) == 0
        out, err = capsys.readouterr()
        assert len(srv.requests) == 2 * 3 * 2   # seed pairs x problems x both orders
        for body in srv.requests:               # every request shows one seed of A against the same seed of B
            first, second = _shown_tags(body)
            assert len(first) == len(second) == 1
            assert {t for _, t in first} == {t for _, t in second}
            assert {m for m, _ in first | second} == {"A", "B"}
        assert {_shown_tags(b)[0].pop()[1] for b in srv.requests} == {"seed0", "seed1"}
        assert "3 training seeds of A and 2 of B: pairing the first 2" in err
        assert "across training seeds: A (A) vs B (B)" in out and seeds.SAMPLING_ONLY not in out
        # pair 0: A wins in both orders (+100 pp); pair 1: B does (-100): mean 0, sign-flip p = 1
        assert re.search(r"\| testbed \| 12 \| 0.6 \| 2 \| 3 \| 50 \| 0 \| 50 \| A0-B0 \+100, A1-B1 -100 \| "
                         r"\+0 \| \[-100, \+100\] \| 1.000 \|", out), out
        assert "2/2^2 = 0.5, so no seed-level claim at 0.05" in out and "Problem level" in out
        saved = pd.read_csv(tmp_path / "j.csv")
        assert set(zip(saved["seed_a"], saved["seed_b"])) == {(0, 0), (1, 1)}

        srv.requests.clear()
        assert main(["judge", "A", "base"] + flags) == 0   # the base's one run against every seed of A
        out, err = capsys.readouterr()
        assert len(srv.requests) == 3 * 3 * 2 and "pairing the first" not in err
        assert "A0-B*" in out and "A2-B*" in out and "base: one run" in out
    finally:
        srv.close()


def test_judge_cli_without_seed_folders_says_sampling_only(tmp_path, capsys):
    from dlm_bench.cli import main
    from fake_openai import FakeServer
    from test_judge import _verdict
    for m in ("A", "B"):
        _store_run(tmp_path / m / "run", m, "single", n_problems=2)
    srv = FakeServer(lambda body: (200, _verdict("TIE")))
    try:
        assert main(["judge", "A", "B", "--runs", str(tmp_path), "--judge-url", srv.url, "--judge-model",
                     "fake", "--retries", "0", "--no-problems", "--resamples", "200"]) == 0
    finally:
        srv.close()
    out = capsys.readouterr().out
    assert seeds.SAMPLING_ONLY in out and "across training seeds" not in out and len(srv.requests) == 4


def test_judge_cli_on_seed_folders_with_the_judge_down(tmp_path, capsys):
    """Reachable (the preflight passes) but failing every request: the empty seed-level table, the
    summary line and exit 1, as without seed folders."""
    from dlm_bench.cli import main
    from fake_openai import FakeServer
    for m in ("A", "B"):
        for k in range(2):
            _store_run(tmp_path / m / f"seed-{k}" / "run", m, f"seed{k}", n_problems=1)
    srv = FakeServer(lambda body: (503, "overloaded"))
    try:
        assert main(["judge", "A", "B", "--runs", str(tmp_path), "--judge-url", srv.url,
                     "--judge-model", "none", "--retries", "0", "--no-problems", "--resamples", "200"]) == 1
    finally:
        srv.close()
    out, err = capsys.readouterr()
    assert "no seed-level table" in out and "judge: 0 of 4 requests judged" in out and "HTTP 503" in out
    assert "only 0% of requests got a verdict" in err
