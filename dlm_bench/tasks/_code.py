"""Helpers the code tasks share (HumanEval, MBPP, LiveCodeBench): code extraction from a completion,
the CodeGrade record, the sandbox-status → reason map, and `SandboxTask`, the base of a task whose
completions are programs graded in the sandbox (docs/sandbox.md). Not a task."""
from __future__ import annotations

import re
from dataclasses import dataclass

from dlm_bench import sandbox

from . import Grade, Problem, Task
from . import _code_reward as code_reward

@dataclass(frozen=True)
class CodeGrade(Grade):
    isolation: str = ""              # "bwrap" or "rlimits-only": how the code was confined
    detail: str = ""                 # failing assert, exception, ... (for debugging; not a metric)
    public_tests_only: bool = False  # LiveCodeBench copies without private tests


REASONS = {"ok": "correct", "failed": "wrong", "syntax_error": "syntax_error",
           "runtime_error": "runtime_error", "timeout": "timeout", "memory": "memory",
           "output_limit": "output_limit", "sandbox_error": "sandbox_error"}

# An opening fence with an optional language tag; the block ends at the next fence or at the end of
# the text (a completion cut off by the length limit often never closes its block).
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PY_TAGS = {"", "python", "py", "python3", "py3"}


def extract_code(completion: str, must_contain: str | None = None) -> str | None:
    """The code in a completion: the last fenced Python block (preferring the last one that contains
    `must_contain`, e.g. "def f(" — a trailing usage example must not win), else the raw text when
    there is no fence at all. None when there is nothing to run."""
    if not completion or not completion.strip():
        return None
    blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(completion)]
    if not blocks:
        return completion  # raw continuation, e.g. a function body (kept as is: indentation matters)
    py = [b for t, b in blocks if t in _PY_TAGS and b.strip()]
    if not py:
        return None
    if must_contain:
        hits = [b for b in py if must_contain in b]
        if hits:
            return hits[-1]
    return py[-1]


def to_grade(result: sandbox.RunResult, code: str, public_only: bool = False) -> CodeGrade:
    reason = REASONS.get(result.status, "sandbox_error")
    return CodeGrade(result.status == "ok", code, reason, result.isolation, result.detail, public_only)


def no_answer(public_only: bool = False) -> CodeGrade:
    return CodeGrade(False, None, "no_answer", sandbox.isolation(), "no code found in the completion",
                     public_only)


def defines(code: str, name: str) -> bool:
    """Does `code` define function `name` at top level (a full function, not just a body)?"""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


class SandboxTask(Task):
    """A task whose completions are programs: `program(problem, completion)` builds the sandbox run,
    `test_cases(problem, code, timeout)` one run per test case (for the recipe rewards)."""

    reward_kinds = ("binary", *code_reward.KINDS)

    def program(self, problem: Problem, completion: str):
        raise NotImplementedError

    def test_cases(self, problem: Problem, code: str, timeout: float) -> list[code_reward.Case]:
        raise NotImplementedError

    def grade(self, problem: Problem, completion: str) -> Grade:
        return self.grade_many([problem], [completion])[0]

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        sandbox.isolation()  # no sandbox and no explicit opt-out: UserError before any row is graded
        return grade_programs([self.program(p, c) for p, c in zip(problems, completions)])

    def rewards(self, problems: list[Problem], completions: list[str], kind: str = "binary") -> list[float]:
        """Binary: correctness, graded in parallel (the default would grade one at a time). Else the
        recipe's format score + pass rate (tasks/_code_reward.py)."""
        self.check_reward_kind(kind)
        if kind != "binary":
            return code_reward.recipe_rewards(self, problems, completions, kind)
        return [float(g.correct) for g in self.grade_many(problems, completions)]


def passed(result: sandbox.RunResult) -> bool:
    """A check-mode case's verdict: the harness ran its asserts to the end."""
    return result.passed


def grade_programs(built: list[tuple[str | None, sandbox.Program | None]]) -> list[CodeGrade]:
    """Run the programs in parallel (one process each) and turn results into grades."""
    todo = [(i, prog) for i, (_, prog) in enumerate(built) if prog is not None]
    results = sandbox.run_many([prog for _, prog in todo])
    grades: list[CodeGrade] = [no_answer()] * len(built)
    for (i, _), res in zip(todo, results):
        grades[i] = to_grade(res, built[i][0])
    return grades
