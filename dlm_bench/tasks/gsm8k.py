"""GSM8K (Cobbe et al. 2021): grade-school word problems whose gold is the integer after `#### `.
Shared answer-reading helpers live in `tasks/_math.py`.
"""
from __future__ import annotations

import re
from fractions import Fraction

from dlm_bench.tasks import data  # module attribute look-ups, so tests and callers can swap them
from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from ._math import boxed_contents, fraction_text, numbers_in, numbers_match, to_fraction

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
    return fraction_text(nums[0])


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
        gold = to_fraction(str(problem.answer))
        if gold is None:
            raise ValueError(f"{problem.id}: gold {problem.answer!r} is not a number")
        found = extract_number(completion, self.answer_mode)
        if found is None:
            return Grade(False, None, "no_answer")
        value, _stage = found
        ok = numbers_match(value, gold)
        return Grade(ok, fraction_text(value), "correct" if ok else "wrong")

    def sft_target(self, problem: Problem) -> str | None:
        solution = problem.meta.get("solution")
        if not solution:
            return None
        body = re.sub(r"<<[^<>]*>>", "", solution.rsplit("####", 1)[0]).strip()  # calculator annotations
        return f"{body}\nThe answer is $\\boxed{{{problem.answer}}}$."
