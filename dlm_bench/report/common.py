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
from dlm_bench.stats.seed_level import UNTRAINED, seed_mean_ci

TARGET_T = 0.6
FIG_K = 5  # Fig 2 is Pass@5 in the paper
DIFFICULTIES = ("easy", "medium", "hard")
UNIT = ["task", "gen_length", "problem_id"]
SEED = "train_seed"          # per-seed rows (runs.index.read_seeded_scores); UNTRAINED outside seed folders


@dataclass
class ReportConfig:
    runs: str
    out: str
    k: int = 5                     # primary k of the comparison tables
    base: str = "base"
    target_temperature: float = TARGET_T
    confidence: float = 0.95
    alpha: float = 0.05
    n_permutations: int = 20_000
    seed: int = 0
    formats: tuple = ("png", "pdf")
    bar_k: int = FIG_K             # k of the per-task bars (Fig 2; the paper's Pass@5)
    difficulties: dict | None = None   # LiveCodeBench problem_id -> easy/medium/hard
    title: str | None = None
    embed_model: str | None = None     # local sentence-embedding model dir; None: lexical fallback
    matched_runs: str | None = None    # RESULTS/passk-rollout: sweeps under each model's training decoder
    train_logs: bool = True            # the training-reward section (from each run's log.jsonl)


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


def seed_matrix(counts: pd.DataFrame, ks, unit=UNIT) -> tuple[np.ndarray, list, list]:
    """Per-seed Pass@k of these rows as an (S, U, K) array on the units every seed has (a unit some
    seed lacks is left out), with the units and the training seeds (one UNTRAINED run without seeds)."""
    ks = [int(k) for k in np.atleast_1d(ks)]
    rows = counts if SEED in counts else counts.assign(**{SEED: UNTRAINED})
    n = rows.pivot_table(index=SEED, columns=unit, values="n", aggfunc="first").dropna(axis=1)
    c = rows.pivot_table(index=SEED, columns=unit, values="c", aggfunc="first")[n.columns]
    if n.shape[1] == 0:
        return np.zeros((len(n.index), 0, len(ks))), [], list(n.index)
    v = metrics.pass_at_k(n.to_numpy().astype(int).ravel(), c.to_numpy().astype(int).ravel(), ks)
    return v.reshape(n.shape + (len(ks),)), list(n.columns), list(n.index)


def paired_matrices(a: pd.DataFrame, b: pd.DataFrame, ks, unit=UNIT):
    """`seed_matrix` of two methods' rows on the units both have: (ya, yb, units, seeds_a, seeds_b)."""
    va, ua, sa = seed_matrix(a, ks, unit)
    vb, ub, sb = seed_matrix(b, ks, unit)
    both = sorted(set(ua) & set(ub))
    ia, ib = {u: i for i, u in enumerate(ua)}, {u: i for i, u in enumerate(ub)}
    return va[:, [ia[u] for u in both]], vb[:, [ib[u] for u in both]], both, sa, sb


def untrained(seeds: list) -> bool:
    """One run outside every seed folder: the untrained base (its variance is sampling only)."""
    return list(seeds) == [UNTRAINED]


def interval_text(counts: pd.DataFrame, confidence: float, what: str = "bands") -> str:
    """What every band and interval of a figure is, given how many training seeds its methods have."""
    per = counts.groupby("method")[SEED].nunique() if SEED in counts else pd.Series(dtype=int)
    several = sorted({int(x) for x in per if x > 1})
    if not several:
        return (f"{what}: {confidence:.0%} t-intervals over problems; one training seed per method, so they "
                "cover sampling variance only, not retraining")
    return (f"trained methods: mean over {'/'.join(map(str, several))} training seeds; {what}: "
            f"{confidence:.0%} seed-level intervals over seeds and problems (docs/statistics.md); a method "
            "with one run (the untrained base): t-interval over problems")


def passk_curve(counts: pd.DataFrame, cfg: ReportConfig, kmax: int | None = None) -> pd.DataFrame:
    """Mean Pass@k over seeds and units with its SE and interval (`seed_level.seed_mean_ci`: the
    seed-level interval with several training seeds, the problem-level t-interval with one), k = 1..kmax."""
    kmax = _kmax(counts) if kmax is None else kmax
    if kmax < 1:
        return pd.DataFrame(columns=["k", "pass_at_k", "se", "ci_low", "ci_high", "n_units", "n_seeds"])
    ks = list(range(1, kmax + 1))
    vals, units, seeds = seed_matrix(counts, ks)
    rows = []
    for j, k in enumerate(ks):
        lv = seed_mean_ci(vals[:, :, j], cfg.confidence)
        rows.append({"k": k, "pass_at_k": lv.mean, "se": lv.se, "ci_low": lv.low, "ci_high": lv.high,
                     "ci_method": lv.method, "n_units": len(units), "n_seeds": len(seeds)})
    return pd.DataFrame(rows)


def cell_stats(df: pd.DataFrame, counts: pd.DataFrame, k: int, cfg: ReportConfig) -> pd.DataFrame:
    """Per (method, task, gen_length, temperature): Pass@k (mean over seeds) ± SE and its interval (NaN
    where n < k), problems, seeds, n, mean NFE and mean completion length over samples."""
    by = list(metrics.BY)
    rows = []
    cost = df.groupby(by, dropna=False).agg(nfe=("nfe", "mean"), length=("length", "mean"))
    for key, grp in counts.groupby(by, dropna=False, sort=True):
        n_min = int(grp["n"].min())
        vals, units, seeds = seed_matrix(grp, [min(k, n_min)], ["problem_id"])
        lv = seed_mean_ci(vals[:, :, 0], cfg.confidence) if n_min >= k else None
        nfe, length = cost.loc[key] if key in cost.index else (math.nan, math.nan)
        rows.append(dict(zip(by, key), k=k, n_problems=len(units), n_seeds=len(seeds), n_samples=n_min,
                         pass_at_k=lv.mean if lv else math.nan, se=lv.se if lv else math.nan,
                         ci_low=lv.low if lv else math.nan, ci_high=lv.high if lv else math.nan,
                         mean_nfe=float(nfe), mean_length=float(length)))
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
