"""GSM8K (Cobbe et al. 2021): grade-school word problems whose gold is the integer after `#### `.

Also home of the small text helpers the other math-like suites share (balanced `\\boxed{}` extraction,
number normalisation), so that every suite reads answers out of completions the same way.
"""
from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

from dlm_bench import data  # module attribute look-ups, so tests and callers can swap them
from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task

# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each '{' -> its matching '}' (one pass; escaped braces like \\{ are skipped)."""
    match, stack, i, n = {}, [], 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` / `\\fbox{...}` in order, with balanced braces.

    Escaped braces (`\\{`, `\\}`) do not count towards the balance; an unclosed box (a completion cut
    off mid-answer) is skipped rather than guessed at. `\\boxed 5` (no braces) yields the next token.
    Linear time: brace pairs are matched once, not rescanned per box (long garbage stays fast).
    """
    out, closing = [], None
    for m in _BOX_CMD.finditer(text):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text):
            continue
        if text[i] != "{":
            tok = re.match(r"[^\s$]+", text[i:i + 200])
            if tok:
                out.append(tok.group(0))
            continue
        if closing is None:
            closing = _closing_braces(text)
        j = closing.get(i)
        if j is not None:
            out.append(text[i + 1:j])
    return out


def last_boxed(text: str) -> str | None:
    """The last complete `\\boxed{...}` content, or None."""
    boxes = boxed_contents(text)
    return boxes[-1] if boxes else None


# A number: optional sign (only when not glued to a preceding word/digit, so "5-3" reads 5 and 3),
# either comma-grouped thousands or plain digits, optional decimals; or a bare ".5".
_NUM = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.])-?\.\d+"
_NUM_RE = re.compile(rf"(?:{_NUM})(?:\s*/\s*(?:\d+))?")  # also a plain fraction a/b

_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_MIXED_RE = re.compile(r"(?<!\d)(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox|operatorname)\s*\{([^{}]*)\}")


def normalize_math_text(s: str) -> str:
    """Undo LaTeX/currency/percent decoration around numbers so the regexes see plain numerals."""
    s = s.replace("\u2212", "-").replace("\u2013", "-")           # unicode minus / en dash
    s = re.sub(r"\{,\}", ",", s)                                   # 1{,}000
    s = re.sub(r"(?<=\d)\\[,!;: ](?=\d{3})", "", s)                # 1\,000 as a thousands separator
    s = re.sub(r"\\[,!;:]|\\ ", " ", s)
    s = re.sub(r"\\(?:left|right|displaystyle)", "", s)
    for _ in range(3):                                             # nested \text{\textbf{..}}
        s = _WRAP_RE.sub(r" \1 ", s)
    s = _MIXED_RE.sub(lambda m: _fmt(int(m.group(1)) + Fraction(int(m.group(2)), int(m.group(3)))), s)
    s = _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", " ", s)
    s = re.sub(r"\\?\$|\\?%|\\euro|€|£|¥|₹|\\pounds", " ", s)
    return s


def _to_fraction(tok: str) -> Fraction | None:
    tok = tok.replace(",", "").replace(" ", "")
    try:
        if "/" in tok:
            a, b = tok.split("/", 1)
            return Fraction(a) / Fraction(b) if Fraction(b) != 0 else None
        return Fraction(tok)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_in(s: str) -> list[Fraction]:
    """All numbers in `s` (after normalisation), in order of appearance."""
    out = []
    for m in _NUM_RE.finditer(normalize_math_text(s)):
        v = _to_fraction(m.group(0))
        if v is not None:
            out.append(v)
    return out


def _fmt(v: Fraction) -> str:
    """Canonical text for a number: integers plainly, terminating decimals as decimals, else a/b."""
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:
        return format(float(v), ".15g") if abs(v) < 1e15 else str(v)
    return f"{v.numerator}/{v.denominator}"


def numbers_match(pred: Fraction, gold: Fraction, rel_tol: float = 1e-6) -> bool:
    """Exact for integers; a tiny relative tolerance once either side has a fractional part."""
    if pred == gold:
        return True
    if pred.denominator == 1 and gold.denominator == 1:
        return False
    return abs(pred - gold) <= rel_tol * max(1, abs(gold))


# ---------------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------------

# "The answer is X", "#### X", "Final answer: X" (the last such phrase wins). A bare "final answer"
# inside prose ("the final answer carefully: 5 + 3") is not an answer line, so it needs "is" or ":".
_ANSWER_LINE_RE = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|final\s+answer\s*(?:is\s*[:：]?|[:：])|####)\s*([^\n]{0,200})",
    re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def gsm8k_gold(solution: str) -> str:
    """The number after the last `#### `, commas removed (golds like '1,450,000' exist)."""
    if "####" not in solution:
        raise ValueError("GSM8K solution without '####'")
    tail = solution.rsplit("####", 1)[1].strip()
    nums = numbers_in(tail)
    if not nums:
        raise ValueError(f"GSM8K gold is not a number: {tail!r}")
    return _fmt(nums[0])


def extract_number(completion: str, mode: str = "flexible") -> tuple[Fraction, str] | None:
    """Read the final numeric answer: boxed → answer line/tag → last number. Returns (value, stage).

    `mode="strict"` reads only `\\boxed{}`, the form the prompt asks for. Inside a box, as on an answer
    line, the answer is the first number after the last '=': "\\boxed{2:00 pm}" is 2, not 0, and
    "\\boxed{18 \\text{ dollars}}" is 18.
    """
    for content in reversed(boxed_contents(completion)):
        # "x = 3" and "2 \times 9 = 18" both answer with what follows the last '='.
        nums = numbers_in(content.rsplit("=", 1)[-1]) or numbers_in(content)
        if nums:
            return nums[0], "boxed"
    if mode == "strict":
        return None
    tags = _ANSWER_TAG_RE.findall(completion)
    if tags:
        nums = numbers_in(tags[-1].rsplit("=", 1)[-1])
        if nums:
            return nums[-1], "answer_tag"
    lines = list(_ANSWER_LINE_RE.finditer(completion))
    for m in reversed(lines):
        sentence = _SENTENCE_END.split(m.group(1), 1)[0]       # "... is 8. Check: 2+6=8" → "8"
        nums = numbers_in(sentence.rsplit("=", 1)[-1])          # "is 3 + 5 = 8 apples" → 8
        if nums:
            return nums[0], "answer_line"
    nums = numbers_in(completion)
    if nums:
        return nums[-1], "last_number"
    return None


@register_task
class GSM8K(Task):
    name = "gsm8k"
    answer_kind = "number"
    eval_split = "test"
    train_split = "train"
    splits = {"test": 1319, "train": 7473}
    data_files = {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}
    hub_id, hub_config = "openai/gsm8k", "main"
    prompt_template = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    template_source = "ML-GSAI/ESPO espo/data_utils.py get_gsm8k_questions (same sentence as Qwen2.5-Math)"
    version = 2              # 2: a box reads its first number (\boxed{2:00 pm} is 2); strict mode
    answer_modes = ("flexible", "strict")

    def load(self, split: str) -> list[Problem]:
        if split not in self.splits:
            raise UserError(f"gsm8k has no split {split!r}; splits: {', '.join(self.splits)}")
        rows = data.load_rows(self.data_files[split], self.data_dir, self.hub_id, split, self.hub_config)
        return [Problem(id=f"gsm8k/{split}/{i}", question=r["question"], answer=gsm8k_gold(r["answer"]),
                        meta={"solution": r["answer"]})
                for i, r in enumerate(rows)]

    def grade(self, problem: Problem, completion: str) -> Grade:
        gold = _to_fraction(str(problem.answer))
        if gold is None:
            raise ValueError(f"{problem.id}: gold {problem.answer!r} is not a number")
        found = extract_number(completion, self.answer_mode)
        if found is None:
            return Grade(False, None, "no_answer")
        value, _stage = found
        ok = numbers_match(value, gold)
        return Grade(ok, _fmt(value), "correct" if ok else "wrong")

    def sft_target(self, problem: Problem) -> str | None:
        solution = problem.meta.get("solution")
        if not solution:
            return None
        body = re.sub(r"<<[^<>]*>>", "", solution.rsplit("####", 1)[0]).strip()  # calculator annotations
        return f"{body}\nThe answer is $\\boxed{{{problem.answer}}}$."
