"""The rules every report figure follows, in one place so no figure can drift from them.

- One colour per method, the same in every figure and every report: a fixed colour-blind-safe
  (Okabe–Ito) colour for each registered method, a stable hash into a second safe set for others.
  Labels such as `trafl@gsm8k` take the colour of `trafl`.
- Panels of one figure share their y-axis; the range fits the data and its CIs, and a y-axis that
  does not start at 0 says so in its label.
- One legend per figure, built from the series of all panels (never from the first panel only).
- Font sizes a reader can read at print size.
"""
from __future__ import annotations

import math
import zlib

# Okabe & Ito (2008) without its yellow, which vanishes on white
METHOD_COLORS = {"base": "#000000", "trafl": "#0072B2", "espo": "#D55E00", "justgrpo": "#009E73",
                 "tracerl": "#CC79A7", "tabom": "#E69F00",
                 # the field's baselines, fixed from Paul Tol's muted set so that no two registered methods share one
                 "diffu_grpo": "#999933", "wd1": "#882255", "spg": "#332288",
                 # issue 25's methods, from Paul Tol's "bright" and "light" sets (no yellow: unreadable on white)
                 "coupled_grpo": "#4477AA", "vrpo": "#EE6677", "bgpo": "#228833", "d2_stepmerge": "#CCBB44",
                 "d2_anyorder": "#66CCEE", "ebpo": "#AA3377", "mdpo": "#EE8866", "cj_grpo": "#77AADD",
                 "dtreerpo": "#AAAA00", "dmpo": "#FFAABB", "egspo": "#99DDFF"}
# Paul Tol's "muted" set (also colour-blind-safe) for method names not listed above
OTHER_COLORS = ("#56B4E9", "#44AA99", "#AA4499", "#117733", "#888888")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")

STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12}


def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    matplotlib.rcParams.update(STYLE)
    return pyplot


def method_color(method) -> str:
    name = str(method).partition("@")[0].lower()
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return OTHER_COLORS[zlib.crc32(name.encode()) % len(OTHER_COLORS)]


def grid(n: int, width: float = 4.2, height: float = 3.2, max_cols: int = 3):
    """A figure of n panels sharing the y-axis, with room below for the figure's legend."""
    cols = max(1, min(n, max_cols))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt().subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False,
                               sharey=True, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.grid(alpha=0.3)
        ax.yaxis.set_tick_params(labelleft=True)  # each panel keeps its numbers: panels wrap rows
    return fig, flat[:n]


def figure_legend(fig, axes, order: list | None = None, title: str | None = None, handles=None):
    """One legend below the panels with every labelled series of every panel (or `handles`)."""
    if handles is None:
        seen = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(label, h)
        rank = {m: i for i, m in enumerate(order or [])}
        labels = sorted(seen, key=lambda m: rank.get(m, len(rank)))
        handles = [seen[m] for m in labels]
    if handles:
        # about 1.4 inches per entry: a one-panel figure wraps the legend instead of clipping it
        cols = min(len(handles), 6, max(2, int(fig.get_figwidth() // 1.4)))
        fig.legend(handles=handles, loc="outside lower center", ncol=cols, title=title, frameon=False)


def fit_y(axes, label: str, include_zero: bool = False, bounds=(0.0, 100.0)) -> str:
    """Set the shared y-range from what the panels drew (lines, bands, error bars) with a margin,
    starting at 0 when the data comes near it; label it, saying where it starts when that is not 0.
    Returns that remark for the caption ("" when the axis starts at 0 or includes it)."""
    lows, highs = [], []
    for ax in axes:
        y0, y1 = ax.dataLim.y0, ax.dataLim.y1
        if math.isfinite(y0) and math.isfinite(y1) and ax.has_data():
            lows.append(y0)
            highs.append(y1)
    if not lows:
        return ""
    lo, hi = min(lows), max(highs)
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = max(0.06 * (hi - lo), 1.0)
    lo, hi = lo - pad, hi + pad
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1] + pad)
        if lo < 0.25 * hi:  # close to 0: show 0, nothing is exaggerated then
            lo = bounds[0]
        lo = math.floor(lo / 5) * 5 if lo > bounds[0] else lo
    axes[0].set_ylim(lo, hi)
    note = "" if bounds is None or lo <= bounds[0] else f"y-axis starts at {lo:g}, not 0"
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec is None or spec.is_first_col():
            ax.set_ylabel(label + (f"\n({note})" if note else ""))
    return note


def dot_panel(ax, groups: list, methods: list[str], values: dict, marks: dict | None = None,
              labels: list[str] | None = None) -> None:
    """Point estimates with CI error bars, methods side by side within each group:
    `values[(group, method)] = (mean, low, high)` as fractions; a missing one is marked n/a."""
    width = 0.8 / max(1, len(methods))
    ax.set_xlim(-0.5, len(groups) - 0.5)
    for i in range(1, len(groups)):
        ax.axvline(i - 0.5, color="0.85", lw=0.8)
    for j, m in enumerate(methods):
        for i, g in enumerate(groups):
            x = i - 0.4 + width * (j + 0.5)
            v = values.get((g, m))
            if v is None or not math.isfinite(v[0]):
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=9, color="0.4",
                        transform=ax.get_xaxis_transform())
                continue
            mean, low, high = (100 * float(u) for u in v)
            err = ([[mean - low], [high - mean]] if math.isfinite(low) and math.isfinite(high) else None)
            ax.errorbar([x], [mean], yerr=err, fmt=MARKERS[0], ms=6, color=method_color(m), capsize=3,
                        elinewidth=1.5, label=m)
            mark = (marks or {}).get((g, m))
            if mark:
                top = high if math.isfinite(high) else mean
                ax.annotate(mark, (x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=10)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels or [str(g) for g in groups])
    ax.grid(axis="x", visible=False)
