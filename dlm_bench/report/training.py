"""Training reward against its control: what the policy learnt, net of the prompts' own difficulty.

Each step of a run draws new prompts, so the training reward moves with their difficulty as well as
with learning: on the testbed the base model's own reward on one seed's prompt order rose from 0.13 to
0.18 between the first and last 30 of 60 steps (../shared/reference/testbed-fidelity.md). A run trained
with `control: base` logs the base model's reward on the same prompts and rollout seeds beside its own
(training/control.py); this section plots reward minus control per step, every training seed thin
and the mean thick, and tabulates it. Runs are found through the `model.json` of each sweep (the
training run a checkpoint came from); runs without a control are shown as raw reward, labelled so.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dlm_bench.report.common import Report, md_table, save_figure
from dlm_bench.runs.files import read_jsonl
from dlm_bench.runs.store import RESULTS, run_dirs

SMOOTH = 5      # steps in the rolling mean of the plotted curves


def training_logs(runs: str) -> pd.DataFrame:
    """One row per (method label, training run, step) of every training run whose checkpoint a sweep
    under `runs` evaluated: reward_mean and, where logged, control_reward_mean."""
    found = {}
    for d in run_dirs(runs):
        try:
            training = json.loads((d / "model.json").read_text()).get("training") or {}
            label = json.loads((d / RESULTS).read_text())["method"]
        except (OSError, ValueError, KeyError):
            continue
        if training.get("run"):
            found[(label, training["run"])] = training.get("seed")
    frames = []
    for (label, run), seed in sorted(found.items()):
        rows = read_jsonl(Path(run) / "log.jsonl")
        if rows:
            f = pd.DataFrame(rows)
            frames.append(f.assign(method=label, run=run, train_seed=seed,
                                   control_reward_mean=f.get("control_reward_mean", np.nan)))
    cols = ["method", "run", "train_seed", "step", "reward_mean", "control_reward_mean"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _part(g: pd.DataFrame, col: str, lo: float, hi: float) -> float:
    n = len(g)
    return float(g[col].iloc[int(lo * n):max(int(lo * n) + 1, int(hi * n))].mean())


def _figure(rep: Report, logs: pd.DataFrame, methods: list[str], controlled: bool) -> None:
    from dlm_bench.report.style import fit_y, grid, method_color
    shown = [m for m in methods if m in set(logs["method"])]
    fig, axes = grid(len(shown), max_cols=4)
    col = "net" if controlled else "reward_mean"
    for ax, m in zip(axes, shown):
        curves = []
        for _, g in logs[logs["method"] == m].groupby("run"):
            y = g.sort_values("step").set_index("step")[col].rolling(SMOOTH, min_periods=1).mean()
            ax.plot(y.index, y.to_numpy(), lw=0.7, alpha=0.6, color=method_color(m))
            curves.append(y)
        mean = pd.concat(curves, axis=1).mean(axis=1)
        ax.plot(mean.index, mean.to_numpy(), lw=2.2, color=method_color(m))
        if controlled:
            ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(m, color=method_color(m))
        ax.set_xlabel("training step")
    fit_y(axes, "reward − control" if controlled else "training reward", include_zero=controlled, bounds=None)
    save_figure(rep, fig, "fig_training_reward",
                (f"Training reward minus the base model's reward on the same prompts and rollout seeds (the "
                 f"control), rolling mean over {SMOOTH} steps; each training seed thin, their mean thick. Above 0: "
                 "the policy does better than the base on the prompts it is trained on.") if controlled else
                (f"Training reward, rolling mean over {SMOOTH} steps, each seed thin, the mean thick. **No control "
                 "was logged** (train with control: base): a rising curve mixes learning with the changing "
                 "difficulty of each step's prompts."))


def training_section(rep: Report, methods: list[str]) -> None:
    """The training-reward figure and table (nothing when no sweep names a training run)."""
    logs = training_logs(rep.cfg.runs)
    if logs.empty:
        return
    rep.add("## Training reward against the base model on the same prompts", "")
    logs = logs.assign(net=logs["reward_mean"] - logs["control_reward_mean"])
    controlled = bool(logs["control_reward_mean"].notna().any())
    _figure(rep, logs, methods, controlled)
    rows = []
    for m in [m for m in methods if m in set(logs["method"])]:
        per = [g.sort_values("step") for _, g in logs[logs["method"] == m].groupby("run")]
        net = [_part(g, "net", 0.5, 1.0) for g in per]
        row = [m, str(len(per)), str(int(max(len(g) for g in per))),
               f"{np.mean([_part(g, 'reward_mean', 0, .25) for g in per]):.3f} → "
               f"{np.mean([_part(g, 'reward_mean', .75, 1) for g in per]):.3f}"]
        if controlled and np.isfinite(net).all():
            row += [f"{np.mean([_part(g, 'control_reward_mean', 0, .25) for g in per]):.3f} → "
                    f"{np.mean([_part(g, 'control_reward_mean', .75, 1) for g in per]):.3f}",
                    f"{np.mean(net):+.3f} [{min(net):+.3f}, {max(net):+.3f}]"]
        else:
            row += ["not logged", "n/a"]
        rows.append(row)
    rep.add(*md_table(["Method", "Seeds", "Steps", "Reward (first → last quarter)", "Control (first → last quarter)",
                       "Reward − control, second half (mean [seed range])"], rows, right_from=1), "",
            "Control: the base model's reward on each step's prompts with the run's own rollout decoder and seeds "
            "(`control: base`); reward and control are means over the steps of that part of training, then "
            "over seeds.", "")
    logs.to_csv(rep.out / "tables" / "training_reward.csv", index=False)
