"""The path-diversity judge across training seeds: judge within seed pairs, replicate over pairs.

Each of A's training seeds is paired with B's seed of the same index (K-th seed folder of each,
sorted); a method with one run (the untrained base, train_seed -1) pairs with every seed of the
other. `judge_by_seed` runs `judge_pairs.judge_methods` on each pair's samples only (never mixing
seeds on one side of a request) and tags the rows with the pair. `seed_win_rates` then treats
the seed pairs as the units of replication: per cell, each pair's A-minus-B win-rate difference
(the mean over the cell's problems), a t-interval over those differences and an exact sign-flip
permutation p over the pairs (all 2^S sign assignments), so a retrain that happens to judge
well cannot pass for a method effect the way it does in a bootstrap over pooled problems.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats

from dlm_bench.errors import UserError
from dlm_bench.stats.metrics import CELL, sign_flip_test

EXACT_FLIPS_MAX_PAIRS = 16   # 2^16 sign assignments: exact up to here, Monte-Carlo above
SINGLE = -1                  # train_seed of runs outside every seed folder (runs.index.read_seeded_scores)


# --------------------------------------------------------------------------- pairing

def method_seeds(df: pd.DataFrame, method: str) -> list[int]:
    seeds = sorted(int(s) for s in df.loc[df["method"] == method, "train_seed"].unique())
    if not seeds:
        raise UserError(f"method {method!r} has no stored samples under these filters")
    return seeds


def pair_seeds(seeds_a: list[int], seeds_b: list[int]) -> tuple[list[tuple[int, int]], str | None]:
    """The seed pairs (seed of A, seed of B), and a note when seeds had to be left out."""
    if len(seeds_a) == 1:        # one run (e.g. the base): the fixed side of every pair
        return [(seeds_a[0], s) for s in seeds_b], None
    if len(seeds_b) == 1:
        return [(s, seeds_b[0]) for s in seeds_a], None
    n = min(len(seeds_a), len(seeds_b))
    note = (None if len(seeds_a) == len(seeds_b) else
            f"{len(seeds_a)} training seeds of A and {len(seeds_b)} of B: pairing the first {n} of "
            "each (K-th seed folder with K-th, sorted), the rest left out")
    return list(zip(seeds_a[:n], seeds_b[:n])), note


def pair_label(seed_a: int, seed_b: int) -> str:
    show = lambda s: "*" if s == SINGLE else str(s)  # noqa: E731 - *: the run outside seed folders
    return f"A{show(seed_a)}-B{show(seed_b)}"


def judge_by_seed(df: pd.DataFrame, method_a: str, method_b: str, judge, pairs, **kw) -> pd.DataFrame:
    """`judge_methods` on each seed pair's samples, rows tagged seed_a, seed_b, seed_pair."""
    from dlm_bench.judge.pairs import judge_methods
    frames = []
    for sa, sb in pairs:
        mine = df[((df["method"] == method_a) & (df["train_seed"] == sa))
                  | ((df["method"] == method_b) & (df["train_seed"] == sb))]
        j = judge_methods(mine, method_a, method_b, judge, **kw)
        if not j.empty:
            frames.append(j.assign(seed_a=sa, seed_b=sb, seed_pair=pair_label(sa, sb)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------- seed-level statistics

def seed_level(d, confidence: float = 0.95, alpha: float = 0.05) -> dict:
    """Mean of the per-pair differences d, its t-interval over pairs (df S-1) and sign-flip p."""
    d = np.asarray(d, float)
    s = d.size
    mean = float(d.mean()) if s else math.nan
    if s < 2:
        return dict(diff=mean, ci_low=math.nan, ci_high=math.nan, p_seed=math.nan, p_method="n/a",
                    note="one seed pair: no seed-level interval or test (see the problem-level table)")
    half = scipy.stats.t.ppf(0.5 + confidence / 2, s - 1) * d.std(ddof=1) / math.sqrt(s)
    p, how = sign_flip_test(d, exact_max=EXACT_FLIPS_MAX_PAIRS)   # seed pairs as the units
    if how == "exact":
        floor = 2 / 2 ** s
        note = f"{s} seed pairs: smallest attainable p = 2/2^{s} = {floor:.3g}"
        if floor > alpha:  # the permutation test can never reject: say so rather than print 'n.s.'
            note += f", so no seed-level claim at {alpha:g} is possible"
    else:
        note = f"{s} seed pairs: Monte-Carlo sign flips"
    return dict(diff=mean, ci_low=max(mean - half, -1.0), ci_high=min(mean + half, 1.0), p_seed=p,
                p_method=how, note=note)


def problem_scores(judgments: pd.DataFrame, cells) -> pd.DataFrame:
    """One row per (cells, seed pair, problem) judged ok in every order asked: the shares of its
    verdicts that were A's wins, ties and B's wins (as judge_pairs.per_problem, vectorised). Two
    orders with one win and one loss (the verdict followed the position) count as a tie."""
    keys = list(cells) + ["seed_pair", "problem_id"]
    ok = judgments["status"] == "ok"
    o = judgments["outcome"]
    g = judgments.assign(_ok=ok, _win=ok & (o == "win"), _tie=ok & (o == "tie"),
                         _loss=ok & (o == "loss")).groupby(keys, dropna=False, sort=True)
    agg = g[["_ok", "_win", "_tie", "_loss"]].sum().assign(_n=g.size())
    done = agg[(agg["_ok"] == agg["_n"]) & (agg["_n"] > 0)]  # a failed order drops the problem
    follows = (done["_n"] == 2) & (done["_win"] == 1) & (done["_loss"] == 1)
    return pd.DataFrame({"win": (done["_win"] / done["_n"]).where(~follows, 0.0),
                         "tie": (done["_tie"] / done["_n"]).where(~follows, 1.0),
                         "loss": (done["_loss"] / done["_n"]).where(~follows, 0.0)}).reset_index()


def _pair_rates(probs: pd.DataFrame, keys) -> pd.DataFrame:
    """Per (keys, seed pair): the mean win / tie / loss share over its problems, and their count."""
    g = probs.groupby(list(keys) + ["seed_pair"], sort=True)
    return g[["win", "tie", "loss"]].mean().assign(n=g.size()).reset_index()


def _cell_row(pairs: pd.DataFrame, confidence: float, alpha: float) -> dict:
    d = (pairs["win"] - pairs["loss"]).to_numpy(float)
    return dict(n_pairs=len(d), problems_min=int(pairs["n"].min()), problems_max=int(pairs["n"].max()),
                win=float(pairs["win"].mean()), tie=float(pairs["tie"].mean()),
                loss=float(pairs["loss"].mean()), pair_diffs=dict(zip(pairs["seed_pair"], d.tolist())),
                **seed_level(d, confidence, alpha))


def seed_win_rates(judgments: pd.DataFrame, cells=CELL, confidence: float = 0.95,
                   alpha: float = 0.05) -> pd.DataFrame:
    """Per cell (and over all cells, the last row, when there are several), from A's side: the win
    rates of A, of B (`loss`) and ties, each the mean over seed pairs of the pair's share over its
    problems; each pair's A-minus-B difference (`pair_diffs`); their mean with a t-interval and an
    exact sign-flip p over the pairs. Needs a `seed_pair` column (`judge_by_seed`). No rows when
    no problem was judged in every order."""
    if judgments.empty or "seed_pair" not in judgments:
        raise UserError("no seed-pair judgments to tally")
    cells = [c for c in cells if c in judgments.columns]
    probs = problem_scores(judgments, cells)
    rows = []
    for key, grp in ([] if probs.empty else _pair_rates(probs, cells).groupby(cells, sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        rows.append(dict(zip(cells, key), **_cell_row(grp, confidence, alpha)))
    if len(rows) > 1:  # over all cells: each pair's mean over every cell's problems
        rows.append(dict({c: "all" for c in cells}, **_cell_row(_pair_rates(probs, []), confidence, alpha)))
    table = pd.DataFrame(rows)  # empty when no problem was judged in every order (judge down)
    table.attrs.update(method_a=judgments["method_a"].iloc[0], method_b=judgments["method_b"].iloc[0],
                       confidence=confidence,
                       single_a=bool((judgments["seed_a"] == SINGLE).all()) if "seed_a" in judgments else False,
                       single_b=bool((judgments["seed_b"] == SINGLE).all()) if "seed_b" in judgments else False)
    return table


def _pp(v: float, digits: int) -> str:
    return f"{100 * v:+.{digits}f}" if math.isfinite(v) else "n/a"


def seed_win_rates_markdown(table: pd.DataFrame, digits: int = 0) -> str:
    """A `seed_win_rates` table as Markdown (rates in %, differences in percentage points)."""
    from dlm_bench.stats.metrics import fmt_p, markdown_table
    at = table.attrs
    title = f"**Path diversity across training seeds: {at.get('method_a')} (A) vs {at.get('method_b')} (B)**"
    if table.empty:
        return f"{title}\n\nNo problem of any seed pair was judged in every order: no seed-level table."
    cells = [c for c in CELL if c in table.columns]
    header = cells + ["Seed pairs", "Problems / pair", "Win A", "Tie", "Win B", "Per pair A − B (pp)",
                      "A − B (pp)", "CI (pp)", "p (seeds)"]
    rows = []
    for r in table.to_dict("records"):
        probs = (str(r["problems_min"]) if r["problems_min"] == r["problems_max"]
                 else f"{r['problems_min']}–{r['problems_max']}")
        ci = (f"[{_pp(r['ci_low'], digits)}, {_pp(r['ci_high'], digits)}]"
              if math.isfinite(r["ci_low"]) else "n/a")
        rows.append([str(r[c]) for c in cells] + [
            str(r["n_pairs"]), probs, f"{100 * r['win']:.{digits}f}", f"{100 * r['tie']:.{digits}f}",
            f"{100 * r['loss']:.{digits}f}",
            ", ".join(f"{k} {_pp(v, digits)}" for k, v in r["pair_diffs"].items()),
            _pp(r["diff"], digits), ci, fmt_p(r["p_seed"])])
    lines = [title, ""]
    lines += markdown_table(header, rows, right=set(range(len(cells), len(header))))
    single = [m for m, s in ((at.get("method_a"), at.get("single_a")), (at.get("method_b"), at.get("single_b"))) if s]
    lines += ["", "Each seed pair (A<seed>-B<seed>; * = the one run outside seed folders) was judged on its "
              "own samples. Win A / Tie / Win B: % of judged problems, mean over seed pairs (a problem whose "
              "two verdicts followed the position counts as a tie); per pair "
              "A − B: win rate of A minus that of B over the cell's problems. CI: "
              f"{at.get('confidence', 0.95):.0%} t-interval over the seed pairs' differences; p: exact "
              "sign-flip permutation over the seed pairs (the units of replication)."
              + (f" {', '.join(single)}: one run, so its retraining variance is not covered." if single else "")
              + " Notes: " + "; ".join(sorted(set(table["note"])))]
    return "\n".join(lines)


def pooled_problems(judgments: pd.DataFrame) -> pd.DataFrame:
    """The judgments with each (seed pair, problem) as its own problem, for the problem-level
    `win_rates` table: the same problem under two seed pairs is two different pairs of sets."""
    return judgments.assign(problem_id=judgments["seed_pair"] + "/" + judgments["problem_id"].astype(str))
