"""Pass@k and the statistics used to compare post-training methods.

The unit of analysis is the problem: each problem's n samples give one count c of correct ones,
every Pass@k value comes from (n, c), and every resampling (bootstrap, permutation) acts on
problems, never on samples inside a problem (duplicating samples would fake low diversity and
bias Pass@k for k > 1).
"""
from __future__ import annotations

import inspect
import math
import warnings
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.stats

from dlm_bench.errors import UserError
from dlm_bench.stats import N_RESAMPLES, intervals, power
from dlm_bench.stats.passk import pass_at_k

CELL = ("task", "gen_length", "temperature")  # one comparison per cell
BY = ("method",) + CELL
SCORE_COLUMNS = ("problem_id", "sample", "correct")


# --------------------------------------------------------------------------- Pass@k

def mean_se(values) -> tuple[float, float]:
    """Mean over problems and its standard error (sample sd / sqrt(P)); se is NaN for P < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def counts_table(scores_df: pd.DataFrame, by=BY) -> pd.DataFrame:
    """(n, c) per problem and cell from per-sample score rows: columns [*by, problem_id, n, c]."""
    by = list(by)
    missing = [col for col in by + list(SCORE_COLUMNS) if col not in scores_df.columns]
    if missing:
        raise UserError(f"score rows lack column(s) {missing}; have {sorted(scores_df.columns)}")
    if scores_df.empty:
        raise UserError("no score rows to analyse")
    df = scores_df
    keys = by + ["problem_id", "sample"]
    dup = df.duplicated(keys, keep="last")
    if dup.any():  # a re-run appended to the store: the newest row wins, but say so
        warnings.warn(f"{int(dup.sum())} duplicate (cell, problem, sample) rows; keeping the last",
                      stacklevel=2)
        df = df[~dup]
    if "config_hash" in df.columns:
        mixed = df.groupby(by, dropna=False)["config_hash"].nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            cell = dict(zip(by, mixed.index[0] if len(by) > 1 else [mixed.index[0]]))
            raise UserError(f"cell {cell} mixes {int(mixed.iloc[0])} config_hash values; "
                            "filter the scores to one run per cell before comparing")
    # A sample whose grading failed (null) counts as incorrect; astype(bool) alone would make it True.
    correct = df["correct"].astype(object).where(df["correct"].notna(), False).astype(bool)
    g = df.assign(_c=correct.astype(int)).groupby(by + ["problem_id"], dropna=False, sort=True)
    return g["_c"].agg(n="size", c="sum").reset_index()


def per_problem_passk(scores_df: pd.DataFrame, ks=(1, 5, 16), by=BY) -> pd.DataFrame:
    """`counts_table` plus one column `pass@k` per k: the per-problem values every statistic uses."""
    counts = counts_table(scores_df, by)
    ks = [int(k) for k in np.atleast_1d(ks)]
    vals = pass_at_k(counts["n"].to_numpy(), counts["c"].to_numpy(), ks)
    return counts.assign(**{f"pass@{k}": vals[:, j] for j, k in enumerate(ks)})


def passk_table(scores_df: pd.DataFrame, ks=(1, 5, 16), by=BY, ci: float | None = None,
                n_resamples: int = N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Mean Pass@k over problems with its standard error, one row per (cell, k).

    Columns: [*by, k, n_problems, n_samples (smallest per-problem n), pass_at_k, se], plus
    [ci_low, ci_high, ci_method] (`mean_ci` at level `ci`) when `ci` is given; `n_resamples` and
    `seed` are kept for callers but the default interval draws no resamples.
    """
    by = list(by)
    counts = counts_table(scores_df, by)
    ks = [int(k) for k in np.atleast_1d(ks)]
    rows = []
    for key, grp in counts.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        try:
            vals = pass_at_k(grp["n"].to_numpy(), grp["c"].to_numpy(), ks)
        except UserError as e:
            raise UserError(f"{dict(zip(by, key))}: {e}") from None
        for j, k in enumerate(ks):
            mean, se = mean_se(vals[:, j])
            row = dict(zip(by, key), k=k, n_problems=len(grp), n_samples=int(grp["n"].min()),
                       pass_at_k=mean, se=se)
            if ci is not None:
                r = mean_ci(vals[:, j], ci)
                row.update(ci_low=r.low, ci_high=r.high, ci_method=r.method)
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- bootstrap

@dataclass(frozen=True)
class CI:
    low: float
    high: float
    method: str  # "t", "BCa", "percentile" (BCa undefined), or "undefined" (fewer than 2 problems)


def mean_ci(values, confidence: float = 0.95, bounds=(0.0, 1.0)) -> CI:
    """The problem-level CI for a mean of per-problem values: `intervals.DEFAULT` (the t-interval),
    chosen because it covered 93-97% in the coverage simulation where BCa did not (see
    dlm_bench/stats/intervals.py). Clipped to `bounds` (Pass@k lies in [0, 1], a difference in [-1, 1])."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return CI(math.nan, math.nan, "undefined")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = intervals.interval(x[None, :], intervals.DEFAULT, confidence)
    return CI(float(max(lo[0], bounds[0])), float(min(hi[0], bounds[1])), intervals.DEFAULT)


def paired_ci(a_vals, b_vals, confidence: float = 0.95) -> CI:
    """`mean_ci` of the per-problem differences a - b (the same problems, in the same order)."""
    a, b = _paired_arrays(a_vals, b_vals)
    return mean_ci(a - b, confidence, bounds=(-1.0, 1.0))


_RNG_ARG = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def bootstrap_ci(values, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                 rng=None) -> CI:
    """CI for the mean of per-problem values, resampling problems.

    BCa through scipy.stats.bootstrap; where BCa is undefined (constant values such as Pass@16 = 1
    everywhere make the acceleration 0/0 and scipy returns NaN) the percentile interval is used.
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return CI(math.nan, math.nan, "undefined")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(rng)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning, 0/0 in the jackknife
            res = scipy.stats.bootstrap((x,), _mean, n_resamples=n_resamples, vectorized=True,
                                        confidence_level=confidence, method=method,
                                        **{_RNG_ARG: rng})
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return CI(lo, hi, method)
    return CI(math.nan, math.nan, "undefined")


def paired_bootstrap_ci(a_vals, b_vals, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                        rng=None) -> CI:
    """CI for mean(a) - mean(b) resampling the same problem indices for both methods.

    For the mean this equals bootstrapping the per-problem differences, which is what it does.
    """
    a, b = _paired_arrays(a_vals, b_vals)
    return bootstrap_ci(a - b, confidence, n_resamples, rng)


# --------------------------------------------------------------------------- paired tests

def _paired_arrays(a_vals, b_vals):
    a, b = np.asarray(a_vals, dtype=float), np.asarray(b_vals, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-d shapes, got {a.shape} and {b.shape}")
    return a, b


def sign_flip_test(d, n_resamples: int = 20_000, exact_max: int = 16,
                   rng=None) -> tuple[float, str]:
    """Two-sided paired sign-flip permutation test of mean(d) = 0. Returns (p, "exact"|"monte-carlo").

    Under H0 each problem's difference is symmetric about 0, so its sign is a fair coin. Zero
    differences do not move the statistic, so only the m nonzero ones are flipped: all 2^m sign
    patterns when m <= exact_max, else `n_resamples` random ones with p = (1 + hits) / (1 + R),
    which is never 0 and keeps the test valid.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.abs(d) > 1e-12]
    m = d.size
    if m == 0:
        return 1.0, "exact"
    observed = abs(d.sum())  # the sum has the same permutation distribution as the mean (m fixed)
    tol = 1e-9 * max(1.0, np.abs(d).sum())  # equal sums computed in another order must tie
    if m <= exact_max:
        bits = (np.arange(2 ** m)[:, None] >> np.arange(m)[None, :]) & 1
        stats = np.abs((1 - 2 * bits) @ d)
        return float(np.mean(stats >= observed - tol)), "exact"
    rng = np.random.default_rng(rng)
    hits, done, batch = 0, 0, 4096
    while done < n_resamples:
        b = min(batch, n_resamples - done)
        signs = rng.integers(0, 2, size=(b, m), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
        done += b
    return (1 + hits) / (1 + n_resamples), "monte-carlo"


WILCOXON_EXACT_MAX = 50  # non-zero differences up to which the Wilcoxon p-value is exact


def _pratt_exact_p(d) -> float:
    """Exact two-sided Wilcoxon signed-rank p with Pratt zeros: rank |d| with the zeros in (mid-ranks
    for ties), drop the zeros, and count the 2^m equally likely sign patterns of the m non-zero ranks
    by dynamic programming over doubled (integer) ranks."""
    ranks = scipy.stats.rankdata(np.abs(d))
    nz = np.abs(d) > 1e-12
    r2 = np.rint(2 * ranks[nz]).astype(np.int64)  # mid-ranks are multiples of 1/2
    dist = np.zeros(r2.sum() + 1)
    dist[0] = 1.0
    for r in r2:  # distribution of the doubled positive-rank sum
        dist[r:] += dist[:-r].copy()
    dist /= dist.sum()
    t_obs = int(np.rint(2 * ranks[nz & (d > 0)].sum()))
    dev = np.abs(np.arange(dist.size) - r2.sum() / 2)
    return float(min(1.0, dist[dev >= abs(t_obs - r2.sum() / 2) - 1e-9].sum()))


def wilcoxon_p(d, zero_method: str = "pratt") -> float:
    """Wilcoxon signed-rank p-value of per-problem differences (secondary: tests location, not the
    mean). Pratt keeps zero differences in the ranking, which matters at large k where most
    problems tie; all-zero differences give p = 1 instead of scipy's NaN. With Pratt and at most
    WILCOXON_EXACT_MAX non-zero differences the p-value is exact (the normal approximation is
    anti-conservative there: 0.317 where the exact test gives 0.508); otherwise scipy's."""
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return math.nan
    if np.all(np.abs(d) <= 1e-12):
        return 1.0
    if zero_method == "pratt" and int(np.sum(np.abs(d) > 1e-12)) <= WILCOXON_EXACT_MAX:
        return _pratt_exact_p(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample normal-approximation warnings
        try:
            p = float(scipy.stats.wilcoxon(d, zero_method=zero_method).pvalue)
        except ValueError:
            return math.nan
    return p


def standardized_effect(d) -> float:
    """Cohen's d_z = mean(d) / sd(d) of paired differences; 0 when all differences are 0,
    NaN when they are all equal and nonzero (no spread to scale by) or fewer than 2."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd <= 1e-12:
        return 0.0 if abs(d.mean()) <= 1e-12 else math.nan
    return float(d.mean() / sd)


@dataclass(frozen=True)
class PairedResult:
    n_problems: int
    mean_a: float
    mean_b: float
    diff: float          # mean(a) - mean(b)
    ci_low: float
    ci_high: float
    ci_method: str
    d_z: float
    p_perm: float
    perm_method: str
    p_wilcoxon: float
    mde: float = math.nan       # minimum detectable difference (power.POWER, alpha 1 - confidence)
    power: float = math.nan     # power of the design at a true difference of |diff|


def paired_compare(a_vals, b_vals, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                   n_permutations: int = 20_000, exact_max: int = 16,
                   zero_method: str = "pratt", seed=0) -> PairedResult:
    """Compare two methods' per-problem values on the same problems (same order in both arrays).

    Primary test: paired sign-flip permutation test on the mean difference (its statistic is a
    monotone function of the paired t statistic, so it agrees with the t-interval's verdict up to
    Monte-Carlo error, checked in tests/test_intervals.py). Secondary: Wilcoxon signed-rank.
    Effect: mean difference with `paired_ci`, and d_z. `n_resamples` is unused by the default CI.
    """
    a, b = _paired_arrays(a_vals, b_vals)
    d = a - b
    rng = np.random.default_rng(seed)
    ci = paired_ci(a, b, confidence)
    p_perm, perm_method = sign_flip_test(d, n_permutations, exact_max, rng)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    return PairedResult(
        n_problems=int(d.size), mean_a=float(a.mean()) if a.size else math.nan,
        mean_b=float(b.mean()) if b.size else math.nan,
        diff=float(d.mean()) if d.size else math.nan, ci_low=ci.low, ci_high=ci.high,
        ci_method=ci.method, d_z=standardized_effect(d), p_perm=p_perm, perm_method=perm_method,
        p_wilcoxon=wilcoxon_p(d, zero_method), mde=power.mde(se, d.size - 1, 1 - confidence),
        power=power.power_at(float(d.mean()) if d.size else math.nan, se, d.size - 1, 1 - confidence))


def bh_adjust(pvals) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values). NaN entries stay NaN and do not count."""
    p = np.asarray(pvals, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    raw = p[order] * m / np.arange(1, m + 1)
    # step-up: each q is the smallest raw value at its rank or above
    q[order] = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    return q


# --------------------------------------------------------------------------- comparison table

def cell_tag(key) -> str:
    """A cell key as text that does not depend on dtypes (np.float64(0.6) and 0.6 agree)."""
    return "|".join(str(x.item() if hasattr(x, "item") else x) for x in key)


def cell_rng(seed, key, *extra) -> np.random.Generator:
    """A generator fixed by (seed, cell), so adding or dropping cells never changes another's."""
    tag = zlib.crc32(cell_tag(tuple(key) + extra).encode())
    return np.random.default_rng([int(seed), tag])


def _stars(q: float, alpha: float) -> str:
    if not math.isfinite(q) or q >= alpha:
        return ""
    return "***" if q < 0.001 else "**" if q < 0.01 else "*"


def compare_table(scores_df: pd.DataFrame, method_a: str, method_b: str, k: int, cells=CELL,
                  confidence: float = 0.95, alpha: float = 0.05, n_resamples: int = N_RESAMPLES,
                  n_permutations: int = 20_000, zero_method: str = "pratt",
                  seed: int = 0) -> pd.DataFrame:
    """Method A vs B at the primary `k`, one row per cell, on the problems both methods have.

    diff = Pass@k(A) - Pass@k(B); BH adjusts the permutation p-values across all cells of the
    table (the family is stated in `attrs`). `sig` marks q < alpha (*), 0.01 (**), 0.001 (***).
    """
    cells = list(cells)
    if method_a == method_b:
        raise UserError("method_a and method_b are the same method")
    counts = counts_table(scores_df, ["method"] + cells)
    have = sorted(map(str, counts["method"].unique()))
    for m in (method_a, method_b):
        if m not in set(counts["method"]):
            raise UserError(f"method {m!r} not in the scores; have {have}")
    rows = []
    sub = counts[counts["method"].isin([method_a, method_b])]
    for key, grp in sub.groupby(cells, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ga = grp[grp["method"] == method_a].set_index("problem_id")
        gb = grp[grp["method"] == method_b].set_index("problem_id")
        if ga.empty or gb.empty:
            continue  # the other method was not run in this cell: nothing to pair
        common = ga.index.intersection(gb.index).sort_values()
        if common.empty:
            continue
        try:
            a = pass_at_k(ga.loc[common, "n"].to_numpy(), ga.loc[common, "c"].to_numpy(), k)
            b = pass_at_k(gb.loc[common, "n"].to_numpy(), gb.loc[common, "c"].to_numpy(), k)
        except UserError as e:
            raise UserError(f"{dict(zip(cells, key))}: {e}") from None
        res = paired_compare(a, b, confidence, n_resamples, n_permutations,
                             zero_method=zero_method, seed=cell_rng(seed, key, k))
        unpaired = len(ga.index.union(gb.index)) - len(common)
        rows.append(dict(zip(cells, key), k=int(k), method_a=method_a, method_b=method_b,
                         n_problems=res.n_problems, n_unpaired=unpaired,
                         pass_a=res.mean_a, pass_b=res.mean_b, diff=res.diff,
                         ci_low=res.ci_low, ci_high=res.ci_high, ci_method=res.ci_method,
                         d_z=res.d_z, p_perm=res.p_perm, perm_method=res.perm_method,
                         p_wilcoxon=res.p_wilcoxon, mde=res.mde, power=res.power))
    if not rows:
        raise UserError(f"no cell has problems scored for both {method_a!r} and {method_b!r}")
    table = pd.DataFrame(rows)
    table["q_bh"] = bh_adjust(table["p_perm"].to_numpy())
    table["sig"] = [_stars(q, alpha) for q in table["q_bh"]]
    table.attrs.update(primary_k=int(k), method_a=method_a, method_b=method_b, cells=cells,
                       confidence=confidence, alpha=alpha, zero_method=zero_method,
                       n_comparisons=len(table))
    return table


# --------------------------------------------------------------------------- Markdown

def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_num(x: float, digits: int, sign: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else ":---" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in [header, align] + rows]


def compare_markdown(table: pd.DataFrame, digits: int = 1) -> str:
    """Render a `compare_table` as Markdown: Pass@k in %, diff in percentage points, and a
    caption stating k, the direction of diff, the CI, the tests and the BH family."""
    at = table.attrs
    k = at.get("primary_k", int(table["k"].iloc[0]))
    a = at.get("method_a", table["method_a"].iloc[0])
    b = at.get("method_b", table["method_b"].iloc[0])
    conf = at.get("confidence", 0.95)
    alpha = at.get("alpha", 0.05)
    cells = [c for c in at.get("cells", CELL) if c in table.columns]
    names = {"task": "Task", "gen_length": "Length", "temperature": "Temp."}
    header = [names.get(c, c) for c in cells] + [
        "Problems", f"{a} Pass@{k} (%)", f"{b} Pass@{k} (%)", "Diff (pp)",
        f"{conf:.0%} CI (pp)", "d_z", "p perm.", "p Wilcoxon", "q (BH)", "Sig.", "MDE (pp)", "Detectable?"]
    rows = []
    for r in table.itertuples(index=False):
        rd = r._asdict()
        ci = f"[{fmt_num(100 * rd['ci_low'], digits, True)}, {fmt_num(100 * rd['ci_high'], digits, True)}]"
        if rd["ci_method"] == "percentile":
            ci += "†"
        n = str(rd["n_problems"]) + (f" ({rd['n_unpaired']} unpaired)" if rd["n_unpaired"] else "")
        rows.append([str(rd[c]) for c in cells] + [
            n, fmt_num(100 * rd["pass_a"], digits), fmt_num(100 * rd["pass_b"], digits),
            fmt_num(100 * rd["diff"], digits, True), ci, fmt_num(rd["d_z"], 2, True),
            fmt_p(rd["p_perm"]), fmt_p(rd["p_wilcoxon"]), fmt_p(rd["q_bh"]), rd["sig"],
            fmt_num(100 * rd["mde"], digits), power.verdict(bool(rd["sig"]), rd["diff"], rd["mde"], rd["power"])])
    first = len(cells)
    lines = [f"**Pass@{k} (primary k = {k}): {a} (A) vs {b} (B)**", ""]
    lines += markdown_table(header, rows, right=set(range(first, len(header) - 3)) | {len(header) - 2})
    zm = at.get("zero_method", "pratt")
    lines += ["",
              f"Diff = A − B in percentage points, per problem then averaged; problems only one "
              f"method has are left out (\"unpaired\"). CI: {conf:.0%} paired t-interval over "
              f"problems (chosen by a coverage simulation; BCa under-covered). p perm.: two-sided paired sign-flip "
              f"permutation test on the mean difference (primary; exact when few problems "
              f"differ). p Wilcoxon: signed-rank test ({zm} zero handling, secondary). q: "
              f"Benjamini–Hochberg over the {len(table)} cells shown; * q < {alpha:g}, "
              f"** q < 0.01, *** q < 0.001. d_z: mean difference / sd of differences. MDE: the true "
              f"difference this design (its problems x samples and the variance it observed) detects with "
              f"{power.POWER:.0%} power at alpha {1 - conf:.2g} (stats/power.py); Detectable?: for a difference "
              f"without a star, whether a true difference of the observed size was detectable, and the power "
              f"at that size."]
    return "\n".join(lines)


def passk_markdown(table: pd.DataFrame, k: int, digits: int = 1) -> str:
    """Render the rows of a `passk_table` at one k as Markdown: Pass@k (%) ± standard error."""
    t = table[table["k"] == k]
    if t.empty:
        raise UserError(f"the table has no rows for k={k}; it has k in {sorted(table['k'].unique())}")
    cells = [c for c in t.columns if c not in
             ("k", "n_problems", "n_samples", "pass_at_k", "se", "ci_low", "ci_high", "ci_method")]
    names = {"method": "Method", "task": "Task", "gen_length": "Length", "temperature": "Temp."}
    header = [names.get(c, c) for c in cells] + ["Problems", "n", f"Pass@{k} (%) ± SE"]
    rows = [[str(r[c]) for c in cells] + [
        str(r["n_problems"]), str(r["n_samples"]),
        f"{fmt_num(100 * r['pass_at_k'], digits)} ± {fmt_num(100 * r['se'], digits)}"]
        for r in t.to_dict("records")]
    lines = markdown_table(header, rows, right=set(range(len(cells), len(header))))
    lines += ["", f"Mean over problems of the unbiased Pass@{k} from n samples per problem; "
                  "SE = sd across problems / sqrt(problems)."]
    return "\n".join(lines)


def as_records(result: PairedResult) -> dict:
    """A PairedResult as a plain dict (for JSON or a DataFrame row)."""
    return asdict(result)
