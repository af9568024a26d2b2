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

EXACT_SPLITS_MAX = 20_000  # label splits up to which the seed-level permutation test is exact
SAMPLING_ONLY = "one seed per method: the interval covers sampling variance only, not retraining"


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


def variance_components_se(ya, yb) -> float:
    """SE of mean(A) - mean(B) from the crossed seed x problem layout, by method of moments:
    the pooled variance of the seed means (retraining plus sampling noise) times 1/S_A + 1/S_B,
    plus the method x problem interaction left in the per-problem differences once their residual
    (seed x problem) noise is taken out. Resampling seeds and problems both would count that
    residual twice (it over-covered, 99% at Pass@16 in `null_study`)."""
    sa, sb, p = ya.shape[0], yb.shape[0], ya.shape[1]
    df = sa + sb - 2
    ma, mb = ya.mean(axis=1), yb.mean(axis=1)
    v_seed = (((ma - ma.mean()) ** 2).sum() + ((mb - mb.mean()) ** 2).sum()) / df
    resid = 0.0
    for y in (ya, yb):
        r = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        resid += (r ** 2).sum()
    sigma_e2 = resid / (df * (p - 1))
    d = ya.mean(axis=0) - yb.mean(axis=0)
    inter = max(0.0, d.var(ddof=1) - sigma_e2 * (1 / sa + 1 / sb)) / p
    return math.sqrt(v_seed * (1 / sa + 1 / sb) + inter)


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


def seed_compare(ya, yb, confidence=0.95, n_permutations=20_000, seed=0) -> SeedResult:
    """Method A vs B from per-seed, per-problem values ya (S_A, P) and yb (S_B, P)."""
    from dlm_bench.stats.metrics import paired_ci  # metrics is the problem-level layer
    ya, yb = np.atleast_2d(np.asarray(ya, float)), np.atleast_2d(np.asarray(yb, float))
    if ya.shape[1] != yb.shape[1]:
        raise ValueError(f"A and B need the same problems, got {ya.shape[1]} and {yb.shape[1]}")
    sa, sb, p = ya.shape[0], yb.shape[0], ya.shape[1]
    diff = float(ya.mean() - yb.mean())
    if sa == 1 and sb == 1:
        ci = paired_ci(ya[0], yb[0], confidence)
        return SeedResult(1, 1, p, diff, ci.low, ci.high, ci.method, math.nan, "n/a", SAMPLING_ONLY)
    rng = np.random.default_rng(seed)
    se = variance_components_se(ya, yb)
    half = scipy.stats.t.ppf(0.5 + confidence / 2, max(sa + sb - 2, 1)) * se
    pv, how = seed_permutation_p(ya.mean(axis=1), yb.mean(axis=1), n_permutations, rng)
    # a split and its mirror image give the same |difference| only when the groups have equal sizes
    floor = (2 if sa == sb else 1) / math.comb(sa + sb, sa) if how == "exact" else math.nan
    note = (f"{sa} vs {sb} training seeds: interval over seeds and problems; seed-level exact "
            f"permutation test, smallest attainable p = {floor:.3g}" if how == "exact" else
            f"{sa} vs {sb} training seeds: interval over seeds and problems; Monte-Carlo seed permutation")
    return SeedResult(sa, sb, p, diff, max(diff - half, -1.0), min(diff + half, 1.0),
                      "seeds+problems t", pv, how, note)


# --------------------------------------------------------------------------- simulation

def simulate_seeds(rng, n_problems, n_seeds, n, k, seed_sd=0.6, shift=0.0, a=0.6, b=1.2):
    """One study: problem difficulty q ~ Beta(a, b); each (method, seed) run moves every problem's
    logit by its own N(0, seed_sd) (a retrain); A also by `shift`. Returns ya, yb: (S, P) Pass@k."""
    from dlm_bench.stats.metrics import pass_at_k
    logit = scipy.special.logit(np.clip(rng.beta(a, b, size=n_problems), 1e-12, 1 - 1e-12))
    out = []
    for s in (shift, 0.0):
        u = rng.normal(0, seed_sd, size=(n_seeds, 1))
        c = rng.binomial(n, scipy.special.expit(logit[None, :] + u + s))
        out.append(pass_at_k(np.full(c.size, n), c.ravel(), k).reshape(c.shape))
    return out[0], out[1]


def null_study(n_studies, n_problems, n_seeds, n, k, seed_sd=0.6, shift=0.0, seed=0,
               confidence=0.95):
    """Coverage of 0 by the seed-level interval and by the problem-level interval on seed-averaged
    values, and the seed-level test's rejection rate: with shift = 0 the coverages are true
    coverages and the rate is the false-positive rate; with shift != 0 the rate is the power."""
    from dlm_bench.stats.metrics import paired_ci
    rng = np.random.default_rng(seed)
    hier = prob = rej = 0
    for i in range(n_studies):
        ya, yb = simulate_seeds(rng, n_problems, n_seeds, n, k, seed_sd, shift)
        r = seed_compare(ya, yb, confidence, 2000, seed=[seed, i])
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
        r = seed_compare(wide.loc[method_a].to_numpy(), wide.loc[method_b].to_numpy(), confidence,
                         seed=cell_rng(seed, key, k))
        rows.append(dict(zip(cells, key), k=int(k), method_a=method_a, method_b=method_b,
                         **asdict(r)))
    if not rows:
        raise UserError(f"no cell has seed runs of both {method_a!r} and {method_b!r}")
    return pd.DataFrame(rows)


def seed_markdown(table, digits=1) -> str:
    """A `seed_table` as Markdown, with each row's note on what its interval covers."""
    from dlm_bench.stats.metrics import fmt_num, fmt_p, markdown_table
    cells = [c for c in ("task", "gen_length", "temperature") if c in table.columns]
    names = {"task": "Task", "gen_length": "Length", "temperature": "Temp."}
    header = [names[c] for c in cells] + ["Seeds A/B", "Problems", "Diff (pp)", "CI (pp)", "p (seeds)"]
    rows = [[str(r[c]) for c in cells] + [
        f"{r['n_seeds_a']}/{r['n_seeds_b']}", str(r["n_problems"]), fmt_num(100 * r["diff"], digits, True),
        f"[{fmt_num(100 * r['ci_low'], digits, True)}, {fmt_num(100 * r['ci_high'], digits, True)}]",
        fmt_p(r["p_seed"])] for r in table.to_dict("records")]
    a, b, k = table["method_a"].iloc[0], table["method_b"].iloc[0], table["k"].iloc[0]
    lines = [f"**Pass@{k} across training seeds: {a} (A) vs {b} (B)**", ""]
    lines += markdown_table(header, rows, right=set(range(len(cells), len(header))))
    lines += ["", "CI: diff ± t · SE over training seeds and problems (seeds x problems variance "
              "components); p: method labels permuted over the seed runs. Notes: "
              + "; ".join(sorted(set(table["note"])))]
    return "\n".join(lines)
