"""The TraFL figures and a Markdown report, from stored score records only.

`build_report(cfg)` reads every run directory under `cfg.runs` (dlm_bench.runs.store) and writes to `cfg.out`
(`render(cfg)` does the same and returns the report with its figures, for tests):

- Fig 1a `fig1a_passk_vs_k`: each method's Pass@k vs k, one line style per temperature;
- Fig 1b `fig1b_gap_to_base`: Pass@k(method) − Pass@k(base) vs k per temperature, paired
  t-interval bands over units (metrics.paired_ci);
- Fig 1c `fig1c_all_methods`: every method at T = 0.6 (or the stored temperature closest to it),
  k = 1..n, one panel per task × length, bootstrap CI bands;
- Fig 2 `fig2_passk_task_length`: Pass@5 per task × length as points with bootstrap CI error bars;
  the table adds ± SE, mean NFE and completion length;
- Fig 3 `fig3a_minerva_transfer` (methods labelled `name@gsm8k` / `name@math` on a Minerva task) and
  `fig3b_livecodebench_difficulty` (LiveCodeBench by difficulty), when the data is there;
- `report.md` with one table per figure, the paired comparison of every method vs base at the
  primary k (metrics.compare_table) and the offline diversity table (diversity.diversity_table and
  the embedding Vendi score), plus `tables/*.csv` with the same numbers unrounded;
- with runs laid out as RUNS/METHOD/seed-K/, a section across training seeds (report_seeds).

Every figure follows dlm_bench.report.style (fixed colour per method, shared y-axes, one legend from
all series). Nothing is invented: a cell without records is "n/a" in tables and figures, and a
figure without data is skipped with a line in the report saying why.

Pooling: curves that span tasks and lengths (Fig 1a, 1b) average over the (task, length, problem)
units that every method has at every temperature (report_common.common_units), so no method's
curve includes a task another method was not run on; the report names the cells kept and dropped.
Tasks then weigh by their problem counts, which keeps the paired bootstrap exact.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dlm_bench.stats import metrics
from dlm_bench.errors import UserError
from dlm_bench.report.common import (cell_stats, passk_curve, is_minerva, lcb_base, num_text, numeric_cost, pct_text,
    Report, report_rng, save_figure, temp_text, closest_temperature, common_units, md_table, order_methods, ReportConfig, UNIT)
from dlm_bench.report.style import dot_panel, figure_legend, fit_y, grid, LINESTYLES, MARKERS, method_color
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
            cur = passk_curve(cell, cfg, ("1a", m, t))
            ls, mk = LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]
            ax.plot(cur["k"], 100 * cur["pass_at_k"], ls=ls, marker=mk, ms=4, color=method_color(m))
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.12, lw=0)
            n = int(cur["k"].max())
            at = cur.set_index("k")["pass_at_k"]
            cells = cell[["task", "gen_length"]].drop_duplicates()
            rows.append([m, temp_text(t), str(len(cells)), str(len(cell)), str(n), pct_text(at.get(1)),
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
          f"(bands: {cfg.confidence:.0%} bootstrap CI over units, {cfg.n_resamples} resamples); k runs "
          f"to the smallest n among the units; shared y-axis" + (f"; {note}." if note else "."))
    rep.add(*md_table(["Method", "Temp.", "Task×length cells", "Problems", "n", "Pass@1 (%)",
                       f"Pass@{cfg.k} (%)", "Pass@n (%)"], rows, right_from=2), "")
    if csv:
        pd.concat(csv).to_csv(rep.out / "tables" / "fig1a_passk_vs_k.csv", index=False)


def _paired_units(counts: pd.DataFrame, a: str, b: str, t: float) -> pd.DataFrame:
    at = counts[(counts["method"] == a) & np.isclose(counts["temperature"], t)]
    bt = counts[(counts["method"] == b) & np.isclose(counts["temperature"], t)]
    return at[UNIT + ["n", "c"]].merge(bt[UNIT + ["n", "c"]], on=UNIT, suffixes=("_a", "_b"))


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
            pu = _paired_units(counts, m, cfg.base, t)
            if pu.empty:
                continue
            kmax = int(min(pu["n_a"].min(), pu["n_b"].min()))
            ks = list(range(1, kmax + 1))
            va = metrics.pass_at_k(pu["n_a"].to_numpy(), pu["c_a"].to_numpy(), ks)
            vb = metrics.pass_at_k(pu["n_b"].to_numpy(), pu["c_b"].to_numpy(), ks)
            cur = []
            for j, k in enumerate(ks):
                ci = metrics.paired_ci(va[:, j], vb[:, j], cfg.confidence)
                cur.append({"method": m, "temperature": t, "k": k, "gap": float(np.mean(va[:, j] - vb[:, j])),
                            "ci_low": ci.low, "ci_high": ci.high, "ci_method": ci.method,
                            "n_units": len(pu)})
            cur = pd.DataFrame(cur)
            csv.append(cur)
            ax.plot(cur["k"], 100 * cur["gap"], marker="o", ms=4, color=method_color(m), label=m)
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.15, lw=0)
            if cfg.k <= kmax:
                r = cur[cur["k"] == cfg.k].iloc[0]
                d = va[:, cfg.k - 1] - vb[:, cfg.k - 1]
                p, _ = metrics.sign_flip_test(d, cfg.n_permutations, rng=report_rng(cfg.seed, "1b-p", m, t))
                rows.append([m, temp_text(t), str(len(pu)), pct_text(r["gap"], sign=True),
                             f"[{pct_text(r['ci_low'], sign=True)}, {pct_text(r['ci_high'], sign=True)}]",
                             metrics.fmt_p(p), _stars(p, cfg.alpha)])
            else:
                rows.append([m, temp_text(t), str(len(pu)), "n/a", "n/a", "n/a", f"n < {cfg.k}"])
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(f"T = {temp_text(t)}")
        ax.set_xlabel("k")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fit_y(axes, f"Pass@k − {cfg.base} (pp)", include_zero=True, bounds=None)
    figure_legend(fig, axes, order=methods)
    save_figure(rep, fig, "fig1b_gap_to_base",
          f"Mean per-problem Pass@k difference to {cfg.base} over the (task, length, problem) units "
          f"{pooled}; bands: {cfg.confidence:.0%} paired bootstrap CI over units ({cfg.n_resamples} "
          f"resamples, BCa or percentile where BCa is undefined); shared y-axis.")
    rep.add(*md_table(["Method", "Temp.", "Paired units", f"Gap Pass@{cfg.k} (pp)",
                       f"{cfg.confidence:.0%} CI (pp)", "p perm.", "Sig."], rows, right_from=2), "",
            f"p perm.: two-sided paired sign-flip permutation test on the pooled units at k = {cfg.k} "
            f"(unadjusted; the per-cell tests with BH adjustment are in the comparison section); "
            f"* p < {cfg.alpha:g}, ** p < 0.01, *** p < 0.001.", "")
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
                rows.append([str(task), str(g), m, "n/a", "n/a", "n/a", "n/a", "n/a"])
                continue
            cur = passk_curve(sub, cfg, ("1c", m, task, g, t_star))
            ax.plot(cur["k"], 100 * cur["pass_at_k"], marker="o", ms=4, color=method_color(m), label=m)
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(m),
                            alpha=0.12, lw=0)
            n = int(cur["k"].max())
            s = cur.set_index("k")["pass_at_k"]
            rows.append([str(task), str(g), m, str(len(sub)), str(n), pct_text(s.get(1)),
                         pct_text(s.get(cfg.k)) if cfg.k <= n else "n/a", pct_text(s.get(n))])
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
          f"per task × length (bands: {cfg.confidence:.0%} bootstrap CI over problems, "
          f"{cfg.n_resamples} resamples; overlapping bands are not a separation); shared y-axis"
          + (f"; {note}." if note else "."))
    rep.add(*md_table(["Task", "Length", "Method", "Problems", "n", "Pass@1 (%)", f"Pass@{cfg.k} (%)",
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
                rows.append([str(task), str(g), m, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", ""])
                continue
            r = r.iloc[0]
            values[((task, g), m)] = (r["pass_at_k"], r["ci_low"], r["ci_high"])
            d, s = sig.get((m, task, int(g), round(float(t_star), 6)), (math.nan, ""))
            if s:
                marks[((task, g), m)] = s
            cell = (f"{pct_text(r['pass_at_k'])} ± {pct_text(r['se'])}" if math.isfinite(r["pass_at_k"])
                    else f"n/a (n = {r['n_samples']} < {k})")
            ci = (f"[{pct_text(r['ci_low'])}, {pct_text(r['ci_high'])}]" if math.isfinite(r["ci_low"]) else "n/a")
            rows.append([str(task), str(g), m, str(r["n_problems"]), str(r["n_samples"]), cell, ci,
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
          f"Pass@{k} at T = {temp_text(t_star)} per task and generation length: mean over problems with its "
          f"{cfg.confidence:.0%} bootstrap CI ({cfg.n_resamples} resamples; the table also gives ± 1 SE)"
          + (f"; {ynote}" if ynote else "") + f". Stars: vs {cfg.base}, BH-adjusted paired permutation "
          f"test at k = {k} across the cells of that method's comparison.{note}")
    rep.add(*md_table(["Task", "Length", "Method", "Problems", "n", f"Pass@{k} (%) ± SE",
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
                 k: int) -> dict:
    """metrics.compare_table of every method vs base at k, on the cells where both have n >= k
    (the others are listed under "_short")."""
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
            out[m] = metrics.compare_table(sub, m, cfg.base, k, confidence=cfg.confidence, alpha=cfg.alpha,
                                           n_resamples=cfg.n_resamples, n_permutations=cfg.n_permutations,
                                           seed=cfg.seed)
        except UserError as e:
            out[m] = None
            out["_errors"][m] = str(e)
    return out


def _comparisons(rep: Report, compares: dict, methods: list[str]) -> None:
    cfg = rep.cfg
    rep.add(f"## Paired comparison with `{cfg.base}` (primary k = {cfg.k})", "")
    if cfg.base not in methods:
        rep.skip("Paired comparison", f"no records for the base method {cfg.base!r}")
        return
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
            if shorts.get(m):
                rep.add(f"Left out (fewer than k = {cfg.k} samples per problem): {'; '.join(shorts[m])}.", "")
            continue
        rep.add(metrics.compare_markdown(t), "")
        if shorts.get(m):
            rep.add(f"Left out (fewer than k = {cfg.k} samples per problem): {'; '.join(shorts[m])}.", "")
        frames.append(t)
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


def _first_seed(seeded: pd.DataFrame) -> pd.DataFrame:
    """With several training seeds, the single-run figures and tables use each method's lowest seed
    (the section "Across training seeds" uses them all)."""
    first = seeded.groupby("method")["train_seed"].transform("min")
    return seeded[seeded["train_seed"] == first].drop(columns="train_seed").reset_index(drop=True)


def build_report(cfg: ReportConfig, df: pd.DataFrame | None = None) -> Path:
    """Write the figures, tables and `report.md` under cfg.out; returns the report path."""
    return render(cfg, df).out / "report.md"


def render(cfg: ReportConfig, df: pd.DataFrame | None = None) -> Report:
    """`build_report`, returning the report with its (closed) figures for inspection."""
    from dlm_bench.runs.index import read_all_scores, read_seeded_scores
    from dlm_bench.runs.store import run_dirs

    if cfg.k < 1 or cfg.bar_k < 1:
        raise UserError(f"k must be >= 1, got {min(cfg.k, cfg.bar_k)}")
    if not 0 < cfg.confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {cfg.confidence}")
    seeded = None
    if df is None:
        seeded = read_seeded_scores(cfg.runs)
        df = read_all_scores(cfg.runs) if seeded is None else _first_seed(seeded)
        n_runs = len(run_dirs(cfg.runs))
    else:
        n_runs = None
    df = numeric_cost(df)
    df["temperature"] = df["temperature"].astype(float)
    df["gen_length"] = df["gen_length"].astype(int)
    out = Path(cfg.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    rep = Report(cfg, out)
    counts = metrics.counts_table(df, metrics.BY)
    methods = order_methods(counts["method"].unique(), cfg.base)
    temps = sorted(counts["temperature"].unique())
    t_star = closest_temperature(temps, cfg.target_temperature)

    rep.add(f"# {cfg.title or 'Pass@k report'}", "",
            f"Source: `{cfg.runs}`" + (f" ({n_runs} run directories)" if n_runs is not None else "")
            + f", {len(df)} scored samples.", "",
            f"- Methods: {', '.join(methods)}; base: `{cfg.base}`"
            + ("" if cfg.base in methods else " (**absent**)"),
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

    compares = {}
    if cfg.base in methods:
        compares[cfg.k] = _compare_all(df, counts, methods, cfg, cfg.k)
        if cfg.bar_k != cfg.k:
            compares[cfg.bar_k] = _compare_all(df, counts, methods, cfg, cfg.bar_k)
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
    _comparisons(rep, compares, methods)
    if seeded is not None:
        from dlm_bench.report.seed_level import seed_section
        seed_section(rep, seeded, methods, t_star)
    else:
        from dlm_bench.stats.seed_level import SAMPLING_ONLY
        rep.add(f"Note: {SAMPLING_ONLY} (runs laid out as RUNS/METHOD/seed-K/ add a training-seed section).", "")
    _diversity(rep, df, methods)
    if rep.skipped:
        rep.add("## Skipped", "", *[f"- {w}: {why}." for w, why in rep.skipped], "")
    (out / "report.md").write_text("\n".join(rep.lines).rstrip() + "\n", encoding="utf-8")
    return rep
