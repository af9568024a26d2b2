"""AIME 2024 and AIME 2025 (`aime24`, `aime25`): 30 problems each (AIME I and II), every answer an
integer from 0 to 999, as the competition defines it.

Extraction follows the math suites (the last `\\boxed{}`; in flexible mode also an answer line or the
last number, as for GSM8K), and the answer is graded as AIME grades it: an integer in 0..999 equal to
the gold, so `\\boxed{025}` is 25 and `\\boxed{25.5}` or `\\boxed{1000}` is `invalid`. Golds are stored
as strings, some zero-padded ("025"), and compared as integers. Evaluation only. No hub fallback: the
hub's copies differ in field names and splits, so the files of the data folder (MANIFEST.md) are used.
"""
from __future__ import annotations

from dlm_bench.errors import UserError
from dlm_bench.tasks import data

from . import Grade, Problem, Task, register_task
from ._math import fraction_text
from .gsm8k import extract_number

BOXED_COT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def aime_gold(text) -> int:
    """The integer answer of a data row ('025' -> 25); ValueError for anything AIME cannot have."""
    value = int(str(text).strip())
    if not 0 <= value <= 999:
        raise ValueError(f"AIME answer {text!r} is outside 0..999")
    return value


class AIME(Task):
    """One year of AIME; subclasses name the year and its data file."""
    answer_kind = "number"
    eval_split = "test"
    splits = {"test": 30}
    prompt_template = BOXED_COT
    template_source = "as MATH-500: ML-GSAI/ESPO get_math_questions (Qwen2.5-Math's boxed CoT sentence)"
    answer_modes = ("flexible", "strict")

    def load(self, split: str) -> list[Problem]:
        if split != "test":
            raise UserError(f"{self.name} has only the 'test' split (eval only), not {split!r}")
        rows = data.load_rows(self.data_files["test"], self.data_dir, None, "test")
        out = []
        for i, r in enumerate(rows):
            try:
                gold = aime_gold(r["answer"])
            except (KeyError, ValueError) as e:
                raise UserError(f"{self.name} row {i}: no AIME answer ({e})") from None
            out.append(Problem(id=f"{self.name}/{r.get('id', i)}", question=r.get("problem") or r["question"],
                               answer=gold, meta={"url": r.get("url"), "solution": r.get("solution")}))
        return out

    def grade(self, problem: Problem, completion: str) -> Grade:
        found = extract_number(completion, self.answer_mode)
        if found is None:
            return Grade(False, None, "no_answer")
        value, _stage = found
        text = fraction_text(value)
        if value.denominator != 1 or not 0 <= value <= 999:
            return Grade(False, text, "invalid")
        ok = int(value) == int(problem.answer)
        return Grade(ok, text, "correct" if ok else "wrong")


@register_task
class AIME24(AIME):
    name = "aime24"
    data_files = {"test": "aime24/test.jsonl"}


@register_task
class AIME25(AIME):
    name = "aime25"
    data_files = {"test": "aime25/aime25.jsonl"}
