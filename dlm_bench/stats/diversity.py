"""How many different ways does a method solve a problem?

Offline measures (no endpoint): distinct correct final answers, distinct correct completions after
whitespace/case normalisation, and for Countdown distinct expression trees up to commutativity;
and embedding diversity (Vendi score, mean cosine distance, clusters) from a local
sentence-embedding model or a labelled lexical fallback (dlm_bench.stats.embeddings). The TraFL
LLM-judge comparison of two methods is in dlm_bench.judge.pairs.

All functions take per-sample rows (generations.jsonl, which carries `correct` and `text`).
"""
from __future__ import annotations

import ast
import math
import re

import numpy as np
import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.stats.metrics import BY, mean_se

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
    """Tasks whose answers are arithmetic expressions (Countdown, the CPU testbed): by the task's
    declared `answer_kind`, never by its name."""
    from dlm_bench.tasks import answer_kind
    return answer_kind(str(task)) == "expression"


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


# --------------------------------------------------------------------------- embeddings (dlm_bench.stats.embeddings)

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


def embedding_summary(df: pd.DataFrame, embed, by=BY, threshold: float = 0.9) -> pd.DataFrame:
    """Per cell: mean ± SE over solved problems of the Vendi score and the mean pairwise cosine
    distance of the correct completions (`embedding_table`)."""
    by = list(by)
    per = embedding_table(df, embed, by, only_correct=True, threshold=threshold)
    rows = []
    for key, grp in per.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        solved = grp[grp["n"] > 0]
        row = dict(zip(by, key))
        for m in ("vendi", "mean_cos_distance"):
            vals = solved[m].dropna()
            row[m], row[f"{m}_se"] = mean_se(vals) if len(vals) else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)
