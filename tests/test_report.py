"""dlm_bench.report.build on a small synthetic store: figures written, every method named, missing cells
shown as missing, and table numbers equal to metrics recomputed directly."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from dlm_bench.stats import metrics
from dlm_bench.report.build import build_report
from dlm_bench.report.common import ReportConfig, closest_temperature, split_label
from dlm_bench.runs.index import read_all_scores
from dlm_bench.runs.store import Store

N = 4
PROBLEMS = 5
RATE = {"base": 0.3, "trafl": 0.55, "espo": 0.45, "trafl@gsm8k": 0.5, "trafl@math": 0.6}


def _records(method, task, temp, length, rng, problems=PROBLEMS, n=N):
    rows = []
    for p in range(problems):
        for s in range(n):
            ok = bool(rng.random() < RATE[method])
            ans = str(int(rng.integers(0, 3))) if ok else "x"
            rows.append({"method": method, "task": task, "temperature": temp, "gen_length": length,
                         "problem_id": f"{task}/{p}", "sample": s, "seed": int(rng.integers(1 << 30)),
                         "config_hash": f"{method}-{task}-{temp}-{length}", "prompt_hash": "ph",
                         "text": f"solution {ans} by {method} #{s}", "tokens": [1, 2, 3],
                         "nfe": length // 2 + (8 if method == "espo" else 0), "length": 10 + s,
                         "seconds": 0.01, "correct": ok, "extracted": ans, "reason": "correct" if ok else "wrong",
                         "isolation": None})
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    for method in ("base", "trafl", "espo"):
        for temp in (0.3, 0.9):
            for length in (128, 256):
                if method == "espo" and length == 256 and temp == 0.3:
                    continue  # a missing cell: must show as n/a
                st = Store(root / method / f"gsm8k_T{temp}_L{length}")
                st.append("scores", _records(method, "gsm8k", temp, length, rng))
    # transfer: Minerva with GSM8K- and MATH-trained checkpoints, plus LiveCodeBench by difficulty label
    for method in ("base", "trafl@gsm8k", "trafl@math"):
        Store(root / "transfer" / method.replace("@", "_")).append(
            "scores", _records(method, "minerva", 0.9, 128, rng))
    for method in ("base", "trafl"):
        for diff in ("easy", "hard"):
            Store(root / "lcb" / f"{method}_{diff}").append(
                "scores", _records(method, f"livecodebench_{diff}", 0.9, 128, rng, problems=3))
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cfg = ReportConfig(runs=str(runs), out=str(out), k=2, n_permutations=500)
    path = build_report(cfg)
    return out, path.read_text()


def test_figures_exist_and_are_not_empty(report):
    out, _ = report
    for name in ("fig1a_passk_vs_k", "fig1b_gap_to_base", "fig1c_all_methods", "fig2_passk_task_length",
                 "fig3a_minerva_transfer", "fig3b_livecodebench_difficulty"):
        for ext in ("png", "pdf"):
            p = out / f"{name}.{ext}"
            assert p.is_file() and p.stat().st_size > 1000, p


def test_report_mentions_methods_and_sections(report):
    _, text = report
    for m in ("base", "trafl", "espo", "trafl@gsm8k", "trafl@math"):
        assert m in text
    for section in ("Figure 1a", "Figure 1b", "Figure 1c", "Figure 2", "Figure 3a", "Figure 3b",
                    "Paired comparison", "Diversity"):
        assert section in text
    # no T = 0.6 stored: the closest (0.3, the lower of the tie-free nearest) is named in the caption
    assert "closest stored" in text
    assert "primary k = 2" in text


def test_missing_cell_is_shown_as_missing(report):
    _, text = report
    assert "espo/gsm8k/256/T=0.3" in text
    fig1c = text.split("## Figure 1c")[1].split("## Figure 2")[0]
    assert "| gsm8k | 256 | espo | n/a | n/a | n/a | n/a | n/a | n/a |" in fig1c
    fig2 = text.split("## Figure 2")[1].split("## Figure 3a")[0]
    assert "| gsm8k | 256 | espo | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |  |" in fig2
    assert "Missing (no records, shown as n/a): espo on gsm8k @ 256" in fig2
    # the diversity table has no row for it either (nothing invented)
    assert not re.search(r"\| espo \| gsm8k \| 256 \| 0\.3 \|", text)


def test_fig2_numbers_equal_metrics(report, runs):
    _, text = report
    df = read_all_scores(runs)
    t_star = closest_temperature(df["temperature"].unique())
    assert t_star == 0.3
    table = metrics.passk_table(df[df["temperature"] == t_star], ks=(5 if N >= 5 else N,))
    # Fig 2 is Pass@5 but n = 4 here: the cell must say n/a, not invent a value
    fig2 = text.split("## Figure 2")[1].split("## Figure 3a")[0]
    assert "n/a (n = 4 < 5)" in fig2
    # mean NFE and length per bar equal the direct means
    for r in table.to_dict("records"):
        sub = df[(df["method"] == r["method"]) & (df["task"] == r["task"]) & (df["gen_length"] == r["gen_length"])
                 & (df["temperature"] == t_star)]
        row = [ln for ln in fig2.splitlines() if ln.startswith(f"| {r['task']} | {r['gen_length']} | {r['method']} |")]
        assert len(row) == 1
        cols = [c.strip() for c in row[0].strip("|").split("|")]
        assert cols[8] == f"{sub['nfe'].mean():.1f}" and cols[9] == f"{sub['length'].mean():.1f}"


def test_passk_numbers_equal_metrics(report, runs):
    _, text = report
    df = read_all_scores(runs)
    fig1c = text.split("## Figure 1c")[1].split("## Figure 2")[0]
    table = metrics.passk_table(df[df["temperature"] == 0.3], ks=(1, 2, 4))
    checked = 0
    for r in table[table["k"] == 2].to_dict("records"):
        row = [ln for ln in fig1c.splitlines()
               if ln.startswith(f"| {r['task']} | {r['gen_length']} | {r['method']} |")]
        assert len(row) == 1
        cols = [c.strip() for c in row[0].strip("|").split("|")]
        assert cols[4] == "1" and cols[7] == f"{100 * r['pass_at_k']:.1f}"     # one seed; Pass@2
        checked += 1
    assert checked == 5  # espo @ 256 has no records at T = 0.3
    # comparison table: same numbers as metrics.compare_table at the primary k
    cmp = metrics.compare_table(df, "trafl", "base", 2, n_permutations=500)
    block = text.split("**Pass@2 (primary k = 2): trafl (A) vs base (B)**")[1].split("**Pass@2")[0]
    for r in cmp.to_dict("records"):
        pat = (f"| {r['task']} | {r['gen_length']} | {r['temperature']} | {r['n_problems']}"
               f"{' (' + str(r['n_unpaired']) + ' unpaired)' if r['n_unpaired'] else ''} | "
               f"{100 * r['pass_a']:.1f} | {100 * r['pass_b']:.1f} | {100 * r['diff']:+.1f} |")
        assert pat in block, pat


def test_transfer_and_difficulty_tables(report):
    _, text = report
    fig3a = text.split("## Figure 3a")[1].split("## Figure 3b")[0]
    assert "| GSM8K | minerva | 128 | trafl@gsm8k |" in fig3a
    assert "| MATH | minerva | 128 | trafl@math |" in fig3a
    fig3b = text.split("## Figure 3b")[1].split("## Paired")[0]
    assert "| 128 | easy | trafl |" in fig3b and "| 128 | hard | base |" in fig3b


def test_absent_data_skips_with_reason(tmp_path):
    rng = np.random.default_rng(1)
    Store(tmp_path / "runs" / "a").append("scores", _records("trafl", "gsm8k", 0.6, 128, rng))
    path = build_report(ReportConfig(runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), k=2,
                                     n_permutations=200))
    text = path.read_text()
    assert "Figure 1b skipped: no records for the base method 'base'" in text
    assert "Figure 3a skipped" in text and "Figure 3b skipped" in text
    assert not (tmp_path / "out" / "fig1b_gap_to_base.png").exists()
    assert (tmp_path / "out" / "fig1c_all_methods.png").stat().st_size > 0


def test_split_label():
    assert split_label("trafl@gsm8k") == ("trafl", "gsm8k")
    assert split_label("base") == ("base", None)
    assert math.isclose(closest_temperature([0.3, 0.9, 0.5]), 0.5)


def test_cli(runs, tmp_path):
    from dlm_bench.commands import report as cmd
    import argparse
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["--runs", str(runs), "--out", str(tmp_path / "r"), "--k", "2", "--bar-k", "4",
                         "--formats", "png"])
    assert cmd.run(args) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert (tmp_path / "r" / "fig2_passk_task_length.png").stat().st_size > 0
    assert not (tmp_path / "r" / "fig2_passk_task_length.pdf").exists()
    # Fig 2 at k = 4: "Pass@4 ± SE" equals metrics.passk_table recomputed directly
    df = read_all_scores(runs)
    table = metrics.passk_table(df[df["temperature"] == 0.3], ks=(4,))
    fig2 = text.split("## Figure 2")[1].split("## Figure 3a")[0]
    for r in table.to_dict("records"):
        cell = f"{100 * r['pass_at_k']:.1f} ± {100 * r['se']:.1f}"
        assert f"| {r['task']} | {r['gen_length']} | {r['method']} | {r['n_problems']} | 1 | 4 | {cell} |" in fig2
    assert pd.read_csv(tmp_path / "r" / "tables" / "fig2_cells.csv").shape[0] > 0


def test_compare_cli_agrees_with_report_and_writes_csv_json(report, runs, tmp_path, capsys):
    """`compare` and `report` give the same differences, CIs and MDEs for the same cell."""
    import argparse
    import json

    from dlm_bench.commands import compare as cmd
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["trafl", "base", "--runs", str(runs), "--k", "2", "--resamples", "200",
                         "--csv", str(tmp_path / "c.csv"), "--json", str(tmp_path / "c.json")])
    assert cmd.run(args) == 0
    mine = pd.read_csv(tmp_path / "c.csv")
    theirs = pd.read_csv(report[0] / "tables" / "compare_vs_base_k2.csv")
    theirs = theirs[theirs["method_a"] == "trafl"]
    cols = ["task", "gen_length", "temperature", "diff", "ci_low", "ci_high", "mde", "power"]
    pd.testing.assert_frame_equal(mine[cols].reset_index(drop=True), theirs[cols].reset_index(drop=True))
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["settings"]["n_resamples"] == 200 and len(saved["rows"]) == len(mine)
    assert saved["rows"][0]["ci_low"] == pytest.approx(mine["ci_low"].iloc[0])
    out = capsys.readouterr().out
    assert "Diff (pp)" in out and "MDE (pp)" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| gsm8k |")]
    for ln, mde in zip(rows, mine["mde"]):       # every row states its minimum detectable difference
        assert f"| {100 * mde:.1f} |" in ln
