"""OlympiadBench (He et al. 2024), subset OE_TO_maths_en_COMP: 675 open-ended, text-only, English
competition math problems (`olympiadbench`). Evaluation only.

Answers are LaTeX of four types (Numerical 572, Expression 64, Tuple 33, Interval 6), 94 of them
several answers in one (`is_multiple_answer`, e.g. "$(1,8,19), (2,7,13)$"). The gold is the row's
`final_answer` without its `$` delimiters. Grading is MATH-500's: the final `\\boxed{}` (the whole
completion in flexible mode when there is no box) against the gold through math-verify in the grader
pool, so tuples, sets and intervals compare as mathematical objects. Two conventions of OlympiadBench's
own judge are kept: a row's `error` is an absolute tolerance for numerical answers (one row: 1e-1),
and a gold math-verify cannot read falls back to whitespace-insensitive string equality.
"""
from __future__ import annotations

import re

from dlm_bench.errors import UserError
from dlm_bench.tasks import data

from . import Problem, register_task
from ._math import last_boxed
from ._mathverify import verify_answer
from .aime import BOXED_COT
from .math500 import Math500
from .minerva import to_number


def clean_gold(final_answer: list[str]) -> str:
    """'$\\frac{1}{2}$.' -> '\\frac{1}{2}'; '$a$,$b$' -> 'a,b' (several answers in one gold)."""
    text = ",".join(a.strip() for a in final_answer)
    text = re.sub(r"\$\s*,\s*\$", ",", text.strip())
    return text.strip().rstrip(".").strip().strip("$").strip()


def grade_olympiad(gold: str, prediction: str, tolerance: float | None, timeout_s: int) -> tuple[str, str | None]:
    """(reason, extracted) for one prediction text (`$\\boxed{..}$` or a whole completion); called
    inside a grader worker."""
    box = last_boxed(prediction)
    if tolerance is not None and box is not None:
        g, p = to_number(gold), to_number(box)
        if g is not None and p is not None:   # OlympiadBench's judge: |pred - gold| <= error
            return ("correct" if abs(p - g) <= tolerance * (1 + 1e-9) else "wrong"), box
    reason, extracted = verify_answer(f"$\\boxed{{{gold}}}$", prediction, timeout_s)
    if reason == "parse_error" and box is not None:   # a gold math-verify cannot read
        same = re.sub(r"\s+", "", gold) == re.sub(r"\s+", "", box)
        return ("correct" if same else "wrong"), box
    return reason, extracted


@register_task
class OlympiadBench(Math500):
    """MATH-500's grading (`Math500.grade_many`) with this benchmark's gold and judge."""
    name = "olympiadbench"
    eval_split = "test"
    train_split = None
    splits = {"test": 675}
    data_files = {"test": "olympiadbench/test.jsonl"}
    prompt_template = BOXED_COT
    template_source = "as MATH-500: ML-GSAI/ESPO get_math_questions (Qwen2.5-Math's boxed CoT sentence)"
    pool_fn = staticmethod(grade_olympiad)

    def load(self, split: str) -> list[Problem]:
        if split != "test":
            raise UserError(f"olympiadbench has only the 'test' split (eval only), not {split!r}")
        # the hub copies (Hothan/OlympiadBench) hold every subset in another layout: no hub fallback
        rows = data.load_rows(self.data_files["test"], self.data_dir, None, "test")
        out = []
        for i, r in enumerate(rows):
            answers = r.get("final_answer") or []
            if not answers:
                raise UserError(f"olympiadbench row {i}: no final_answer")
            out.append(Problem(
                id=f"olympiadbench/{r.get('id', i)}", question=r["question"], answer=clean_gold(list(answers)),
                meta={"answer_type": r.get("answer_type"), "multiple": bool(r.get("is_multiple_answer")),
                      "unit": r.get("unit"), "tolerance": float(r["error"]) if r.get("error") else None,
                      "subfield": r.get("subfield"), "solution": (r.get("solution") or [None])[0]}))
        return out

    def pool_item(self, problem: Problem, prediction: str) -> tuple:
        return str(problem.answer), prediction, problem.meta.get("tolerance")

    def sft_target(self, problem: Problem) -> str | None:
        return None              # evaluation only
