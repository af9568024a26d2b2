"""MATH-500 (Lightman et al. 2023, the PRM800K test subset of Hendrycks MATH), graded with math-verify
in worker processes (`tasks/_mathverify.py` says why and how).
"""
from __future__ import annotations

import re

from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from dlm_bench.tasks.data import load_rows

from ._math import last_boxed
from ._mathverify import grade_in_pool, result_to_grade, verify_answer


_PLACEHOLDER = re.compile(r"(?:\\[lcvd]?dots|[\s.?…_]|\\,|\\;|\\quad)*")


def prediction_text(completion: str, mode: str) -> tuple[str | None, Grade | None]:
    """(text for math-verify, None), or (None, the grade) when nothing gradable is there.

    A complete final `\\boxed{}` is the answer: only it is parsed, so a placeholder box (`\\boxed{...}`)
    never falls back to some unfinished expression in the reasoning. Without a box, flexible mode lets
    math-verify search the whole completion; strict mode (the form the prompt asks for) finds nothing.
    """
    box = last_boxed(completion)
    if box is None:
        return (completion, None) if mode == "flexible" else (None, Grade(False, None, "no_answer"))
    if _PLACEHOLDER.fullmatch(box):
        return None, Grade(False, box, "no_answer")
    return f"$\\boxed{{{box}}}$", None


# ---------------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------------

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


@register_task
class Math500(Task):
    name = "math500"
    answer_kind = "math"
    eval_split = "test"
    train_split = "train"
    # train: MATH's 7,500 minus number_theory/7115 and /7117, whose solutions end in an empty \boxed{}
    splits = {"test": 500, "train": 7498}
    data_files = {"test": "math500/test.jsonl", "train": "math/train.jsonl"}
    prompt_template = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    template_source = "ML-GSAI/ESPO espo/data_utils.py get_math_questions (Qwen2.5-Math boxed CoT sentence)"
    version = 2              # 2: only the final box is graded when there is one; strict mode
    answer_modes = ("flexible", "strict")
    timeout_s = 5            # math-verify's own per-parse / per-comparison timeout (seconds, integer)
    hard_deadline_s = 30.0   # wall clock per answer before its worker is killed
    retry_factor = 3         # a timed-out answer is retried once with 3x both limits

    def load(self, split: str) -> list[Problem]:
        if split == "test":
            rows = load_rows(self.data_files["test"], self.data_dir, "HuggingFaceH4/MATH-500", "test")
            return [Problem(id=f"math500/{r['unique_id']}", question=r["problem"], answer=r["answer"],
                            meta={"solution": r["solution"], "subject": r["subject"], "level": r["level"],
                                  "unique_id": r["unique_id"]})
                    for r in rows]
        if split == "train":
            return self._load_train()
        raise UserError(f"math500 has no split {split!r}; splits: {', '.join(self.splits)}")

    def _load_train(self) -> list[Problem]:
        try:
            rows = load_rows(self.data_files["train"], self.data_dir, None, "train")
        except UserError as local_err:
            try:  # the MATH train split on the hub comes one subject per config
                from dlm_bench.tasks import data
                rows = [dict(r, source_file=f"train/{s}/{i}.json")
                        for s in MATH_SUBJECTS for i, r in enumerate(data.hub_dataset("EleutherAI/hendrycks_math",
                                                                                 "train", s))]
            except UserError:
                raise local_err from None
        out = []
        for i, r in enumerate(rows):
            gold = last_boxed(r["solution"])
            if not gold or not gold.strip():  # ungradable: an empty \boxed{} (2 rows of the original data)
                continue
            sid = r.get("source_file", f"train/{i}")
            out.append(Problem(id=f"math500/{sid}", question=r["problem"], answer=gold,
                               meta={"solution": r["solution"], "subject": r.get("type"),
                                     "level": r.get("level")}))
        return out

    @staticmethod
    def gold_latex(problem: Problem) -> str:
        return f"$\\boxed{{{problem.answer}}}$"

    def grade(self, problem: Problem, completion: str) -> Grade:
        return self.grade_many([problem], [completion])[0]

    # what a grader worker runs per answer: pool_fn(*pool_item(problem, prediction), timeout_s)
    pool_fn = staticmethod(verify_answer)

    def pool_item(self, problem: Problem, prediction: str) -> tuple:
        return self.gold_latex(problem), prediction

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        grades: list[Grade | None] = []
        items, where = [], []
        for p, c in zip(problems, completions):
            pred, early = prediction_text(c, self.answer_mode)
            grades.append(early)
            if early is None:
                items.append(self.pool_item(p, pred))
                where.append(len(grades) - 1)
        results = grade_in_pool(self.pool_fn, items, self.timeout_s, self.hard_deadline_s, self.retry_factor)
        for i, r in zip(where, results):
            grades[i] = result_to_grade(r)
        return grades  # type: ignore[return-value]

    def rewards(self, problems: list[Problem], completions: list[str], kind: str = "binary") -> list[float]:
        self.check_reward_kind(kind)
        return [float(g.correct) for g in self.grade_many(problems, completions)]

    def sft_target(self, problem: Problem) -> str | None:
        return problem.meta.get("solution")
