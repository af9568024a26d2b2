"""Power of a comparison: the smallest true difference the design detects, given its observed noise.

A comparison's interval is diff ± t_{df, 1-alpha/2} · SE, where the SE comes from the variance the
study actually saw (problem-level: the sd of the per-problem differences over sqrt(problems);
seed-level: the seed x problem variance components, `seed_level`), so it already reflects the
problems x samples x seeds that were used. For a true difference delta, the t statistic is
non-central t with df degrees of freedom and non-centrality delta / SE; the two-sided test rejects
with probability `power_at(delta, se, df)`. The minimum detectable difference (MDE) at power 0.8 is
the delta where that probability reaches 0.8: about 2.8 SE with many degrees of freedom, more with
few (3 seeds: df 2 to 4). `tests/test_power.py` checks, with the coverage simulations of
`intervals` and `seed_level`, that a true difference equal to the MDE is detected about 80% of the time.

An observed difference that is not significant says nothing about a true difference smaller than the
MDE: the design could not have told it from 0.
"""
from __future__ import annotations

import functools
import math

import scipy.optimize
import scipy.stats

ALPHA = 0.05
POWER = 0.8


def power_at(delta: float, se: float, df: float, alpha: float = ALPHA) -> float:
    """Probability that the two-sided t test at level alpha rejects when the true difference is delta."""
    if not (math.isfinite(se) and se > 0 and math.isfinite(delta) and df > 0):
        return math.nan
    crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) / se
    p = float(scipy.stats.nct.sf(crit, df, nc) + scipy.stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(p):        # scipy's nct fails far in the tail, where the normal limit is exact enough
        p = float(scipy.stats.norm.sf(crit - nc) + scipy.stats.norm.cdf(-crit - nc))
    return min(1.0, max(0.0, p))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true difference (same units as se) detected with probability `power` by the two-sided
    t test at level alpha; NaN where the SE is not a positive number."""
    if not (math.isfinite(se) and se > 0 and df > 0):
        return math.nan
    return se * mde_factor(round(float(df), 6), alpha, power)


@functools.lru_cache(maxsize=4096)
def mde_factor(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The MDE in units of the SE: power depends on delta / SE alone (the non-centrality)."""
    guess = scipy.stats.t.ppf(1 - alpha / 2, df) + scipy.stats.t.ppf(power, df)
    return float(scipy.optimize.brentq(lambda d: power_at(d, 1.0, df, alpha) - power, 0.0, 10 * guess))


def verdict(significant: bool, diff: float, mde_value: float, power_value: float) -> str:
    """What a table says about one comparison: '—' where it is significant, else whether the design
    could have detected (with 80% power) a true difference as large as the one observed, and its power
    at that size."""
    if significant:
        return "—"
    if not (math.isfinite(mde_value) and math.isfinite(power_value)):
        return "n/a"
    return f"{'yes' if abs(diff) >= mde_value else 'no'} ({power_value:.0%} power at this size)"
