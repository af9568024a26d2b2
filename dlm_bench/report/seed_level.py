"""The report's training-seed pieces (runs laid out as RUNS/METHOD/seed-K/, dlm_bench.stats.seed_level).

`seed_summary` is the headline table of differences of seed means from base with seed-level
intervals and MDEs. `seed_section` is "Per training seed": figure `fig_seeds` shows, per task × length
at the single-temperature T, each seed's Pass@k curve thin, the mean over seeds thick, and the
problem-level (sampling-only) CI of that mean as a band, so the between-seed spread sits next to the
interval that ignores it; a table gives each seed's Pass@k, and one the offline diversity of correct
answers per seed (the quantity trajectory locking is about: how many distinct solutions a model still
finds).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dlm_bench.stats import metrics

from dlm_bench.stats import seed_level as seeds
from dlm_bench.errors import UserError
from dlm_bench.report.common import SEED, Report, save_figure, temp_text


def _seed_curves(counts: pd.DataFrame, ks: list[int]) -> dict:
    """{method: (per-seed curves (S, K), sampling CI of the seed mean (K, 2))} on shared problems."""
    out = {}
    for m, g in counts.groupby("method", sort=True):
        wide_n = g.pivot_table(index="train_seed", columns="problem_id", values="n").dropna(axis=1)
        wide_c = g.pivot_table(index="train_seed", columns="problem_id", values="c")[wide_n.columns]
        if wide_n.shape[1] < 2 or int(wide_n.to_numpy().min()) < max(ks):
            continue
        n, c = wide_n.to_numpy().astype(int), wide_c.to_numpy().astype(int)
        v = metrics.pass_at_k(n.ravel(), c.ravel(), ks).reshape(n.shape + (len(ks),))  # (S, P, K)
        ci = [metrics.mean_ci(v[:, :, j].mean(axis=0)) for j in range(len(ks))]
        out[m] = (v.mean(axis=1), np.array([[r.low, r.high] for r in ci]))
    return out


def _figure(rep: Report, counts: pd.DataFrame, methods: list[str], t_star: float) -> None:
    from dlm_bench.report.style import figure_legend, fit_y, grid, method_color
    at = counts[np.isclose(counts["temperature"].astype(float), t_star)]
    cells = sorted(at[["task", "gen_length"]].drop_duplicates().itertuples(index=False, name=None))
    if not cells:
        return rep.skip("Training-seed figure", f"no seed runs at T = {temp_text(t_star)}")
    kmax = int(at["n"].min())
    ks = list(range(1, kmax + 1))
    fig, axes = grid(len(cells))
    for ax, (task, length) in zip(axes, cells):
        cur = _seed_curves(at[(at["task"] == task) & (at["gen_length"] == length)], ks)
        for m in [m for m in methods if m in cur]:
            curves, ci = cur[m]
            for row in curves:
                ax.plot(ks, 100 * row, lw=0.7, alpha=0.6, color=method_color(m))
            ax.plot(ks, 100 * curves.mean(axis=0), lw=2.2, color=method_color(m), label=m)
            ax.fill_between(ks, 100 * ci[:, 0], 100 * ci[:, 1], color=method_color(m), alpha=0.15, lw=0)
        ax.set_title(f"{task}, length {length}")
        ax.set_xlabel("k")
    note = fit_y(axes, "Pass@k (%)")
    figure_legend(fig, axes, order=methods)
    save_figure(rep, fig, "fig_seeds",
          f"Pass@k vs k at T = {temp_text(t_star)}: each training seed thin, the mean over seeds thick, the "
          f"band the {rep.cfg.confidence:.0%} problem-level CI of that mean (sampling variance only: "
          "compare it with the thin lines' spread)." + (f" {note}." if note else ""))


def diversity_across_seeds(seeded: pd.DataFrame) -> pd.DataFrame:
    """Per method and cell: the mean over training seeds of each seed's mean distinct correct
    solutions per solved problem (`diversity.diversity_table`: canonical expression trees on
    expression tasks, else normalised answers), with its min and max over seeds, and the mean solved
    share."""
    from dlm_bench.stats.diversity import diversity_table
    per = diversity_table(seeded, by=("method", "train_seed", *metrics.CELL))
    measure = "distinct_trees" if per["distinct_trees"].notna().any() else "distinct_answers"
    rows = []
    for key, g in per.groupby(["method", *metrics.CELL], sort=True):
        v = g[measure].dropna()
        rows.append(dict(zip(["method", *metrics.CELL], key), measure=measure, n_seeds=len(g),
                         mean=float(v.mean()) if len(v) else np.nan, low=float(v.min()) if len(v) else np.nan,
                         high=float(v.max()) if len(v) else np.nan,
                         solved=float((g["n_solved"] / g["n_problems"]).mean())))
    return pd.DataFrame(rows)


def _diversity(rep: Report, seeded: pd.DataFrame, methods: list[str]) -> None:
    from dlm_bench.stats.metrics import markdown_table
    try:
        table = diversity_across_seeds(seeded)
    except (UserError, KeyError) as e:
        return rep.skip("Diversity across seeds", str(e))
    what = "expression trees" if table["measure"].iloc[0] == "distinct_trees" else "answers"
    rows = [[r["method"], str(r["task"]), str(r["gen_length"]), temp_text(r["temperature"]), str(r["n_seeds"]),
             f"{r['mean']:.2f}", f"{r['low']:.2f}–{r['high']:.2f}", f"{100 * r['solved']:.0f}%"]
            for m in methods for r in table[table["method"] == m].to_dict("records")]
    rep.add(f"**Distinct correct {what} per solved problem, across training seeds** (each seed's mean over "
            "its solved problems; mean and range over seeds; solved: share of problems with a correct sample)", "")
    rep.add(*markdown_table(["Method", "Task", "Length", "Temp.", "Seeds", "Mean", "Seed range", "Solved"], rows,
                       right={2, 3, 4, 5, 6, 7}), "")
    table.to_csv(rep.out / "tables" / "diversity_seeds.csv", index=False)


def seed_tables(seeded: pd.DataFrame, methods: list[str], base: str, ks: list[int], seed: int = 0,
                confidence: float = 0.95) -> dict:
    """`seeds.seed_table` of every method vs `base` at each k, by (method, k); the UserError in place
    of a table where a method has no cell with seed runs of both."""
    out = {}
    for m in [m for m in methods if m != base]:
        for k in ks:
            try:
                out[m, k] = seeds.seed_table(seeded, m, base, k, confidence=confidence, seed=seed)
            except UserError as e:
                out[m, k] = e
    return out


def seed_summary(rep: Report, seeded: pd.DataFrame, methods: list[str]) -> None:
    """One compact table: the difference of seed means from base (pp, seed-level interval, MDE) at
    Pass@1, the primary k and Pass@n, per method and cell; * where the interval excludes 0."""
    from dlm_bench.stats.metrics import fmt_num, markdown_table
    cfg = rep.cfg
    ks = sorted({1, cfg.k, int(metrics.counts_table(seeded, ["method", SEED, *metrics.CELL])["n"].min())})
    tables = seed_tables(seeded, methods, cfg.base, ks, cfg.seed, cfg.confidence)
    found = [t for t in tables.values() if isinstance(t, pd.DataFrame)]
    if not found:
        return
    table = pd.concat(found, ignore_index=True)
    table.to_csv(rep.out / "tables" / "seeds_summary.csv", index=False)
    cells = [c for c in ("task", "gen_length", "temperature") if c in table.columns]

    def cell(r) -> str:
        return (f"{fmt_num(100 * r['diff'], 1, True)}{r['sig']} "
                f"[{fmt_num(100 * r['ci_low'], 1, True)}, {fmt_num(100 * r['ci_high'], 1, True)}] "
                f"(MDE {fmt_num(100 * r['mde'], 1)})")

    rows = []
    for m in [m for m in methods if m != cfg.base]:
        sub = table[table["method_a"] == m]
        for key, g in sub.groupby(cells, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            by_k = {int(r["k"]): r for r in g.to_dict("records")}
            first = next(iter(by_k.values()))
            rows.append([m, *[temp_text(v) if c == "temperature" else str(v) for c, v in zip(cells, key)],
                         f"{first['n_seeds_a']}/{first['n_seeds_b']}"]
                        + [cell(by_k[k]) if k in by_k else "n/a" for k in ks])
    names = {"task": "Task", "gen_length": "Length", "temperature": "Temp."}
    header = ["Method", *[names[c] for c in cells], "Seeds"] + [f"Δ Pass@{k} (pp) [CI] (MDE)" for k in ks]
    rep.add(f"**Every method minus {cfg.base}: difference of seed means** ({cfg.confidence:.0%} seed-level "
            "intervals, `dlm_bench.stats.seed_level`; * the interval excludes 0; MDE: the smallest true difference "
            "this design detects with 80% power; the per-method tables below add the seed-permutation p and "
            "whether a difference of the observed size was detectable)", "")
    rep.add(*markdown_table(header, rows, right=set(range(len(cells) + 1, len(header)))), "")


def _per_seed_table(rep: Report, counts: pd.DataFrame, methods: list[str]) -> None:
    """Each training seed's own Pass@1 / Pass@k / Pass@n per cell (problem-level, that seed's run only)."""
    from dlm_bench.stats.metrics import markdown_table
    cfg = rep.cfg
    kmax = int(counts["n"].min())
    ks = sorted({1, min(cfg.k, kmax), kmax})
    rows, csv = [], []
    for (m, task, g, t, sd), grp in counts.groupby(["method", *metrics.CELL, SEED], sort=True):
        v = metrics.pass_at_k(grp["n"].to_numpy(), grp["c"].to_numpy(), ks).mean(axis=0)
        csv.append({"method": m, "task": task, "gen_length": g, "temperature": t, "train_seed": sd,
                    "n_problems": len(grp), **{f"pass@{k}": float(x) for k, x in zip(ks, v)}})
    order = {m: i for i, m in enumerate(methods)}
    for r in sorted(csv, key=lambda r: (order.get(r["method"], 99), r["task"], r["gen_length"], r["temperature"])):
        rows.append([r["method"], "untrained" if r["train_seed"] == seeds.UNTRAINED else str(r["train_seed"]),
                     str(r["task"]), str(r["gen_length"]), temp_text(r["temperature"]), str(r["n_problems"])]
                    + [f"{100 * r[f'pass@{k}']:.1f}" for k in ks])
    rep.add("**Pass@k of each training seed** (each seed's own run; the headline tables above use their mean)", "")
    rep.add(*markdown_table(["Method", "Seed", "Task", "Length", "Temp.", "Problems"]
                            + [f"Pass@{k} (%)" for k in ks], rows, right=set(range(5, 6 + len(ks)))), "")
    pd.DataFrame(csv).to_csv(rep.out / "tables" / "per_seed_passk.csv", index=False)


def seed_section(rep: Report, seeded: pd.DataFrame, methods: list[str], t_star: float) -> None:
    """The section "Per training seed": each seed's Pass@k (figure and table) and diversity per seed."""
    rep.add("## Per training seed", "",
            "The figures and tables above show each method's mean over its training seeds with seed-level "
            "intervals; this section shows every seed on its own.", "")
    counts = metrics.counts_table(seeded, ["method", SEED, *metrics.CELL])
    spread = counts.groupby("method")[SEED].nunique()
    rep.add("Training seeds per method: " + ", ".join(f"{m} {int(spread.get(m, 0))}" for m in methods)
            + " (runs outside every seed-K folder count as one seed).", "")
    _figure(rep, counts, methods, t_star)
    _per_seed_table(rep, counts, methods)
    _diversity(rep, seeded, methods)
