"""Matched decoding: every trained model under the decoder it was trained with, beside the protocol's.

A method learns to decode the way its rollouts decode (JustGRPO: left to right, one token a step, at
T = 1; most others one block in confidence order at their rollout temperature). The protocol sweeps
every model with one decoder, which for some methods is not the one they trained: on the testbed,
JustGRPO's gain under its own decoder did not transfer to one-block confidence decoding
(../shared/reference/testbed-fidelity.md). With `eval.decoders: [protocol, rollout]` each trained
model is also swept with its own rollout decoder, and the base with every such decoder
(RESULTS/passk-rollout/DECODER/, `protocol.sweep`). This section puts, per method, its difference
from base under the protocol's decoder (at the single-figure temperature) and under its own, side
by side and labelled, each against the base under the same decoder, with seed-level intervals and
MDEs (`seed_level.seed_table`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.report.common import SEED, Report, interval_text, md_table, pct_text, save_figure, temp_text
from dlm_bench.runs.index import decoder_folders, read_index, read_scores_by_seed
from dlm_bench.runs.store import run_dirs
from dlm_bench.stats import metrics
from dlm_bench.stats import seed_level as seeds
from dlm_bench.stats.power import verdict

PROTOCOL, OWN = "protocol decoder", "own training decoder"


def protocol_decoder(runs: str, t_star: float, length: int) -> str:
    """The protocol sweep's sampler at (T*, length), as words, from the first run folder that recorded it."""
    for d in run_dirs(runs):
        for e in read_index(d).values():
            s = e.get("config", {}).get("sampler", {})
            if s and abs(float(s.get("temperature", -1)) - t_star) < 1e-9 and s.get("gen_length") == length:
                order = ("left-to-right" if s["block_length"] == 1 else ("one block" if s["block_length"] >= s[
                    "gen_length"] else f"blocks of {s['block_length']}") + f", {s['remasking'].replace('_', '-')} order")
                return f"{order}, T = {temp_text(t_star)}, {s['gen_length']} tokens, {s['steps']} steps"
    return f"T = {temp_text(t_star)}, {length} tokens"


def _rows(scores: pd.DataFrame, m: str, base: str, ks: list[int], cfg) -> dict:
    """{k: the seed_table row of m vs base} for the single cell of `scores` (UserError if none)."""
    out = {}
    for k in ks:
        t = seeds.seed_table(scores, m, base, k, confidence=cfg.confidence, seed=cfg.seed)
        out[k] = t.iloc[0].to_dict()
    return out


def _comparisons(rep: Report, df: pd.DataFrame, methods: list[str], t_star: float) -> list[tuple]:
    """(method, which decoder, its description, {k: row}) for each trained method, protocol and own."""
    cfg = rep.cfg
    at = df[np.isclose(df["temperature"], t_star)]
    task, length = min(set(zip(at["task"], at["gen_length"])))       # the protocol cell shown: one task x length
    at = at[(at["task"] == task) & (at["gen_length"] == length)]
    folders = decoder_folders(cfg.matched_runs)
    proto = protocol_decoder(cfg.runs, t_star, int(length))
    out = []
    for m in [m for m in methods if m != cfg.base]:
        n = int(metrics.counts_table(at[at["method"].isin([m, cfg.base])], ["method", SEED, *metrics.CELL])["n"].min())
        ks = sorted({1, n})
        try:
            out.append((m, PROTOCOL, proto, _rows(at[at["method"].isin([m, cfg.base])], m, cfg.base, ks, cfg)))
        except UserError:
            pass
        for folder, dec in folders:
            if not (folder / m).is_dir():
                continue
            try:
                out.append((m, OWN, dec.get("description", folder.name), _rows(read_scores_by_seed(folder), m, cfg.base, ks, cfg)))
            except UserError as e:
                rep.add(f"*{m} under {folder.name}: not compared ({e}).*", "")
    return out


def _figure(rep: Report, found: list[tuple], methods: list[str]) -> None:
    from dlm_bench.report.style import dot_panel, figure_legend, fit_y, grid
    ks = sorted({k for *_, rows in found for k in rows})
    fig, axes = grid(len(ks))
    shown = [m for m in methods if any(f[0] == m for f in found)]
    for ax, k in zip(axes, ks):
        values = {(m, which): (r[k]["diff"], r[k]["ci_low"], r[k]["ci_high"]) for m, which, _, r in found if k in r}
        dot_panel(ax, shown, [PROTOCOL, OWN], values)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(f"Pass@{k}")
    fit_y(axes, f"Pass@k − {rep.cfg.base} (pp)", include_zero=True, bounds=None)
    figure_legend(fig, axes, order=[PROTOCOL, OWN])
    save_figure(rep, fig, "fig_matched_decoding",
                f"Each method's Pass@k minus {rep.cfg.base}'s under the same decoder: the protocol's (left "
                f"marker) and the one the method was trained with (right marker); error bars: "
                f"{rep.cfg.confidence:.0%} intervals (trained methods over seeds and problems, the untrained base's "
                "sampling variance only).")


def matched_section(rep: Report, df: pd.DataFrame, methods: list[str], t_star: float) -> None:
    """The matched-decoding figure and table (`cfg.matched_runs` holds one folder per decoder)."""
    cfg = rep.cfg
    rep.add("## Matched decoding: each model also under its own training decoder", "")
    found = _comparisons(rep, df, methods, t_star) if decoder_folders(cfg.matched_runs) else []
    if not any(which == OWN for _, which, _, _ in found):
        rep.skip("Matched decoding", f"no sweep under a training decoder in {cfg.matched_runs!r}")
        return
    _figure(rep, found, methods)
    rows, csv = [], []
    for m, which, desc, by_k in found:
        ks = sorted(by_k)
        r1, rn = by_k[ks[0]], by_k[ks[-1]]
        rows.append([m, f"{which}: {desc}", f"{r1['n_seeds_a']}/{r1['n_seeds_b']}", str(r1["n_problems"]),
                     pct_text(r1["mean_b"]), pct_text(r1["mean_a"]),
                     f"{pct_text(r1['diff'], sign=True)}{r1['sig']} [{pct_text(r1['ci_low'], sign=True)}, "
                     f"{pct_text(r1['ci_high'], sign=True)}]", pct_text(r1["mde"]),
                     verdict(r1["significant"], r1["diff"], r1["mde"], r1["power"]),
                     f"{pct_text(rn['diff'], sign=True)}{rn['sig']} [{pct_text(rn['ci_low'], sign=True)}, "
                     f"{pct_text(rn['ci_high'], sign=True)}] (Pass@{ks[-1]})"])
        csv += [{**r, "decoder": which, "description": desc} for r in by_k.values()]
    rep.add(*md_table(["Method", "Decoder", "Seeds A/B", "Problems", f"{cfg.base} Pass@1 (%)", "Method Pass@1 (%)",
                       "Δ Pass@1 (pp) [CI]", "MDE (pp)", "Detectable?", "Δ Pass@n (pp) [CI]"], rows, right_from=2),
            "", f"Δ: the method's Pass@k minus {cfg.base}'s under the same decoder, {interval_text(df, cfg.confidence, 'intervals')}; "
                "* the interval excludes 0. " + seeds.POWER_NOTE, "")
    pd.DataFrame(csv).to_csv(rep.out / "tables" / "matched_decoding.csv", index=False)
