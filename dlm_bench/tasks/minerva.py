"""Minerva "OCW Courses" (Lewkowycz et al. 2022): 272 MIT OpenCourseWare science/engineering problems.

Not lm-eval's `minerva_math` (that is Hendrycks MATH with Minerva prompting). Eval only.

Grading, per problem (gold = last `\\boxed{}` of the reference solution):
1. If the gold is a plain number (`1.6`, `4.5e33`, `-1./3`, `2.7778e-6`, `np.arcsin(10/13)`) it is read by
   our own numeric parser — math-verify reads `4.5e-5` as `4.5*E - 5` — and the prediction must match
   it within a *relative* tolerance `rel_tol` (default 1e-2 = 1%). Why 1%: OCW golds are rounded to
   2-3 significant figures and solutions use slightly different physical constants, so an exact or
   1e-4 comparison (Qwen2.5-Math's `math_equal`) fails answers a grader would accept; 1% still rejects
   real mistakes (a wrong power of ten, a factor of 2, 12 vs 1.2). Set `rel_tol = 1e-4` on the task to
   reproduce Qwen-style numbers.
   The prediction is read by the same parser (e-notation, `\\times 10^{k}`, `\\frac`, `\\sqrt`, units in
   `\\mathrm{}`/`\\text{}`, thousands commas); if that fails, math-verify parses it and, when the result is
   a closed-form number (`\\frac{\\sqrt{3}}{2}`), its numeric value is compared with the same tolerance.
2. Otherwise (symbolic gold) math-verify decides, as for MATH-500; golds math-verify cannot parse
   (`E_{1},E_{2}`, `MR=SRMC`) fall back to whitespace-insensitive string equality.
Everything runs in the math500 worker pool, so a pathological answer times out instead of hanging.
"""
from __future__ import annotations

import ast
import math
import operator
import re

from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from dlm_bench.tasks.data import load_rows

from ._math import boxed_contents, last_boxed
from ._mathverify import grade_in_pool, result_to_grade

# ---------------------------------------------------------------------------------------------------
# Numeric parser (pure Python, no eval)
# ---------------------------------------------------------------------------------------------------

_UNIT_WORDS = (r"(?:k?m|cm|mm|nm|[uμ]m|pc|kpc|Mpc|AU|au|ly|light[- ]years?|s|sec|seconds?|ms|yrs?|years?|days?|"
               r"hours?|hrs?|min|minutes?|K|kg|g|grams?|J|kJ|eV|keV|MeV|GeV|ergs?|W|kW|N|Pa|atm|Hz|kHz|MHz|GHz|"
               r"V|mV|A|mA|mol|L|rad|radians?|deg|degrees?|arcsec|arcmin|Angstroms?|meters?|cm\^-?\d|"
               r"solar masses|M_sun|L_sun|dB|Ohms?|percent)")
_UNIT = rf"{_UNIT_WORDS}(?:\s*\^\s*\{{?\s*-?\d+\s*\}}?|\*\*-?\d+)?"
# plain-text units after the number: "300 K", "3.2 m/s", "5 erg s^-1", "2 km \cdot s^{-1}"
_UNIT_TAIL = re.compile(rf"\s+{_UNIT}(?:\s*(?:/|\\cdot|\*|\s)\s*{_UNIT})*\s*$")
_TEN_POW = re.compile(r"(\d|\))\s*(?:\\times|\\cdot|\*|×|x)\s*10\s*\^\s*\{?\s*([+-]?\s*\d+)\s*\}?")
_BARE_TEN_POW = re.compile(r"(?<![\d.])10\s*\^\s*\{\s*([+-]?\s*\d+)\s*\}|(?<![\d.])10\s*\^\s*([+-]?\d+)")
_LATEX_WRAP = re.compile(r"\\(?:mathrm|text|textrm|mbox|rm|mathit|operatorname)\s*\{([^{}]*)\}")

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
_FUNCS = {"sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "arcsin": math.asin,
          "arccos": math.acos, "arctan": math.atan, "asin": math.asin, "acos": math.acos, "atan": math.atan,
          "exp": math.exp, "ln": math.log, "log": math.log, "log10": math.log10}
_CONSTS = {"pi": math.pi}


def _eval_node(node):
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_node(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > 400:
            raise ValueError("exponent too large")
        return _BIN[type(node.op)](a, b)
    if isinstance(node, ast.Name) and node.id in _CONSTS:
        return _CONSTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
            and len(node.args) == 1 and not node.keywords):
        return _FUNCS[node.func.id](_eval_node(node.args[0]))
    raise ValueError("not a plain number")


def _brace_arg(s: str, i: int) -> tuple[str, int] | None:
    """The `{...}` group starting at s[i] (balanced) and the index after it."""
    if i >= len(s) or s[i] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return None


def _latex_to_py(s: str) -> str:
    """Rewrite \\frac{a}{b} and \\sqrt{a} (any nesting) into Python syntax."""
    out, i = [], 0
    while i < len(s):
        m = re.match(r"\\[dt]?frac\s*", s[i:])
        if m:
            a = _brace_arg(s, i + m.end())
            b = _brace_arg(s, a[1]) if a else None
            if a and b:
                out.append(f"(({_latex_to_py(a[0])})/({_latex_to_py(b[0])}))")
                i = b[1]
                continue
        m = re.match(r"\\sqrt\s*", s[i:])
        if m:
            a = _brace_arg(s, i + m.end())
            if a:
                out.append(f"sqrt({_latex_to_py(a[0])})")
                i = a[1]
                continue
        out.append(s[i])
        i += 1
    return "".join(out)


def to_number(s: str | None) -> float | None:
    """A finite real number written in `s` (LaTeX or Python-ish), or None if it is anything else."""
    if not s or len(s) > 300:
        return None
    s = s.strip().strip("$").strip()
    s = re.sub(r"\s*(?:\\approx|≈|=)\s*", "=", s).rsplit("=", 1)[-1]             # "v = 3.2": the value
    s = s.replace("$", " ").replace("\u2212", "-").replace("np.", "")
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:)|~|\\ ", " ", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\%|%", " ", s)
    s = re.sub(r"\s*(?:\\mathrm|\\text|\\textrm|\\mbox|\\rm)\s*\{[^{}]*\}(?:\s*\^\s*\{?-?\d+\}?)?", " ", s)
    s = _UNIT_TAIL.sub("", s).strip()
    s = re.sub(r"(?:\s*(?:/|\\cdot|\*))+\s*$", "", s)                          # "1.5 \mathrm{km}/\mathrm{s}"
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)                                 # thousands commas
    s = _TEN_POW.sub(lambda m: f"{m.group(1)}*1e{m.group(2).replace(' ', '')}", s)
    s = _BARE_TEN_POW.sub(lambda m: f"1e{(m.group(1) or m.group(2)).replace(' ', '')}", s)
    s = _latex_to_py(s)
    s = re.sub(r"\\(pi|sqrt|sin|cos|tan|arcsin|arccos|arctan|exp|ln|log)(?![A-Za-z])", r"\1", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("^", "**").replace("{", "(").replace("}", ")")
    if not s.strip() or "\\" in s:
        return None
    # ast, never eval: only numbers, + - * / **, pi and a few math functions get through _eval_node
    try:
        v = _eval_node(ast.parse(s.strip(), mode="eval"))
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError, MemoryError):
        return None
    return v if isinstance(v, float) and math.isfinite(v) else None


def close(pred: float, gold: float, rel_tol: float) -> bool:
    if gold == 0:
        return abs(pred) <= 1e-9
    return abs(pred - gold) <= rel_tol * abs(gold)


# ---------------------------------------------------------------------------------------------------
# Extraction and grading (runs in a worker)
# ---------------------------------------------------------------------------------------------------

# Minerva's "Final Answer: The final answer is X. I hope it is correct." and plain "The answer is X".
_FINAL_RE = re.compile(r"(?:final\s+answer\s*(?:is\s*[:：]?|[:：])|the\s+answer\s+is)\s*(.+?)(?:\.\s+I hope|\n|$)",
                       re.IGNORECASE)
_LEAD_RE = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*", re.IGNORECASE)
_LAST_NUM_RE = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?"
                          r"(?:\s*(?:[eE][+-]?\d+|(?:\\times|\\cdot|×)\s*10\s*\^\s*\{?[+-]?\d+\}?))?")


def extract_answer(completion: str) -> str | None:
    """Last `\\boxed{}` (balanced) → "final answer is X" sentence → None."""
    for content in reversed(boxed_contents(completion)):
        if content.strip():
            return content.strip()
    lines = _FINAL_RE.findall(completion)
    if lines:
        ans = _LEAD_RE.sub("", lines[-1].strip())
        return ans.replace("$", " ").strip().rstrip(".").strip() or None
    return None


def clean_gold(gold: str) -> str:
    return gold.replace("$", " ").strip()


def _mv_number(text: str, timeout_s: int) -> float | None:
    """math-verify parse → a closed-form real number (`\\frac{\\sqrt{3}}{2}`), else None.
    Raises math-verify's TimeoutException when parsing or evaluating overruns `timeout_s`."""
    from math_verify import LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout
    try:
        parsed = parse(f"${text}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout_s,
                       raise_on_error=True)
        obj = parsed[0] if parsed else None
        if not getattr(obj, "is_number", False):
            return None
        v = timeout(timeout_s)(lambda: complex(obj.evalf()))()
    except TimeoutException:
        raise
    except Exception:  # noqa: BLE001 - unparseable or not a number: the caller grades it wrong
        return None
    if abs(v.imag) <= 1e-12 * max(1.0, abs(v.real)) and math.isfinite(v.real):
        return v.real
    return None


def grade_minerva(gold: str, completion: str, rel_tol: float, timeout_s: int) -> tuple[str, str | None]:
    """(reason, extracted) for one completion; called inside a grader worker."""
    from math_verify.errors import TimeoutException
    from ._mathverify import verify_answer
    ans = extract_answer(completion)
    g = to_number(gold)
    if g is not None:
        if ans is None:  # no box, no answer sentence: the last number written, as Qwen's harness does
            nums = _LAST_NUM_RE.findall(completion)
            ans = nums[-1] if nums else None
        if ans is None:
            return "no_answer", None
        p = to_number(ans)
        if p is None:
            try:
                p = _mv_number(ans, timeout_s)
            except TimeoutException:
                return "timeout", ans
        if p is None:
            return "wrong", ans
        return ("correct" if close(p, g, rel_tol) else "wrong"), ans
    reason, extracted = verify_answer(f"$\\boxed{{{gold}}}$", f"\\boxed{{{ans}}}" if ans else completion,
                                      timeout_s)
    if reason == "parse_error" and ans is not None:  # gold math-verify cannot read: compare the strings
        same = re.sub(r"\s+", "", gold) == re.sub(r"\s+", "", ans)
        return ("correct" if same else "wrong"), ans
    return reason, ans if ans is not None else extracted


@register_task
class Minerva(Task):
    name = "minerva"
    answer_kind = "math"
    eval_split = "test"
    train_split = None
    splits = {"test": 272}
    data_files = {"test": "minerva_math/test.jsonl"}
    prompt_template = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    template_source = "ML-GSAI/ESPO espo/data_utils.py get_math_questions (Qwen2.5-Math boxed CoT sentence)"
    rel_tol = 1e-2           # relative tolerance for numeric golds; see the module docstring
    timeout_s = 5
    hard_deadline_s = 30.0
    retry_factor = 3

    def load(self, split: str) -> list[Problem]:
        if split != "test":
            raise UserError(f"minerva has only the 'test' split (eval only), not {split!r}")
        # no canonical hub copy of the OCW set exists, so there is no hub fallback
        rows = load_rows(self.data_files["test"], self.data_dir, None, "test")
        out = []
        for i, r in enumerate(rows):
            gold = last_boxed(r["solution"])
            if gold is None:
                raise UserError(f"minerva row {i}: solution has no \\boxed{{}} answer")
            out.append(Problem(id=f"minerva/{r.get('idx', i)}", question=r["problem"], answer=clean_gold(gold),
                               meta={"solution": r["solution"], "course": r.get("type")}))
        return out

    def grade(self, problem: Problem, completion: str) -> Grade:
        return self.grade_many([problem], [completion])[0]

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        items = [(str(p.answer), c, self.rel_tol) for p, c in zip(problems, completions)]
        results = grade_in_pool(grade_minerva, items, self.timeout_s, self.hard_deadline_s, self.retry_factor)
        return [result_to_grade(r) for r in results]

    def rewards(self, problems: list[Problem], completions: list[str], kind: str = "binary") -> list[float]:
        self.check_reward_kind(kind)
        return [float(g.correct) for g in self.grade_many(problems, completions)]

    def sft_target(self, problem: Problem) -> str | None:
        return problem.meta.get("solution")
