"""Shared pieces of the report: its config, the report under construction, helpers for Pass@k and figures."""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dlm_bench.stats import metrics

TARGET_T = 0.6
FIG_K = 5  # Fig 2 is Pass@5 in the paper
DIFFICULTIES = ("easy", "medium", "hard")
UNIT = ["task", "gen_length", "problem_id"]


@dataclass
class ReportConfig:
    runs: str
    out: str
    k: int = 5                     # primary k of the comparison tables
    base: str = "base"
    target_temperature: float = TARGET_T
    confidence: float = 0.95
    alpha: float = 0.05
    n_resamples: int = metrics.N_RESAMPLES  # bootstrap resamples (bands, CIs); compare and judge use the same
    n_permutations: int = 20_000
    seed: int = 0
    formats: tuple = ("png", "pdf")
    bar_k: int = FIG_K             # k of the per-task bars (Fig 2; the paper's Pass@5)
    difficulties: dict | None = None   # LiveCodeBench problem_id -> easy/medium/hard
    title: str | None = None
    embed_model: str | None = None     # local sentence-embedding model dir; None: lexical fallback


@dataclass
class Report:
    cfg: ReportConfig
    out: Path
    lines: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)   # name -> matplotlib Figure
    paths: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))
        self.add(f"*{what} skipped: {why}.*", "")


# --------------------------------------------------------------------------- small helpers

def pct_text(x, digits: int = 1, sign: bool = False) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{100 * float(x):+.{digits}f}" if sign else f"{100 * float(x):.{digits}f}"


def num_text(x, digits: int = 1) -> str:
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{float(x):.{digits}f}"


def temp_text(x) -> str:
    """A temperature as text: 0.6, not 0.6000000001."""
    return f"{float(x):g}"


def md_table(header: list[str], rows: list[list[str]], right_from: int = 0) -> list[str]:
    align = [":---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(str(c) for c in r) + " |" for r in [header, align] + rows]


def split_label(method: str) -> tuple[str, str | None]:
    """'trafl@gsm8k' -> ('trafl', 'gsm8k'); 'base' -> ('base', None)."""
    name, sep, train = str(method).partition("@")
    return (name, train) if sep and train else (str(method), None)


def train_name(train: str) -> str:
    t = train.lower()
    return "GSM8K" if "gsm" in t else "MATH" if "math" in t else train


def order_methods(methods, base: str) -> list[str]:
    ms = sorted({str(m) for m in methods})
    return ([base] if base in ms else []) + [m for m in ms if m != base]


def closest_temperature(temps, target: float = TARGET_T) -> float | None:
    temps = sorted({float(t) for t in temps})
    if not temps:
        return None
    return min(temps, key=lambda t: (abs(t - target), t))


def report_rng(seed: int, *key) -> np.random.Generator:
    tag = zlib.crc32("|".join(map(str, key)).encode())
    return np.random.default_rng([int(seed), tag])


def is_minerva(task) -> bool:
    return "minerva" in str(task).lower()


def lcb_base(task) -> str | None:
    """The difficulty encoded in a LiveCodeBench task label ('livecodebench_easy'), '' when the
    label has none, None when the task is not LiveCodeBench."""
    t = str(task).lower()
    if "livecodebench" not in t and not t.startswith("lcb"):
        return None
    m = re.search(r"(?:^|[_:/@\-.])(easy|medium|hard)$", t)
    return m.group(1) if m else ""


# --------------------------------------------------------------------------- Pass@k pieces

def _kmax(counts: pd.DataFrame) -> int:
    return int(counts["n"].min()) if len(counts) else 0


def passk_curve(counts: pd.DataFrame, cfg: ReportConfig, key: tuple, kmax: int | None = None) -> pd.DataFrame:
    """Mean Pass@k, SE and bootstrap CI over the rows of `counts` (per-problem n, c), k = 1..kmax;
    `key` seeds the bootstrap so a curve's band does not depend on drawing order."""
    kmax = _kmax(counts) if kmax is None else kmax
    if kmax < 1:
        return pd.DataFrame(columns=["k", "pass_at_k", "se", "ci_low", "ci_high", "n_units"])
    ks = list(range(1, kmax + 1))
    vals = metrics.pass_at_k(counts["n"].to_numpy(), counts["c"].to_numpy(), ks)
    rows = []
    for j, k in enumerate(ks):
        m, se = metrics.mean_se(vals[:, j])
        ci = metrics.bootstrap_ci(vals[:, j], cfg.confidence, cfg.n_resamples, report_rng(cfg.seed, *key, k))
        rows.append({"k": k, "pass_at_k": m, "se": se, "ci_low": ci.low, "ci_high": ci.high,
                     "n_units": len(counts)})
    return pd.DataFrame(rows)


def cell_stats(df: pd.DataFrame, counts: pd.DataFrame, k: int, cfg: ReportConfig) -> pd.DataFrame:
    """Per (method, task, gen_length, temperature): Pass@k ± SE and bootstrap CI (NaN where n < k),
    problems, n, mean NFE and mean completion length over samples."""
    by = list(metrics.BY)
    rows = []
    cost = df.groupby(by, dropna=False).agg(nfe=("nfe", "mean"), length=("length", "mean"))
    for key, grp in counts.groupby(by, dropna=False, sort=True):
        n_min = int(grp["n"].min())
        ci = metrics.CI(math.nan, math.nan, "undefined")
        if n_min >= k:
            vals = metrics.pass_at_k(grp["n"].to_numpy(), grp["c"].to_numpy(), k)
            m, se = metrics.mean_se(vals)
            ci = metrics.bootstrap_ci(vals, cfg.confidence, cfg.n_resamples, report_rng(cfg.seed, "cell", *key, k))
        else:
            m, se = math.nan, math.nan
        nfe, length = cost.loc[key] if key in cost.index else (math.nan, math.nan)
        rows.append(dict(zip(by, key), k=k, n_problems=len(grp), n_samples=n_min, pass_at_k=m, se=se,
                         ci_low=ci.low, ci_high=ci.high, mean_nfe=float(nfe), mean_length=float(length)))
    return pd.DataFrame(rows)


def common_units(counts: pd.DataFrame) -> tuple[pd.DataFrame, list, list]:
    """The rows of the (task, gen_length, problem) units that every method has at every
    temperature, so a curve pooled over units compares like with like; with the (task, length)
    cells kept and those left out (not run for every method and temperature)."""
    groups = [set(map(tuple, g[UNIT].itertuples(index=False)))
              for _, g in counts.groupby(["method", "temperature"])]
    common = set.intersection(*groups) if groups else set()
    keep = [u in common for u in map(tuple, counts[UNIT].itertuples(index=False))]
    kept = counts[keep]
    cells = sorted(set(map(tuple, counts[["task", "gen_length"]].drop_duplicates().itertuples(index=False))))
    have = set(map(tuple, kept[["task", "gen_length"]].drop_duplicates().itertuples(index=False)))
    return kept, [c for c in cells if c in have], [c for c in cells if c not in have]


def numeric_cost(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in ("nfe", "length"):
        out[col] = pd.to_numeric(out[col], errors="coerce") if col in out else math.nan
    return out


# --------------------------------------------------------------------------- saving figures

def save_figure(rep: Report, fig, name: str, caption: str) -> None:
    from dlm_bench.report.style import plt
    paths = []
    for fmt in rep.cfg.formats:
        p = rep.out / f"{name}.{fmt}"
        fig.savefig(p, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(p)
    plt().close(fig)
    rep.figures[name] = fig  # closed, but its artists stay inspectable (tests check the structure)
    rep.paths.append(paths)
    rep.add(f"![{name}]({name}.{rep.cfg.formats[0]})", "", caption, "")
