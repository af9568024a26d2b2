"""Countdown (3 numbers), as in d1 / wd1 / SPG / ESPO: combine the given numbers with + - * / and
parentheses, each exactly once, to reach the target.

Test = d1's 256 problems; train = the 3-number rows of the local Countdown-Tasks-3to4 prefix (d1 trains
on 3-number rows) or the hub dataset; `generate(n, seed)` makes more, each with a known solution.

Grading never calls eval: the expression is parsed with `ast` and only integer literals, + - * /, unary
minus and parentheses are accepted; arithmetic is exact (Fraction).
"""
from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction
from itertools import combinations

from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from dlm_bench.tasks.data import load_rows

from ._math import boxed_contents

MAX_EXPR_CHARS = 500  # a 3-number expression is short; longer text is not an answer

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def extract_expression(completion: str) -> tuple[str | None, bool]:
    """(expression text, came from an explicit answer format). Last \\boxed{} → last <answer> → last line."""
    boxes = [b for b in boxed_contents(completion) if b.strip()]
    if boxes:
        return boxes[-1], True
    tags = [t for t in _ANSWER_TAG_RE.findall(completion) if t.strip()]
    if tags:
        inner = tags[-1]
        inner_boxes = boxed_contents(inner)  # "<answer>\boxed{..}</answer>" with a cut-off box
        return (inner_boxes[-1] if inner_boxes else inner), True
    lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else None), False


def normalize_expression(expr: str) -> str:
    """LaTeX and unicode operators → Python; drop a trailing "= target" and math delimiters."""
    s = expr.strip()
    s = re.sub(r"\\(?:times|cdot|ast)(?![A-Za-z])|×|·|∗", "*", s)
    s = re.sub(r"\\div(?![A-Za-z])|÷", "/", s)
    s = s.replace("\u2212", "-").replace("\u2013", "-")
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = re.sub(r"\\left|\\right|\\[,;!]|\\\(|\\\)|\\\[|\\\]|\$", " ", s)
    s = s.replace("{", "(").replace("}", ")")
    s = s.strip().rstrip(".").strip()
    if "=" in s:  # "(a + b) * c = 24" or "24 = (a + b) * c": keep the side that is not just a number
        sides = [p.strip() for p in s.split("=") if p.strip()]
        exprs = [p for p in sides if not re.fullmatch(r"-?\d+(?:\.\d+)?", p)]
        s = exprs[0] if len(exprs) == 1 else s
    return s


def _value(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _value(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def _literals(node) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def check_expression(expr: str, numbers: list[int], target: int) -> str:
    """'correct', 'wrong' (valid use of the numbers, other value), 'invalid' (disallowed syntax, numbers
    misused, division by zero) or 'parse_error' (not an expression at all)."""
    if len(expr) > MAX_EXPR_CHARS:
        return "parse_error"
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "parse_error"
    try:
        lits = _literals(tree)
        if any(type(v) is not int for v in lits):
            return "invalid"  # floats, strings, ... are not the given numbers
        if Counter(lits) != Counter(numbers):
            return "invalid"  # each given number exactly once, nothing else
        value = _value(tree)  # checks every node type; numbers are already known to be the given ones
    except (ValueError, ZeroDivisionError, RecursionError):
        return "invalid"
    return "correct" if abs(float(value) - target) < 1e-5 else "wrong"


def solve(numbers: list[int], target: int, all_solutions: bool = False):
    """Brute force over every pairwise combination order (covers every binary expression tree).

    Returns one expression string (or None); with all_solutions, the set of distinct expressions.
    """
    found: set[str] = set()

    def rec(items: list[tuple[Fraction, str]]) -> bool:
        if len(items) == 1:
            if items[0][0] == target:
                found.add(items[0][1])
                return not all_solutions
            return False
        for i, j in combinations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            (a, ea), (b, eb) = items[i], items[j]
            cands = [(a + b, f"{ea} + {eb}"), (a * b, f"{ea} * {eb}"),
                     (a - b, f"{ea} - {eb}"), (b - a, f"{eb} - {ea}")]
            if b != 0:
                cands.append((a / b, f"{ea} / {eb}"))
            if a != 0:
                cands.append((b / a, f"{eb} / {ea}"))
            for v, e in cands:
                wrapped = e if len(rest) == 0 else f"({e})"
                if rec(rest + [(v, wrapped)]):
                    return True
        return False

    rec([(Fraction(n), str(n)) for n in numbers])
    if all_solutions:
        return found
    return next(iter(found), None)


def generate(n: int, seed: int = 0, n_numbers: int = 3, max_number: int = 99,
             target_range: tuple[int, int] = (10, 100), exclude=()) -> list[dict]:
    """`n` solvable problems {"numbers", "target", "solution"}, reproducible from `seed`.

    Defaults follow Countdown-Tasks-3to4's 3-number rows (numbers 1-99, targets 10-100). The target is
    the value of a random expression over the numbers, so a solution always exists. `exclude` holds
    (sorted numbers tuple, target) pairs to skip, e.g. the test set.
    """
    rng = random.Random(seed)
    skip = {(tuple(sorted(ns)), t) for ns, t in exclude}
    out, seen = [], set()
    ops = ["+", "-", "*", "/"]
    while len(out) < n:
        nums = [rng.randint(1, max_number) for _ in range(n_numbers)]
        items = [(Fraction(x), str(x)) for x in nums]
        while len(items) > 1:  # combine two random items with a random operator
            i, j = rng.sample(range(len(items)), 2)
            (a, ea), (b, eb) = items[i], items[j]
            op = rng.choice(ops)
            if op == "/" and (b == 0 or (a / b).denominator != 1):
                op = rng.choice(ops[:3])
            v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a + b}[op]
            items = [items[k] for k in range(len(items)) if k not in (i, j)] + [(v, f"({ea} {op} {eb})")]
        value, expr = items[0]
        if value.denominator != 1 or not target_range[0] <= value <= target_range[1]:
            continue
        key = (tuple(sorted(nums)), int(value))
        if key in skip or key in seen:
            continue
        seen.add(key)
        out.append({"numbers": nums, "target": int(value), "solution": expr[1:-1]})
    return out


@register_task
class Countdown(Task):
    name = "countdown"
    answer_kind = "expression"
    eval_split = "test"
    train_split = "train"
    splits = {"test": 256, "train": 4926, "synthetic": 10000}
    data_files = {"test": "countdown/countdown_cd3_test.jsonl", "train": "countdown/train_10k_prefix.parquet"}
    synthetic_seed = 0
    # d1 eval/countdown.py CTD_SYSTEM_PROMPT + "\n\n" + question, all in the user turn (the missing space
    # before "Respond" is in the original). d1 also prefills "<reasoning>" after the chat template.
    prompt_template = (
        "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the "
        "provided target number. You may use the operations +, -, *, and / as needed, but each number must "
        "be used exactly once. Think step-by-step. After reasoning, provide only your final expression "
        "inside \\boxed{{}} tags without including an equals sign or the target number. For example: "
        "\\boxed{{a + b * c}}Respond in the following format:\n<reasoning>\nYour reasoning here\n"
        "</reasoning>\n<answer>\n\\boxed{{...}}\n</answer>\n\n{question}")
    template_source = "dllm-reasoning/d1 eval/countdown.py CTD_SYSTEM_PROMPT (as in xiaohangt/wd1 eval/)"
    assistant_prefill = "<reasoning>"  # d1 appends this after the chat template; for backends that can

    @staticmethod
    def make_problem(pid: str, numbers: list[int], target: int, solution: str | None = None) -> Problem:
        meta = {"solution": solution} if solution else {}
        return Problem(id=pid, question=f"Numbers: {list(numbers)}\nTarget: {target}",
                       answer={"numbers": [int(x) for x in numbers], "target": int(target)}, meta=meta)

    def load(self, split: str) -> list[Problem]:
        if split == "test":
            rows = load_rows(self.data_files["test"], self.data_dir, None, "test")
            return [self.make_problem(f"countdown/test/{i}", [int(x) for x in r["input"].split(",")],
                                      int(r["output"])) for i, r in enumerate(rows)]
        if split == "train":
            return [self.make_problem(f"countdown/train/{i}", ns, t) for i, ns, t in self._train_rows()]
        if split == "synthetic":
            try:  # keep generated training problems disjoint from the test set
                excl = [(p.answer["numbers"], p.answer["target"]) for p in self.load("test")]
            except UserError:
                excl = []
            rows = generate(self.splits["synthetic"], self.synthetic_seed, exclude=excl)
            return [self.make_problem(f"countdown/synthetic/{i}", r["numbers"], r["target"], r["solution"])
                    for i, r in enumerate(rows)]
        raise UserError(f"countdown has no split {split!r}; splits: {', '.join(self.splits)}")

    def _train_rows(self):
        """(source row index, numbers, target) of the 3-number rows, as d1 filters them."""
        rows = load_rows(self.data_files["train"], self.data_dir, "Jiayi-Pan/Countdown-Tasks-3to4", "train",
                         columns=["target", "nums"])
        return [(i, [int(x) for x in r["nums"]], int(r["target"])) for i, r in enumerate(rows)
                if len(r["nums"]) == 3]

    def _check(self, problem: Problem, completion: str) -> tuple[str, str | None, bool]:
        raw, explicit = extract_expression(completion)
        if raw is None or not raw.strip():
            return "no_answer", None, False
        expr = normalize_expression(raw)
        if not expr:
            return "no_answer", None, explicit
        return check_expression(expr, problem.answer["numbers"], problem.answer["target"]), expr, explicit

    def grade(self, problem: Problem, completion: str) -> Grade:
        reason, expr, _ = self._check(problem, completion)
        return Grade(reason == "correct", expr, reason)

    def reward(self, problem: Problem, completion: str) -> float:
        """d1's compute_score: 1.0 correct; 0.1 when an answer was given in the asked-for format
        (\\boxed{} or <answer>) but is wrong or invalid; 0.0 when there is no such answer."""
        reason, _, explicit = self._check(problem, completion)
        if reason == "correct":
            return 1.0
        return 0.1 if explicit and reason != "no_answer" else 0.0

    def sft_target(self, problem: Problem) -> str | None:
        ns, t = problem.answer["numbers"], problem.answer["target"]
        expr = problem.meta.get("solution") or solve(ns, t)
        if expr is None:
            return None
        return (f"<reasoning>\nCombine {', '.join(map(str, ns))} with +, -, * and / to reach {t}: "
                f"{expr} = {t}.\n</reasoning>\n<answer>\n\\boxed{{{expr}}}\n</answer>")
