"""Text helpers the math-like suites share (balanced `\\boxed{}` extraction, number normalisation),
so that every suite reads answers out of completions the same way. Not a task."""
from __future__ import annotations

import re
from fractions import Fraction


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
    s = _MIXED_RE.sub(lambda m: fraction_text(int(m.group(1)) + Fraction(int(m.group(2)), int(m.group(3)))), s)
    s = _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", s)
    s = _FRAC_SHORT_RE.sub(r"\1/\2", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree", " ", s)
    s = re.sub(r"\\?\$|\\?%|\\euro|€|£|¥|₹|\\pounds", " ", s)
    return s


def to_fraction(tok: str) -> Fraction | None:
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
        v = to_fraction(m.group(0))
        if v is not None:
            out.append(v)
    return out


def fraction_text(v: Fraction) -> str:
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
