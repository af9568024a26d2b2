"""Statistics across training seeds: a claim about a training procedure, not one checkpoint.

Input per method: an (S, P) array of per-problem Pass@k values, one row per training seed, on the
same P problems for both methods. The interval is diff ± t_{S_A+S_B-2} · SE, the SE from the
crossed seed x problem variance components (`variance_components_se`), chosen by `null_study`
(tests/test_seeds.py): a hierarchical bootstrap (seeds, then problems) over-covered (99% at Pass@16)
because it counts the seed x problem noise twice, and a percentile bootstrap of 3-5 seeds
under-covers ((S-1)/S variance, few distinct values). Samples inside a problem are not re-drawn:
each seed's per-problem Pass@k already carries that noise, and re-drawing biases the unbiased
Pass@k estimator for k > 1 (a duplicated sample fakes low diversity). The test permutes the method labels over the seed runs
(exactly over all splits when there are few), so seeds are the unit of replication.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.special
import scipy.stats

from dlm_bench.errors import UserError
from dlm_bench.runs.index import UNSEEDED
from dlm_bench.stats import power

EXACT_SPLITS_MAX = 20_000  # label splits up to which the seed-level permutation test is exact
SAMPLING_ONLY = "one seed per method: the interval covers sampling variance only, not retraining"
SEED_CI = "seeds+problems t"
POWER_NOTE = (f"MDE: the true difference this design (its problems x samples x seeds and the variance it "
              f"observed) detects with {power.POWER:.0%} power at alpha 0.05 (stats/power.py); Detectable?: for a "
              "difference whose interval contains 0, whether a true difference of the observed size was "
              "detectable, and the power at that size.")
UNTRAINED = UNSEEDED     # the train_seed of runs outside every seed-K folder: the untrained base


@dataclass(frozen=True)
class SeedResult:
    n_seeds_a: int
    n_seeds_b: int
    n_problems: int
    diff: float
    ci_low: float
    ci_high: float
    ci_method: str
    p_seed: float        # seed-level permutation p (NaN with one seed per method)
    p_method: str        # "exact", "monte-carlo" or "n/a"
    note: str            # what the interval covers, and the smallest attainable p
    se: float = math.nan     # of the difference, from the variance components (or over problems)
    df: float = math.nan     # of the t quantile the interval and the power use
    mde: float = math.nan    # minimum detectable difference at power.POWER, alpha = 1 - confidence
    power: float = math.nan  # power of the design at a true difference of |diff|
    mean_a: float = math.nan  # A's and B's means over their seeds and the shared problems
    mean_b: float = math.nan


def satterthwaite(parts) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance estimates, given as
    (value, its degrees of freedom) pairs."""
    total = sum(v for v, _ in parts)
    den = sum(v * v / d for v, d in parts if v > 0 and d > 0)
    return total * total / den if den > 0 else float(min(d for _, d in parts))


def _residual(y) -> float:
    """Sum of squares of the seed x problem residuals of one method's (S, P) values."""
    r = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
    return float((r ** 2).sum())


def difference_se(ya, yb, fixed_b: bool = False) -> tuple[float, float]:
    """(SE, df) of mean(A) - mean(B) from the crossed seed x problem layout, by method of moments:
    the pooled variance of the seed means (retraining plus sampling noise) times 1/S_A + 1/S_B,
    plus the method x problem interaction left in the per-problem differences once their residual
    (seed x problem) noise is taken out; df = S_A + S_B - 2. Resampling seeds and problems both would
    count that residual twice (it over-covered, 99% at Pass@16 in `null_study`).

    `fixed_b`: B is one run of a model that was not retrained (the untrained base): its mean varies
    by sampling alone, so it contributes the residual (sampling) variance over problems, not A's
    retraining variance; df by Welch-Satterthwaite over A's seeds and the problems."""
    sa, sb, p = ya.shape[0], yb.shape[0], ya.shape[1]
    d = ya.mean(axis=0) - yb.mean(axis=0)
    if fixed_b:
        if sb != 1 or sa < 2:
            raise ValueError(f"fixed_b needs one B run and at least 2 A seeds, got {sa} and {sb}")
        va = float(ya.mean(axis=1).var(ddof=1))
        sigma_e2 = _residual(ya) / ((sa - 1) * (p - 1))
        problems = max(sigma_e2, float(d.var(ddof=1)) - sigma_e2 / sa) / p
        return math.sqrt(va / sa + problems), satterthwaite([(va / sa, sa - 1), (problems, p - 1)])
    df = sa + sb - 2
    ma, mb = ya.mean(axis=1), yb.mean(axis=1)
    v_seed = (((ma - ma.mean()) ** 2).sum() + ((mb - mb.mean()) ** 2).sum()) / df
    sigma_e2 = (_residual(ya) + _residual(yb)) / (df * (p - 1))
    inter = max(0.0, d.var(ddof=1) - sigma_e2 * (1 / sa + 1 / sb)) / p
    return math.sqrt(v_seed * (1 / sa + 1 / sb) + inter), float(df)


def variance_components_se(ya, yb, fixed_b: bool = False) -> float:
    """The SE of `difference_se`."""
    return difference_se(ya, yb, fixed_b)[0]


def level_se(y) -> tuple[float, float]:
    """(SE, df) of one method's grand mean over S >= 2 training seeds and P problems: the variance of
    the seed means over S (retraining plus sampling) plus the problems' own spread over P net of the
    residual noise already in the seed means; df by Welch-Satterthwaite."""
    s, p = y.shape
    v = float(y.mean(axis=1).var(ddof=1))
    sigma_e2 = _residual(y) / ((s - 1) * (p - 1))
    problems = max(0.0, float(y.mean(axis=0).var(ddof=1)) - sigma_e2 / s) / p
    return math.sqrt(v / s + problems), satterthwaite([(v / s, s - 1), (problems, p - 1)])


@dataclass(frozen=True)
class Level:
    mean: float
    low: float
    high: float
    method: str     # SEED_CI, or the problem-level interval's ("t") with one seed
    se: float


def seed_mean_ci(y, confidence: float = 0.95) -> Level:
    """One method's Pass@k over its seeds (rows) and problems (columns): the mean with the seed-level
    interval with 2 or more seeds, the problem-level t-interval (`metrics.mean_ci`, sampling variance
    only) with one; clipped to [0, 1]."""
    from dlm_bench.stats.metrics import mean_ci  # metrics is the problem-level layer
    y = np.atleast_2d(np.asarray(y, float))
    m = float(y.mean()) if y.size else math.nan
    if y.shape[1] < 2:
        return Level(m, math.nan, math.nan, "undefined", math.nan)
    if y.shape[0] == 1:
        ci = mean_ci(y[0], confidence)
        return Level(m, ci.low, ci.high, ci.method, float(y[0].std(ddof=1) / math.sqrt(y.shape[1])))
    se, df = level_se(y)
    half = scipy.stats.t.ppf(0.5 + confidence / 2, df) * se
    return Level(m, max(m - half, 0.0), min(m + half, 1.0), SEED_CI, se)


def seed_permutation_p(ma, mb, n_resamples=20_000, rng=None) -> tuple[float, str]:
    """Two-sided p for equal means of the seed-level values ma, mb, permuting method labels."""
    pooled = np.concatenate([ma, mb])
    n, na = pooled.size, ma.size
    obs = abs(ma.mean() - mb.mean())
    tol = 1e-12 * max(1.0, np.abs(pooled).sum())
    total = pooled.sum()
    if math.comb(n, na) <= EXACT_SPLITS_MAX:
        idx = np.array(list(itertools.combinations(range(n), na)))
        sums = pooled[idx].sum(axis=1)
        stats = np.abs(sums / na - (total - sums) / (n - na))
        return float(np.mean(stats >= obs - tol)), "exact"
    rng = np.random.default_rng(rng)
    perm = np.argsort(rng.random((n_resamples, n)), axis=1)[:, :na]
    sums = pooled[perm].sum(axis=1)
    hits = int(np.sum(np.abs(sums / na - (total - sums) / (n - na)) >= obs - tol))
    return (1 + hits) / (1 + n_resamples), "monte-carlo"


def seed_compare(ya, yb, confidence=0.95, n_permutations=20_000, seed=0, fixed_a=False,
                 fixed_b=False) -> SeedResult:
    """Method A vs B from per-seed, per-problem values ya (S_A, P) and yb (S_B, P). `fixed_a` /
    `fixed_b`: that side is one run of an untrained model (`difference_se`)."""
    from dlm_bench.stats.metrics import paired_ci  # metrics is the problem-level layer
    ya, yb = np.atleast_2d(np.asarray(ya, float)), np.atleast_2d(np.asarray(yb, float))
    if ya.shape[1] != yb.shape[1]:
        raise ValueError(f"A and B need the same problems, got {ya.shape[1]} and {yb.shape[1]}")
    sa, sb, p = ya.shape[0], yb.shape[0], ya.shape[1]
    diff = float(ya.mean() - yb.mean())
    alpha = 1 - confidence
    if sa == 1 and sb == 1:
        ci = paired_ci(ya[0], yb[0], confidence)
        se, df = float((ya[0] - yb[0]).std(ddof=1) / math.sqrt(p)), float(p - 1)
        return SeedResult(1, 1, p, diff, ci.low, ci.high, ci.method, math.nan, "n/a", SAMPLING_ONLY, se, df,
                          power.mde(se, df, alpha), power.power_at(diff, se, df, alpha), float(ya.mean()),
                          float(yb.mean()))
    rng = np.random.default_rng(seed)
    fixed = (fixed_b and sb == 1 and sa >= 2) or (fixed_a and sa == 1 and sb >= 2)
    se, df = (difference_se(yb, ya, True) if fixed_a else difference_se(ya, yb, True)) if fixed \
        else difference_se(ya, yb)
    half = scipy.stats.t.ppf(0.5 + confidence / 2, max(df, 1)) * se
    pv, how = seed_permutation_p(ya.mean(axis=1), yb.mean(axis=1), n_permutations, rng)
    # a split and its mirror image give the same |difference| only when the groups have equal sizes
    floor = (2 if sa == sb else 1) / math.comb(sa + sb, sa) if how == "exact" else math.nan
    note = (f"{sa} vs {sb} training seeds: interval over seeds and problems; seed-level exact "
            f"permutation test, smallest attainable p = {floor:.3g}" if how == "exact" else
            f"{sa} vs {sb} training seeds: interval over seeds and problems; Monte-Carlo seed permutation")
    if fixed:
        note += f"; {'A' if fixed_a else 'B'} is one untrained run (sampling variance only)"
    return SeedResult(sa, sb, p, diff, max(diff - half, -1.0), min(diff + half, 1.0), SEED_CI, pv, how, note,
                      se, df, power.mde(se, df, alpha), power.power_at(diff, se, df, alpha), float(ya.mean()),
                      float(yb.mean()))


# --------------------------------------------------------------------------- simulation

def simulate_seeds(rng, n_problems, n_seeds, n, k, seed_sd=0.6, shift=0.0, a=0.6, b=1.2, n_seeds_b=None,
                   seed_sd_b=None):
    """One study: problem difficulty q ~ Beta(a, b); each (method, seed) run moves every problem's
    logit by its own N(0, seed_sd) (a retrain); A also by `shift`. B has `n_seeds_b` runs (default
    n_seeds) with `seed_sd_b` (default seed_sd; 0 and one run: the untrained base). Returns ya, yb:
    (S, P) Pass@k."""
    from dlm_bench.stats.metrics import pass_at_k
    logit = scipy.special.logit(np.clip(rng.beta(a, b, size=n_problems), 1e-12, 1 - 1e-12))
    out = []
    for s, runs, sd in ((shift, n_seeds, seed_sd), (0.0, n_seeds_b or n_seeds,
                                                    seed_sd if seed_sd_b is None else seed_sd_b)):
        u = rng.normal(0, sd, size=(runs, 1))
        c = rng.binomial(n, scipy.special.expit(logit[None, :] + u + s))
        out.append(pass_at_k(np.full(c.size, n), c.ravel(), k).reshape(c.shape))
    return out[0], out[1]


def null_study(n_studies, n_problems, n_seeds, n, k, seed_sd=0.6, shift=0.0, seed=0,
               confidence=0.95, untrained_b=False):
    """Coverage of 0 by the seed-level interval and by the problem-level interval on seed-averaged
    values, and the seed-level test's rejection rate: with shift = 0 the coverages are true
    coverages and the rate is the false-positive rate; with shift != 0 the rate is the power.
    `untrained_b`: B is one run without retraining variance (the base), compared with `fixed_b`."""
    from dlm_bench.stats.metrics import paired_ci
    rng = np.random.default_rng(seed)
    hier = prob = rej = 0
    b_runs = dict(n_seeds_b=1, seed_sd_b=0.0) if untrained_b else {}
    for i in range(n_studies):
        ya, yb = simulate_seeds(rng, n_problems, n_seeds, n, k, seed_sd, shift, **b_runs)
        r = seed_compare(ya, yb, confidence, 2000, seed=[seed, i], fixed_b=untrained_b)
        hier += r.ci_low <= 0 <= r.ci_high
        pc = paired_ci(ya.mean(axis=0), yb.mean(axis=0), confidence)
        prob += pc.low <= 0 <= pc.high
        rej += r.p_seed < 1 - confidence
    return hier / n_studies, prob / n_studies, rej / n_studies


def seed_table(df, method_a, method_b, k, cells=("task", "gen_length", "temperature"),
               confidence=0.95, seed=0) -> pd.DataFrame:
    """`seed_compare` per cell at `k`, on the problems every seed of both methods has."""
    from dlm_bench.stats.metrics import cell_rng, counts_table, pass_at_k
    cells = list(cells)
    counts = counts_table(df, ["method", "train_seed"] + cells)
    rows = []
    for key, grp in counts[counts["method"].isin([method_a, method_b])].groupby(cells, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        wide = grp.assign(v=pass_at_k(grp["n"].to_numpy(), grp["c"].to_numpy(), k)).pivot_table(
            index=["method", "train_seed"], columns="problem_id", values="v").dropna(axis=1)
        have = set(wide.index.get_level_values(0))
        if {method_a, method_b} - have or wide.shape[1] < 2:
            continue
        untrained = {m: list(wide.loc[m].index) == [UNTRAINED] for m in (method_a, method_b)}
        r = seed_compare(wide.loc[method_a].to_numpy(), wide.loc[method_b].to_numpy(), confidence,
                         seed=cell_rng(seed, key, k), fixed_a=untrained[method_a], fixed_b=untrained[method_b])
        sig = bool(r.ci_low > 0 or r.ci_high < 0)
        rows.append(dict(zip(cells, key), k=int(k), method_a=method_a, method_b=method_b,
                         **asdict(r), significant=sig, sig="*" if sig else ""))
    if not rows:
        raise UserError(f"no cell has seed runs of both {method_a!r} and {method_b!r}")
    return pd.DataFrame(rows)


def seed_markdown(table, digits=1) -> str:
    """A `seed_table` as Markdown, with each row's note on what its interval covers."""
    from dlm_bench.stats.metrics import fmt_num, fmt_p, markdown_table
    cells = [c for c in ("task", "gen_length", "temperature") if c in table.columns]
    names = {"task": "Task", "gen_length": "Length", "temperature": "Temp."}
    header = [names[c] for c in cells] + ["Seeds A/B", "Problems", "Diff (pp)", "CI (pp)", "p (seeds)",
                                          "MDE (pp)", "Detectable?"]
    rows = [[str(r[c]) for c in cells] + [
        f"{r['n_seeds_a']}/{r['n_seeds_b']}", str(r["n_problems"]), fmt_num(100 * r["diff"], digits, True),
        f"[{fmt_num(100 * r['ci_low'], digits, True)}, {fmt_num(100 * r['ci_high'], digits, True)}]",
        fmt_p(r["p_seed"]), fmt_num(100 * r["mde"], digits),
        power.verdict(r["significant"], r["diff"], r["mde"], r["power"])] for r in table.to_dict("records")]
    a, b, k = table["method_a"].iloc[0], table["method_b"].iloc[0], table["k"].iloc[0]
    lines = [f"**Pass@{k} across training seeds: {a} (A) vs {b} (B)**", ""]
    lines += markdown_table(header, rows, right=set(range(len(cells), len(header))))
    lines += ["", "CI: diff ± t · SE over training seeds and problems (seeds x problems variance "
              "components); p: method labels permuted over the seed runs. " + POWER_NOTE + " Notes: "
              + "; ".join(sorted(set(table["note"])))]
    return "\n".join(lines)
