"""The figure rules, checked on the matplotlib objects of a rendered report (not on pixels): shared
y-axes, one legend per figure with one entry per method, a CI for every point estimate, a fixed
colour per method, readable fonts, y-axes that say where they start, and no pooling of cells that
differ between methods."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex, to_rgba_array

from dlm_bench.report.build import render
from dlm_bench.report.common import ReportConfig
from dlm_bench.report.style import METHOD_COLORS, method_color
from dlm_bench.runs.store import Store
from test_report import _records

# TraFL was not run on GSM8K (the case): pooled figures must leave GSM8K out for everyone,
# and per-cell figures must still list TraFL although it has no point in the first group.
PLAN = {"base": ("gsm8k", "math500"), "espo": ("gsm8k", "math500"), "trafl": ("math500",)}


def _store(root, plan, seed=0):
    rng = np.random.default_rng(seed)
    for method, tasks in plan.items():
        for task in tasks:
            for temp in (0.3, 0.9):
                for length in (128, 256):
                    Store(root / method / f"{task}_T{temp}_L{length}").append(
                        "scores", _records(method, task, temp, length, rng, problems=8, n=6))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig_runs")
    _store(root, PLAN)
    out = tmp_path_factory.mktemp("fig_report")
    cfg = ReportConfig(runs=str(root), out=str(out), k=2, bar_k=2, n_permutations=200, formats=("png",))
    rep = render(cfg)
    return rep, (out / "report.md").read_text()


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _legend(fig):
    assert len(fig.legends) == 1, "one legend per figure"
    assert all(ax.get_legend() is None for ax in fig.axes), "no per-panel legends"
    leg = fig.legends[0]
    return leg, [t.get_text() for t in leg.get_texts()]


def _handle_color(h):
    """The colour a legend entry shows, as #rrggbb (errorbar entries are collections of lines)."""
    line = h[0] if isinstance(h, ErrorbarContainer) else h
    c = line.get_color() if hasattr(line, "get_color") else line.get_edgecolor()
    c = np.atleast_2d(to_rgba_array(c))[0]
    return to_hex(c)


FIGS = ("fig1a_passk_vs_k", "fig1b_gap_to_base", "fig1c_all_methods", "fig2_passk_task_length")


@pytest.mark.parametrize("name", FIGS)
def test_shared_y_fonts_and_one_legend(rendered, name):
    fig = rendered[0].figures[name]
    axes = _visible(fig)
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
    leg, _ = _legend(fig)
    sizes = [t.get_fontsize() for t in leg.get_texts()]
    for ax in axes:
        sizes += [t.get_fontsize() for t in ax.get_yticklabels() + ax.get_xticklabels()]
        sizes += [ax.title.get_fontsize(), ax.yaxis.label.get_fontsize()]
    assert min(sizes) >= 9
    lo, _ = axes[0].get_ylim()
    if name != "fig1b_gap_to_base" and lo > 0:
        assert "starts at" in axes[0].get_ylabel()  # a y-axis that is not from 0 says so
    if name == "fig1b_gap_to_base":
        assert lo <= 0 <= axes[0].get_ylim()[1]  # the zero line of a gap is on the plot


@pytest.mark.parametrize("name, methods", [
    ("fig1b_gap_to_base", ["espo", "trafl"]),
    ("fig1c_all_methods", ["base", "espo", "trafl"]),
    ("fig2_passk_task_length", ["base", "espo", "trafl"]),
])
def test_legend_has_every_method_once_in_its_fixed_colour(rendered, name, methods):
    leg, labels = _legend(rendered[0].figures[name])
    assert labels == methods
    assert [_handle_color(h) for h in leg.legend_handles] == [METHOD_COLORS[m].lower() for m in methods]


def test_every_curve_has_a_band_and_every_point_an_error_bar(rendered):
    figs = rendered[0].figures
    for name in ("fig1a_passk_vs_k", "fig1b_gap_to_base", "fig1c_all_methods"):
        for ax in _visible(figs[name]):
            curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert curves and len(bands) == len(curves), name
            for ln, band in zip(curves, bands):  # each band in its curve's colour
                assert to_hex(band.get_facecolor()[0]) == to_hex(ln.get_color())
    ax = _visible(figs["fig2_passk_task_length"])[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 * 2 * 3 - 2 * 1  # (task x length) groups x methods, minus trafl on gsm8k
    assert all(c.has_yerr for c in bars)


def test_pooled_figures_use_the_common_cells_and_say_which(rendered):
    _, text = rendered
    assert ("left out, not run for every method and temperature: gsm8k @ 128, gsm8k @ 256" in text)
    fig1a = text.split("## Figure 1a")[1].split("## Figure 1b")[0]
    rows = [ln for ln in fig1a.splitlines() if ln.startswith("| base |") or ln.startswith("| espo |")
            or ln.startswith("| trafl |")]
    assert len(rows) == 6 and all(ln.split("|")[3].strip() == "2" for ln in rows)  # math500 @ 128, 256


def test_method_colours_do_not_depend_on_the_report(tmp_path, monkeypatch):
    import test_report
    monkeypatch.setitem(test_report.RATE, "newmethod", 0.4)
    _store(tmp_path / "runs", {"base": ("math500",), "trafl": ("math500",), "newmethod": ("math500",)})
    rep = render(ReportConfig(runs=str(tmp_path / "runs"), out=str(tmp_path / "out"), k=2, bar_k=2,
                              n_permutations=200, formats=("png",)))
    leg, labels = _legend(rep.figures["fig1c_all_methods"])
    colors = dict(zip(labels, map(_handle_color, leg.legend_handles)))
    assert colors["trafl"] == METHOD_COLORS["trafl"].lower() and colors["base"] == METHOD_COLORS["base"]
    assert colors["newmethod"] == method_color("newmethod").lower()
    assert method_color("newmethod") not in METHOD_COLORS.values()
    from dlm_bench.methods import method_names
    registered = [method_color(m) for m in method_names()]
    assert len(set(registered)) == len(registered)          # no two registered methods share a colour
    assert method_color("trafl@gsm8k") == METHOD_COLORS["trafl"]
    assert "#F0E442" not in METHOD_COLORS.values()  # Okabe-Ito yellow is unreadable on white
