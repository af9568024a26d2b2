"""The TraFL figures and a Markdown report, from stored score records only.

`build_report(cfg)` reads every run directory under `cfg.runs` (dlm_bench.runs.store) and writes to `cfg.out`
(`render(cfg)` does the same and returns the report with its figures, for tests):

- Fig 1a `fig1a_passk_vs_k`: each method's Pass@k vs k, one line style per temperature;
- Fig 1b `fig1b_gap_to_base`: Pass@k(method) − Pass@k(base) vs k per temperature, with its MDE;
- Fig 1c `fig1c_all_methods`: every method at T = 0.6 (or the stored temperature closest to it),
  k = 1..n, one panel per task × length;
- Fig 2 `fig2_passk_task_length`: Pass@5 per task × length as points with error bars; the table adds
  ± SE, mean NFE and completion length;
- Fig 3 `fig3a_minerva_transfer` (methods labelled `name@gsm8k` / `name@math` on a Minerva task) and
  `fig3b_livecodebench_difficulty` (LiveCodeBench by difficulty), when the data is there;
- matched decoding (report.matched, with `cfg.matched_runs`): each model also under the decoder it
  was trained with, beside the protocol's, against the base under the same decoder;
- training reward (report.training): reward minus the base model's reward on the same prompts;
- the comparison of every method vs base at the primary k, with its minimum detectable difference
  (stats.power), and the offline diversity table, plus `tables/*.csv` with the same numbers unrounded.

Training seeds (runs laid out as RUNS/METHOD/seed-K/): every number above is the mean over a
method's seeds and every band, error bar and interval the seed-level one (stats.seed_level: over
seeds and problems; against the one untrained base run, that run's sampling variance); each seed's own
numbers are in the section "Per training seed" (report.seed_level). With one run per method the
intervals are t-intervals over problems, the interval the coverage simulation chose
(docs/statistics.md), and every caption says that they cover sampling variance only.

Every figure follows dlm_bench.report.style (fixed colour per method, shared y-axes, one legend from
all series). Nothing is invented: a cell without records is "n/a" in tables and figures, and a
figure without data is skipped with a line in the report saying why.

Pooling: curves that span tasks and lengths (Fig 1a, 1b) average over the (task, length, problem)
units that every method has at every temperature (report_common.common_units), so no method's
curve includes a task another method was not run on; the report names the cells kept and dropped.
Tasks then weigh by their problem counts.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dlm_bench.stats import metrics
from dlm_bench.stats import seed_level as seeds
from dlm_bench.stats.power import verdict
from dlm_bench.errors import UserError
from dlm_bench.report.common import (cell_stats, passk_curve, is_minerva, lcb_base, num_text, numeric_cost, pct_text,
    Report, report_rng, save_figure, temp_text, closest_temperature, common_units, md_table, order_methods, ReportConfig,
    SEED, interval_text, paired_matrices, untrained)
from dlm_bench.report.matched import matched_section
from dlm_bench.report.seed_level import seed_section, seed_summary
from dlm_bench.report.style import dot_panel, figure_legend, fit_y, grid, LINESTYLES, MARKERS, method_color
from dlm_bench.report.training import training_section
from dlm_bench.report.transfer import figure_3a, figure_3b


# --------------------------------------------------------------------------- sections

def _fig1a(rep: Report, counts: pd.DataFrame, methods: list[str], pooled: str) -> None:
    cfg = rep.cfg
    rep.add("## Figure 1a: Pass@k vs k per temperature", "")
    temps = sorted(counts["temperature"].unique())
    fig, axes = grid(len(methods), max_cols=4)
    rows, csv = [], []
    for ax, m in zip(axes, methods):
        sub = counts[counts["method"] == m]
        for i, t in enumerate(temps):
            cell = sub[np.isclose(sub["temperature"], t)]
            if cell.empty:
                continue
            cur = passk_curve(cell, cfg)
            ls, mk = LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
            ax.plot(cur["k"], 100 * cur["pass_at_k"], ls=ls, marker=mk, ms=4, color=method_color(m))
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.12, lw=0)
            n = int(cur["k"].max())
            at = cur.set_index("k")["pass_at_k"]
            cells = cell[["task", "gen_length"]].drop_duplicates()
            rows.append([m, temp_text(t), str(len(cells)), str(int(cur["n_units"].iloc[0])),
                         str(int(cur["n_seeds"].iloc[0])), str(n), pct_text(at.get(1)),
                         pct_text(at.get(cfg.k)) if cfg.k <= n else "n/a", pct_text(at.get(n))])
            csv.append(cur.assign(method=m, temperature=t))
        ax.set_title(m, color=method_color(m))
        ax.set_xlabel("k")
        ax.xaxis.get_major_locator().set_params(integer=True)
    note = fit_y(axes, "Pass@k (%)")
    from matplotlib.lines import Line2D
    figure_legend(fig, axes, title="temperature", handles=[
        Line2D([], [], color="0.2", ls=LINESTYLES[i % len(LINESTYLES)], marker=MARKERS[i % len(MARKERS)],
               label=f"T = {temp_text(t)}") for i, t in enumerate(temps)])
    save_figure(rep, fig, "fig1a_passk_vs_k",
          f"Mean Pass@k over the (task, length, problem) units {pooled}, per method and temperature "
          f"({interval_text(counts, cfg.confidence)}); k runs to the smallest n among the units; shared "
          f"y-axis" + (f"; {note}." if note else "."))
    rep.add(*md_table(["Method", "Temp.", "Task×length cells", "Problems", "Seeds", "n", "Pass@1 (%)",
                       f"Pass@{cfg.k} (%)", "Pass@n (%)"], rows, right_from=2), "")
    if csv:
        pd.concat(csv).to_csv(rep.out / "tables" / "fig1a_passk_vs_k.csv", index=False)


def _gap_curve(counts: pd.DataFrame, m: str, base: str, t: float, cfg: ReportConfig) -> pd.DataFrame | None:
    """Pass@k(m) - Pass@k(base) at temperature t, k = 1..n, on the units both have: the mean over
    seeds with its interval, MDE and power (`seed_level.seed_compare`); p is the seed-label
    permutation's with training seeds, the paired sign-flip test's with one run each."""
    at = counts[np.isclose(counts["temperature"], t)]
    a, b = at[at["method"] == m], at[at["method"] == base]
    if a.empty or b.empty:
        return None
    ks = list(range(1, int(min(a["n"].min(), b["n"].min())) + 1))
    ya, yb, units, sa, sb = paired_matrices(a, b, ks)
    if len(units) < 2:
        return None
    one = len(sa) == len(sb) == 1
    rows = []
    for j, k in enumerate(ks):
        r = seeds.seed_compare(ya[:, :, j], yb[:, :, j], cfg.confidence, cfg.n_permutations,
                               seed=report_rng(cfg.seed, "1b", m, t, k), fixed_a=untrained(sa), fixed_b=untrained(sb))
        p = metrics.sign_flip_test(ya[0, :, j] - yb[0, :, j], cfg.n_permutations,
                                   rng=report_rng(cfg.seed, "1b-p", m, t))[0] if one else r.p_seed
        sig = _stars(p, cfg.alpha) if one else ("*" if r.ci_low > 0 or r.ci_high < 0 else "")
        rows.append({"method": m, "temperature": t, "k": k, "gap": r.diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "ci_method": r.ci_method, "n_units": len(units), "seeds": f"{len(sa)}/{len(sb)}", "p": p,
                     "sig": sig, "mde": r.mde, "power": r.power})
    return pd.DataFrame(rows)


def _fig1b(rep: Report, counts: pd.DataFrame, methods: list[str], pooled: str) -> None:
    cfg = rep.cfg
    rep.add(f"## Figure 1b: Pass@k gap to `{cfg.base}` vs k", "")
    if cfg.base not in methods:
        rep.skip("Figure 1b", f"no records for the base method {cfg.base!r} (have {methods})")
        return
    others = [m for m in methods if m != cfg.base]
    if not others:
        rep.skip("Figure 1b", f"no method other than {cfg.base!r}")
        return
    temps = sorted(counts["temperature"].unique())
    fig, axes = grid(len(temps))
    rows, csv = [], []
    for ax, t in zip(axes, temps):
        for m in others:
            cur = _gap_curve(counts, m, cfg.base, t, cfg)
            if cur is None:
                continue
            csv.append(cur)
            ax.plot(cur["k"], 100 * cur["gap"], marker="o", ms=4, color=method_color(m), label=m)
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.15, lw=0)
            r = cur[cur["k"] == cfg.k]
            if len(r):
                r = r.iloc[0]
                rows.append([m, temp_text(t), r["seeds"], str(r["n_units"]), pct_text(r["gap"], sign=True),
                             f"[{pct_text(r['ci_low'], sign=True)}, {pct_text(r['ci_high'], sign=True)}]",
                             metrics.fmt_p(r["p"]), r["sig"], pct_text(r["mde"]),
                             verdict(bool(r["sig"]), r["gap"], r["mde"], r["power"])])
            else:
                rows.append([m, temp_text(t), str(cur["seeds"].iloc[0]), str(cur["n_units"].iloc[0]), "n/a", "n/a",
                             "n/a", f"n < {cfg.k}", "n/a", "n/a"])
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(f"T = {temp_text(t)}")
        ax.set_xlabel("k")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fit_y(axes, f"Pass@k − {cfg.base} (pp)", include_zero=True, bounds=None)
    figure_legend(fig, axes, order=methods)
    save_figure(rep, fig, "fig1b_gap_to_base",
          f"Mean per-problem Pass@k difference to {cfg.base} over the (task, length, problem) units "
          f"{pooled} ({interval_text(counts, cfg.confidence)}; against one untrained run the difference counts "
          f"that run's sampling variance only); shared y-axis.")
    rep.add(*md_table(["Method", "Temp.", "Seeds A/B", "Paired units", f"Gap Pass@{cfg.k} (pp)",
                       f"{cfg.confidence:.0%} CI (pp)", "p", "Sig.", "MDE (pp)", "Detectable?"], rows,
                      right_from=2), "",
            f"p: with one run per method, the two-sided paired sign-flip permutation test on the pooled units "
            f"at k = {cfg.k} (unadjusted; * p < {cfg.alpha:g}, ** p < 0.01, *** p < 0.001); with training seeds, "
            f"the seed-label permutation test, whose smallest attainable p is often above {cfg.alpha:g} "
            "(docs/statistics.md), so * marks an interval that excludes 0. " + seeds.POWER_NOTE, "")
    if csv:
        pd.concat(csv).to_csv(rep.out / "tables" / "fig1b_gap_to_base.csv", index=False)


def _methods_on(counts: pd.DataFrame, task, methods: list[str]) -> list[str]:
    """The methods with any record on `task` (at any length or temperature), in report order: a
    method run on a task but missing one of its cells is shown as missing there."""
    have = set(counts.loc[counts["task"] == task, "method"])
    return [m for m in methods if m in have]


def _stars(p: float, alpha: float) -> str:
    if not math.isfinite(p) or p >= alpha:
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*"


def _fig1c(rep: Report, counts: pd.DataFrame, methods: list[str], t_star: float) -> None:
    cfg = rep.cfg
    rep.add(f"## Figure 1c: all methods at T = {temp_text(t_star)}", "")
    at = counts[np.isclose(counts["temperature"], t_star)]
    cells = at[["task", "gen_length"]].drop_duplicates().sort_values(["task", "gen_length"])
    fig, axes = grid(len(cells))
    rows, csv = [], []
    for ax, (task, g) in zip(axes, cells.itertuples(index=False)):
        cell = at[(at["task"] == task) & (at["gen_length"] == g)]
        task_methods = _methods_on(counts, task, methods)
        for m in task_methods:
            sub = cell[cell["method"] == m]
            if sub.empty:
                rows.append([str(task), str(g), m, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"])
                continue
            cur = passk_curve(sub, cfg)
            ax.plot(cur["k"], 100 * cur["pass_at_k"], marker="o", ms=4, color=method_color(m), label=m)
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.12, lw=0)
            n = int(cur["k"].max())
            s = cur.set_index("k")["pass_at_k"]
            rows.append([str(task), str(g), m, str(int(cur["n_units"].iloc[0])), str(int(cur["n_seeds"].iloc[0])),
                         str(n), pct_text(s.get(1)), pct_text(s.get(cfg.k)) if cfg.k <= n else "n/a",
                         pct_text(s.get(n))])
            csv.append(cur.assign(method=m, task=task, gen_length=g, temperature=t_star))
        missing = [m for m in task_methods if cell[cell["method"] == m].empty]
        title = f"{task}, length {g}"
        if missing:
            title += f"\n(no data: {', '.join(missing)})"
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.xaxis.get_major_locator().set_params(integer=True)
    note = fit_y(axes, "Pass@k (%)")
    figure_legend(fig, axes, order=methods)
    where = ("" if math.isclose(t_star, cfg.target_temperature)
             else f" (no records at T = {temp_text(cfg.target_temperature)}; {temp_text(t_star)} is the closest stored)")
    save_figure(rep, fig, "fig1c_all_methods",
          f"Every method's mean Pass@k over problems at T = {temp_text(t_star)}{where}, k = 1..n, one panel "
          f"per task × length ({interval_text(at, cfg.confidence)}; overlapping bands are not a "
          f"separation); shared y-axis" + (f"; {note}." if note else "."))
    rep.add(*md_table(["Task", "Length", "Method", "Problems", "Seeds", "n", "Pass@1 (%)", f"Pass@{cfg.k} (%)",
                       "Pass@n (%)"], rows, right_from=3), "")
    if csv:
        pd.concat(csv).to_csv(rep.out / "tables" / "fig1c_all_methods.csv", index=False)


def _sig_lookup(compares: dict, k: int) -> dict:
    """(method, task, gen_length, temperature) -> (diff, sig) from compare tables at k."""
    out = {}
    for m, table in compares.get(k, {}).items():
        if table is None or m.startswith("_"):
            continue
        for r in table.to_dict("records"):
            out[(m, r["task"], int(r["gen_length"]), round(float(r["temperature"]), 6))] = (r["diff"], r["sig"])
    return out


def _fig2(rep: Report, df: pd.DataFrame, counts: pd.DataFrame, methods: list[str], t_star: float,
          compares: dict) -> pd.DataFrame:
    cfg = rep.cfg
    k = cfg.bar_k
    rep.add(f"## Figure 2: Pass@{k} per task × length (T = {temp_text(t_star)})", "")
    stats = cell_stats(df, counts, k, cfg)
    st = stats[np.isclose(stats["temperature"], t_star)]
    groups = [tuple(x) for x in st[["task", "gen_length"]].drop_duplicates().sort_values(
        ["task", "gen_length"]).itertuples(index=False)]
    sig = _sig_lookup(compares, k)
    values, marks, rows, missing = {}, {}, [], []
    for task, g in groups:
        for m in _methods_on(counts, task, methods):
            r = st[(st["method"] == m) & (st["task"] == task) & (st["gen_length"] == g)]
            if r.empty:
                missing.append(f"{m} on {task} @ {g}")
                rows.append([str(task), str(g), m, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", ""])
                continue
            r = r.iloc[0]
            values[((task, g), m)] = (r["pass_at_k"], r["ci_low"], r["ci_high"])
            d, s = sig.get((m, task, int(g), round(float(t_star), 6)), (math.nan, ""))
            if s:
                marks[((task, g), m)] = s
            cell = (f"{pct_text(r['pass_at_k'])} ± {pct_text(r['se'])}" if math.isfinite(r["pass_at_k"])
                    else f"n/a (n = {r['n_samples']} < {k})")
            ci = (f"[{pct_text(r['ci_low'])}, {pct_text(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else "n/a")
            rows.append([str(task), str(g), m, str(r["n_problems"]), str(r["n_seeds"]), str(r["n_samples"]), cell, ci,
                         num_text(r["mean_nfe"]), num_text(r["mean_length"]),
                         pct_text(d, sign=True) if m != cfg.base else "—", s])
    if not groups:
        rep.skip("Figure 2", f"no records at T = {temp_text(t_star)}")
        return stats
    fig, axes = grid(1, width=max(6.0, 0.5 * len(groups) * max(1, len(methods)) + 2), height=3.8)
    ax = axes[0]
    shown = [m for m in methods if any(m in _methods_on(counts, t, methods) for t, _ in groups)]
    dot_panel(ax, groups, shown, values, marks, labels=[f"{t}\nlength {g}" for t, g in groups])
    ynote = fit_y(axes, f"Pass@{k} (%)")
    figure_legend(fig, axes, order=methods)
    note = f" Missing (no records, shown as n/a): {'; '.join(missing)}." if missing else ""
    absent_tasks = sorted(set(map(str, counts["task"])) - {str(t) for t, _ in groups})
    if absent_tasks:
        note += f" Tasks with no records at T = {temp_text(t_star)} (not shown): {', '.join(absent_tasks)}."
    save_figure(rep, fig, "fig2_passk_task_length",
          f"Pass@{k} at T = {temp_text(t_star)} per task and generation length: mean with its interval "
          f"({interval_text(counts, cfg.confidence, 'error bars')}; the table also gives ± 1 SE)"
          + (f"; {ynote}" if ynote else "") + f". Stars: vs {cfg.base}, from the comparison section at k = {k} "
          f"(one run each: BH-adjusted paired permutation test; training seeds: the seed-level interval "
          f"excludes 0).{note}")
    rep.add(*md_table(["Task", "Length", "Method", "Problems", "Seeds", "n", f"Pass@{k} (%) ± SE",
                       f"{cfg.confidence:.0%} CI (%)", "Mean NFE",
                       "Mean length (tokens)", f"Δ vs {cfg.base} (pp)", "Sig."], rows, right_from=3), "")
    budgets = []
    for task, g in groups:
        nf = st[(st["task"] == task) & (st["gen_length"] == g)]["mean_nfe"].dropna()
        if len(nf) > 1 and nf.min() > 0 and nf.max() / nf.min() > 1.1:
            budgets.append(f"{task} @ {g} (NFE {nf.min():.0f}–{nf.max():.0f})")
    rep.add("Denoising budgets: " + ("comparable (mean NFE within 10%) in every task × length."
                                     if not budgets else "**not comparable** in " + "; ".join(budgets)
                                     + " — read those differences with the budget in mind."), "")
    stats.to_csv(rep.out / "tables" / "fig2_cells.csv", index=False)
    return stats


def _compare_all(df: pd.DataFrame, counts: pd.DataFrame, methods: list[str], cfg: ReportConfig,
                 k: int, seeded: bool) -> dict:
    """Every method vs base at k, on the cells where both have n >= k (the others are listed under
    "_short"): `seed_level.seed_table` with training seeds, else `metrics.compare_table`."""
    out = {"_errors": {}, "_short": {}}
    cells = list(metrics.CELL)
    nmin = counts.groupby(["method"] + cells)["n"].min()
    for m in methods:
        if m == cfg.base:
            continue
        sub = df[df["method"].isin([m, cfg.base])]
        ok = nmin.loc[[m, cfg.base]].reset_index()
        short = ok[ok["n"] < k][cells].drop_duplicates()
        if len(short):
            out["_short"][m] = ["/".join(str(x) for x in r) for r in short.itertuples(index=False)]
            drop = sub.set_index(cells).index.isin(list(map(tuple, short.itertuples(index=False))))
            sub = sub[~drop]
        try:
            if sub.empty:
                raise UserError(f"no cell has n >= {k} samples for both")
            out[m] = seeds.seed_table(sub, m, cfg.base, k, confidence=cfg.confidence, seed=cfg.seed) if seeded \
                else metrics.compare_table(sub, m, cfg.base, k, confidence=cfg.confidence, alpha=cfg.alpha,
                                           n_permutations=cfg.n_permutations, seed=cfg.seed)
        except UserError as e:
            out[m] = None
            out["_errors"][m] = str(e)
    return out


def _comparisons(rep: Report, compares: dict, methods: list[str], seeded: pd.DataFrame | None) -> None:
    cfg = rep.cfg
    rep.add(f"## Paired comparison with `{cfg.base}` (primary k = {cfg.k})", "")
    if cfg.base not in methods:
        rep.skip("Paired comparison", f"no records for the base method {cfg.base!r}")
        return
    if seeded is not None:
        rep.add("Differences of seed means with seed-level intervals (docs/statistics.md); each seed's own "
                "numbers are in the section \"Per training seed\".", "")
        seed_summary(rep, seeded, methods)
    else:
        rep.add(f"Note: {seeds.SAMPLING_ONLY} (runs laid out as RUNS/METHOD/seed-K/ give seed-level intervals).", "")
    tables = compares.get(cfg.k, {})
    errors = tables.get("_errors", {})
    shorts = tables.get("_short", {})
    frames = []
    for m in methods:
        if m == cfg.base:
            continue
        t = tables.get(m)
        if t is None:
            rep.add(f"*{m} vs {cfg.base}: not compared ({errors.get(m, 'no paired cells')}).*", "")
        else:
            rep.add(seeds.seed_markdown(t) if seeded is not None else metrics.compare_markdown(t), "")
            frames.append(t)
        if shorts.get(m):
            rep.add(f"Left out (fewer than k = {cfg.k} samples per problem): {'; '.join(shorts[m])}.", "")
    if frames:
        pd.concat(frames).to_csv(rep.out / "tables" / f"compare_vs_{_safe(cfg.base)}_k{cfg.k}.csv", index=False)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))


def _diversity(rep: Report, df: pd.DataFrame, methods: list[str]) -> None:
    from dlm_bench.stats.diversity import diversity_table, embedding_summary
    from dlm_bench.stats.embeddings import get_embedder
    rep.add("## Diversity of correct solutions (offline)", "")
    try:
        table = diversity_table(df)
    except UserError as e:
        rep.skip("Diversity table", str(e))
        return
    embedder = None
    if "text" in df:
        embedder = get_embedder(rep.cfg.embed_model)
        emb = embedding_summary(df, embedder)
        table = table.merge(emb, on=list(metrics.BY), how="left")
    has_trees = "distinct_trees" in table and table["distinct_trees"].notna().any()
    has_text = "distinct_completions" in table
    header = ["Method", "Task", "Length", "Temp.", "Problems", "Solved", "Distinct answers"]
    header += ["Distinct completions"] if has_text else []
    header += ["Distinct expression trees"] if has_trees else []
    header += ["Vendi score"] if embedder else []
    rank = {m: i for i, m in enumerate(methods)}
    table = table.sort_values(["task", "gen_length", "temperature"]).sort_values(
        "method", key=lambda s: s.map(rank), kind="stable")
    rows = []
    for r in table.to_dict("records"):
        def ms(name):
            return f"{num_text(r[name], 2)} ± {num_text(r[name + '_se'], 2)}" if math.isfinite(r[name]) else "n/a"
        row = [r["method"], str(r["task"]), str(r["gen_length"]), temp_text(r["temperature"]),
               str(r["n_problems"]), str(r["n_solved"]), ms("distinct_answers")]
        row += [ms("distinct_completions")] if has_text else []
        row += [ms("distinct_trees")] if has_trees else []
        row += [ms("vendi")] if embedder else []
        rows.append(row)
    rep.add(*md_table(header, rows, right_from=4), "",
            "Per cell, mean ± SE over solved problems (≥ 1 correct sample) of the number of distinct "
            "correct final answers (normalised), distinct correct completions (whitespace/case "
            "normalised) and, for Countdown, distinct expression trees up to commutativity"
            + (f"; Vendi score (effective number of distinct correct completions, 1 = all alike) "
               f"from {embedder.label}" if embedder else "") + ".", "")
    table.to_csv(rep.out / "tables" / "diversity.csv", index=False)


# --------------------------------------------------------------------------- entry point

def _pooled_figures(rep: Report, core: pd.DataFrame, methods: list[str]) -> None:
    """Fig 1a and 1b on the units every method has at every temperature (never a method's own set)."""
    pooled_counts, kept, dropped = common_units(core)
    pooled = ("every method has at every temperature, in the task × length cells "
              + ", ".join(f"{t} @ {g}" for t, g in kept)
              + (f" (left out, not run for every method and temperature: "
                 f"{', '.join(f'{t} @ {g}' for t, g in dropped)})" if dropped else ""))
    if not kept:
        for name in ("Figure 1a", "Figure 1b"):
            rep.skip(name, "no (task, length, problem) unit has records for every method at every "
                           "temperature, so no curve would compare like with like")
        return
    rep.add(f"Figures 1a and 1b pool only the units {pooled}.", "")
    _fig1a(rep, pooled_counts, methods, pooled)
    _fig1b(rep, pooled_counts, methods, pooled)


def _scores(cfg: ReportConfig, df: pd.DataFrame | None) -> tuple[pd.DataFrame, bool, int | None]:
    """(score rows with a train_seed column, whether they hold training seeds, run folders read)."""
    from dlm_bench.runs.index import read_scores_by_seed
    from dlm_bench.runs.store import run_dirs
    n_runs = None
    if df is None:
        df = read_scores_by_seed(cfg.runs)
        n_runs = len(run_dirs(cfg.runs))
    if SEED not in df:
        df = df.assign(**{SEED: seeds.UNTRAINED})
    df = numeric_cost(df)
    df["temperature"] = df["temperature"].astype(float)
    df["gen_length"] = df["gen_length"].astype(int)
    return df, bool((df[SEED] != seeds.UNTRAINED).any()), n_runs


def _header(rep: Report, df: pd.DataFrame, counts: pd.DataFrame, methods: list[str], t_star: float,
            n_runs: int | None) -> None:
    cfg = rep.cfg
    temps = sorted(counts["temperature"].unique())
    per = counts.groupby("method")[SEED].nunique()
    rep.add(f"# {cfg.title or 'Pass@k report'}", "",
            f"Source: `{cfg.runs}`" + (f" ({n_runs} run directories)" if n_runs is not None else "")
            + f", {len(df)} scored samples.", "",
            f"- Methods: {', '.join(methods)}; base: `{cfg.base}`"
            + ("" if cfg.base in methods else " (**absent**)"),
            f"- Training seeds per method: {', '.join(f'{m} {int(per.get(m, 0))}' for m in methods)}"
            + (" (one run each: every interval covers sampling variance only, not retraining)"
               if per.max() == 1 else " (figures and tables show the mean over seeds with seed-level "
               "intervals; each seed's own numbers are in \"Per training seed\")"),
            f"- Tasks: {', '.join(map(str, sorted(counts['task'].unique())))}",
            f"- Temperatures: {', '.join(map(temp_text, temps))}; lengths: "
            f"{', '.join(map(str, sorted(counts['gen_length'].unique())))}",
            f"- Samples per problem n: {int(counts['n'].min())}–{int(counts['n'].max())}; primary k = {cfg.k}",
            f"- Single-temperature figures use T = {temp_text(t_star)}"
            + ("" if math.isclose(t_star, cfg.target_temperature)
               else f" (closest stored temperature to {temp_text(cfg.target_temperature)})"), "")
    have = set(map(tuple, counts[list(metrics.BY)].drop_duplicates().itertuples(index=False)))
    expected = []
    for task in sorted(counts["task"].unique()):  # per task: its methods × its lengths × its temperatures
        ct = counts[counts["task"] == task]
        expected += [(m, task, g, t) for m in _methods_on(counts, task, methods)
                     for g in sorted(ct["gen_length"].unique()) for t in sorted(ct["temperature"].unique())]
    absent = [c for c in expected if c not in have]
    if absent:
        rep.add(f"Cells without records ({len(absent)} of {len(expected)} method × task × length × "
                "temperature combinations of the methods run on each task; shown as n/a, never filled in): "
                + "; ".join(f"{m}/{t}/{g}/T={temp_text(tt)}" for m, t, g, tt in absent[:40])
                + (" …" if len(absent) > 40 else ""), "")


def build_report(cfg: ReportConfig, df: pd.DataFrame | None = None) -> Path:
    """Write the figures, tables and `report.md` under cfg.out; returns the report path."""
    return render(cfg, df).out / "report.md"


def render(cfg: ReportConfig, df: pd.DataFrame | None = None) -> Report:
    """`build_report`, returning the report with its (closed) figures for inspection. `df`: score rows
    to use instead of reading cfg.runs (a `train_seed` column makes them per training seed)."""
    if cfg.k < 1 or cfg.bar_k < 1:
        raise UserError(f"k must be >= 1, got {min(cfg.k, cfg.bar_k)}")
    if not 0 < cfg.confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {cfg.confidence}")
    df, has_seeds, n_runs = _scores(cfg, df)
    out = Path(cfg.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    rep = Report(cfg, out)
    counts = metrics.counts_table(df, (*metrics.BY, SEED))
    methods = order_methods(counts["method"].unique(), cfg.base)
    t_star = closest_temperature(counts["temperature"].unique(), cfg.target_temperature)
    _header(rep, df, counts, methods, t_star, n_runs)

    compares = {}
    if cfg.base in methods:
        for k in dict.fromkeys((cfg.k, cfg.bar_k)):
            compares[k] = _compare_all(df, counts, methods, cfg, k, has_seeds)
    held_out = counts["task"].map(lambda t: is_minerva(t) or lcb_base(t) is not None)
    core = counts[~held_out] if (~held_out).any() else counts
    if held_out.any() and (~held_out).any():
        rep.add(f"Figures 1a and 1b pool the in-distribution tasks only; the held-out ones "
                f"({', '.join(sorted(map(str, counts.loc[held_out, 'task'].unique())))}) are in Figure 3.", "")
    _pooled_figures(rep, core, [m for m in methods if m in set(core["method"])])
    _fig1c(rep, counts, methods, t_star)
    _fig2(rep, df, counts, methods, t_star, compares)
    figure_3a(rep, counts, methods, t_star)
    figure_3b(rep, counts, methods)
    if cfg.matched_runs:
        matched_section(rep, df, methods, t_star)
    if cfg.train_logs:
        training_section(rep, methods)
    _comparisons(rep, compares, methods, df if has_seeds else None)
    if has_seeds:
        seed_section(rep, df, methods, t_star)
    else:
        _diversity(rep, df, methods)
    if rep.skipped:
        rep.add("## Skipped", "", *[f"- {w}: {why}." for w, why in rep.skipped], "")
    (out / "report.md").write_text("\n".join(rep.lines).rstrip() + "\n", encoding="utf-8")
    return rep
