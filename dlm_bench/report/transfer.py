"""Figure 3 of the report: transfer (Minerva with GSM8K-/MATH-trained checkpoints; LiveCodeBench by difficulty)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dlm_bench.stats.seed_level import seed_mean_ci
from dlm_bench.report.common import (passk_curve, is_minerva, lcb_base, pct_text, Report, save_figure, temp_text, train_name,
    interval_text, seed_matrix,
    closest_temperature, DIFFICULTIES, md_table, order_methods, split_label)
from dlm_bench.report.style import dot_panel, figure_legend, fit_y, grid, method_color


def figure_3a(rep: Report, counts: pd.DataFrame, methods: list[str], t_star: float) -> None:
    cfg = rep.cfg
    rep.add("## Figure 3a: transfer to Minerva (GSM8K- and MATH-trained checkpoints)", "")
    mc = counts[counts["task"].map(is_minerva)]
    if mc.empty:
        rep.skip("Figure 3a", "no records on a Minerva task (task name containing 'minerva')")
        return
    trained = sorted({split_label(m)[1] for m in mc["method"].unique() if split_label(m)[1]})
    if not trained:
        rep.skip("Figure 3a", "no Minerva records from methods labelled with their training set "
                              "(e.g. 'trafl@gsm8k', 'trafl@math')")
        return
    refs = [m for m in methods if split_label(m)[1] is None and m in set(mc["method"])]
    temps = sorted(mc["temperature"].unique())
    t_use = closest_temperature(temps, cfg.target_temperature)
    mc = mc[np.isclose(mc["temperature"], t_use)]
    tasks_lengths = mc[["task", "gen_length"]].drop_duplicates().sort_values(["task", "gen_length"])
    panels = [(tr, task, g) for tr in trained for task, g in tasks_lengths.itertuples(index=False)]
    fig, axes = grid(len(panels), max_cols=max(1, len(tasks_lengths)))
    rows = []
    for ax, (tr, task, g) in zip(axes, panels):
        cell = mc[(mc["task"] == task) & (mc["gen_length"] == g)]
        show = refs + [m for m in order_methods(cell["method"].unique(), cfg.base) if split_label(m)[1] == tr]
        for m in show:
            sub = cell[cell["method"] == m]
            name = split_label(m)[0]
            if sub.empty:
                rows.append([train_name(tr), str(task), str(g), m, "n/a", "n/a", "n/a", "n/a"])
                continue
            cur = passk_curve(sub, cfg)
            # the panel title names the training set, so the legend names the method only
            ax.plot(cur["k"], 100 * cur["pass_at_k"], marker="o", ms=4, color=method_color(name),
                    label=f"{m} (untrained)" if m in refs else name, ls="--" if m in refs else "-")
            ax.fill_between(cur["k"], 100 * cur["ci_low"], 100 * cur["ci_high"], color=method_color(name),
                            alpha=0.12, lw=0)
            s = cur.set_index("k")["pass_at_k"]
            n = int(cur["k"].max())
            rows.append([train_name(tr), str(task), str(g), m, str(int(cur["n_units"].iloc[0])), pct_text(s.get(1)),
                         pct_text(s.get(cfg.k)) if cfg.k <= n else "n/a", pct_text(s.get(n))])
        ax.set_title(f"trained on {train_name(tr)}: {task}, length {g}")
        ax.set_xlabel("k")
        ax.xaxis.get_major_locator().set_params(integer=True)
    note = fit_y(axes, "Pass@k (%)")
    figure_legend(fig, axes, order=[f"{m} (untrained)" for m in refs] + order_methods(
        {split_label(m)[0] for m in mc["method"]}, cfg.base))
    save_figure(rep, fig, "fig3a_minerva_transfer",
          f"Held-out Minerva Pass@k vs k at T = {temp_text(t_use)}; one row of panels per training set "
          f"(method label suffix after '@'); dashed: untrained references ({', '.join(refs) or 'none'}); "
          f"{interval_text(mc, cfg.confidence)}; shared y-axis"
          + (f"; {note}." if note else "."))
    rep.add(*md_table(["Trained on", "Task", "Length", "Method", "Problems", "Pass@1 (%)",
                       f"Pass@{cfg.k} (%)", "Pass@n (%)"], rows, right_from=4), "")


def _lcb_frame(counts: pd.DataFrame, difficulties: dict | None) -> tuple[pd.DataFrame, str]:
    """LiveCodeBench rows with a `difficulty` column, and where the labels came from."""
    is_lcb = counts["task"].map(lcb_base)
    lc = counts[is_lcb.notna()].copy()
    if lc.empty:
        return lc, ""
    from_label = is_lcb[is_lcb.notna()]
    lc["difficulty"] = from_label.where(from_label != "", None)
    source = "task labels"
    if difficulties:
        mapped = lc["problem_id"].astype(str).map({str(k): str(v).lower() for k, v in difficulties.items()})
        lc["difficulty"] = lc["difficulty"].where(lc["difficulty"].notna(), mapped)
        source = "task labels and the supplied problem → difficulty map"
    lc["task"] = lc["task"].map(lambda t: re.sub(r"[_:/@\-.](easy|medium|hard)$", "", str(t), flags=re.I))
    return lc, source


def figure_3b(rep: Report, counts: pd.DataFrame, methods: list[str]) -> None:
    cfg = rep.cfg
    rep.add("## Figure 3b: LiveCodeBench by difficulty", "")
    lc, source = _lcb_frame(counts, cfg.difficulties)
    if lc.empty:
        rep.skip("Figure 3b", "no LiveCodeBench records")
        return
    unlabeled = int(lc["difficulty"].isna().sum())
    lc = lc[lc["difficulty"].isin(DIFFICULTIES)]
    if lc.empty:
        rep.skip("Figure 3b", "LiveCodeBench records carry no difficulty: label the task "
                              "('livecodebench_easy', ...) or pass a problem → difficulty map "
                              "(`dlm-bench report --lcb-meta FILE`)")
        return
    t_use = closest_temperature(lc["temperature"].unique(), cfg.target_temperature)
    lc = lc[np.isclose(lc["temperature"], t_use)]
    lengths = sorted(lc["gen_length"].unique())
    diffs = [d for d in DIFFICULTIES if d in set(lc["difficulty"])]
    ms = [m for m in methods if m in set(lc["method"])]
    k = cfg.k
    fig, axes = grid(len(lengths))
    rows = []
    for ax, g in zip(axes, lengths):
        values = {}
        for d in diffs:
            for m in ms:
                sub = lc[(lc["gen_length"] == g) & (lc["difficulty"] == d) & (lc["method"] == m)]
                if sub.empty:
                    rows.append([str(g), d, m, "n/a", "n/a", "n/a"])
                    continue
                n = int(sub["n"].min())
                units = sub["problem_id"].nunique()
                if n < k:
                    rows.append([str(g), d, m, str(units), str(n), f"n/a (n < {k})"])
                    continue
                lv = seed_mean_ci(seed_matrix(sub, [k], ["problem_id"])[0][:, :, 0], cfg.confidence)
                values[(d, m)] = (lv.mean, lv.low, lv.high)
                rows.append([str(g), d, m, str(units), str(n), f"{pct_text(lv.mean)} ± {pct_text(lv.se)}"])
        dot_panel(ax, diffs, ms, values)
        ax.set_title(f"length {g}")
    ynote = fit_y(axes, f"Pass@{k} (%)")
    figure_legend(fig, axes, order=ms)
    note = f" {unlabeled} problem rows had no difficulty label and are left out." if unlabeled else ""
    save_figure(rep, fig, "fig3b_livecodebench_difficulty",
          f"LiveCodeBench Pass@{k} at T = {temp_text(t_use)} by difficulty (labels from {source}), mean over "
          f"problems ({interval_text(lc, cfg.confidence, 'error bars')}; the table gives ± 1 SE); n/a: no "
          f"records; shared y-axis" + (f"; {ynote}" if ynote else "") + f".{note}")
    rep.add(*md_table(["Length", "Difficulty", "Method", "Problems", "n", f"Pass@{k} (%) ± SE"], rows,
                      right_from=3), "")
