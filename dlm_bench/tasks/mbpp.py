"""MBPP (Austin et al. 2021, "Program Synthesis with Large Language Models"): 974 crowd-sourced Python
problems with three assert tests each. Splits by task_id, as in the MBPP README: 1-10 prompt
(few-shot), 11-510 test, 511-600 validation, 601-974 train.

Grading loads the solution in the sandbox, then runs `test_setup_code` and the `test_list` asserts
(in that order, as the original evaluation concatenates them) in the harness against proxies of the
solution's functions (docs/sandbox.md). `challenge_test_list` is not used (standard).
Reward: correctness (binary), or a recipe's format score + fraction of the `test_list` asserts
passed, each assert run on its own (tasks/_code_reward.py).
"""
from __future__ import annotations

import ast
import builtins

from dlm_bench import sandbox
from dlm_bench.errors import UserError

from . import Problem, register_task
from dlm_bench.tasks.data import load_rows
from ._code import SandboxTask, extract_code, passed

SPLIT_IDS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def called_names(tests: list[str]) -> list[str]:
    """Functions the asserts call by bare name that are not builtins (the solution must define them),
    in order of first use. If all are builtin names, the solution shadows one (task 126 defines
    `sum`): then the first name called."""
    called: list[str] = []
    for t in tests:
        try:
            tree = ast.parse(t)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in called:
                called.append(node.func.id)
    return [n for n in called if not hasattr(builtins, n)] or called[:1]


@register_task
class MBPP(SandboxTask):
    name = "mbpp"
    answer_kind = "code"
    eval_split = "test"
    train_split = "train"
    splits = {"test": 500, "train": 374, "validation": 90, "prompt": 10}
    data_files = {s: "mbpp/mbpp.jsonl" for s in splits}   # one file; splits by task_id
    prompt_template = ("You are an expert Python programmer. Your task is to complete the implementation "
                       "of a function named `{func_name}`.\n\n** TARGET FUNCTION **\n{question}\n\n"
                       "** UNIT TESTS **\nYour code should pass unit tests like:\n{tests}\n\n"
                       "Here is the function to complete:\n```python\ndef {func_name}({params}):\n"
                       "    \"\"\"{question}\n    \"\"\"\n```\n")
    template_source = ("LeapLabTHU/JustGRPO eval.py _format_mbpp_prompt (LLaDA-8B-Instruct chat prompt: "
                       "task text, the three asserts, a synthesised signature input_param_i)")
    hub_id = "google-research-datasets/mbpp"

    def __init__(self, data_dir: str | None = None, timeout: float = 10.0, memory_mb: int = 2048):
        super().__init__(data_dir)
        self.timeout, self.memory_mb = timeout, memory_mb

    def load(self, split: str = "test") -> list[Problem]:
        if split not in SPLIT_IDS:
            raise UserError(f"mbpp has splits {', '.join(SPLIT_IDS)}; not {split!r}")
        rows = load_rows(self.data_files[split], self.data_dir, self.hub_id, split, config="full")
        lo, hi = SPLIT_IDS[split]
        rows = sorted((r for r in rows if lo <= int(r["task_id"]) <= hi), key=lambda r: int(r["task_id"]))
        if len(rows) != self.splits[split]:
            raise UserError(f"mbpp split {split!r}: expected {self.splits[split]} problems with task_id "
                            f"{lo}-{hi}, found {len(rows)}; is the data file complete?")
        out = []
        for r in rows:
            tests = list(r["test_list"])
            names = called_names(tests)
            if not names:
                raise UserError(f"mbpp task {r['task_id']}: no function call found in its tests")
            out.append(Problem(
                id=f"mbpp/{r['task_id']}", question=r["text"],
                answer={"test_list": tests, "test_setup_code": r.get("test_setup_code") or ""},
                meta={"task_id": int(r["task_id"]), "func_name": names[0], "functions": names,
                      "n_args": _n_args(tests[0], names[0]), "code": r["code"]}))
        return out

    def prompt(self, problem: Problem) -> list[dict]:
        m = problem.meta
        params = ", ".join(f"input_param_{i + 1}" for i in range(m["n_args"]))
        tests = "\n".join(f"    {t}" for t in problem.answer["test_list"])
        text = self.prompt_template.format(question=problem.question, func_name=m["func_name"],
                                           tests=tests, params=params)
        return [{"role": "user", "content": text}]

    def program(self, problem: Problem, completion: str) -> tuple[str | None, sandbox.Program | None]:
        code = extract_code(completion, f"def {problem.meta['func_name']}(")
        if code is None:
            return None, None
        return code, sandbox.Program(code, mode="check", setup=problem.answer["test_setup_code"],
                                     tests="\n".join(problem.answer["test_list"]) + "\n",
                                     expose=tuple(problem.meta["functions"]),
                                     timeout=self.timeout, memory_mb=self.memory_mb)

    def test_cases(self, problem: Problem, code: str, timeout: float) -> list:
        """One check run per assert of test_list (the setup code before each)."""
        return [(sandbox.Program(code, mode="check", setup=problem.answer["test_setup_code"], tests=t + "\n",
                                 expose=tuple(problem.meta["functions"]), timeout=timeout,
                                 memory_mb=self.memory_mb), passed)
                for t in problem.answer["test_list"]]

    def sft_target(self, problem: Problem) -> str | None:
        code = problem.meta["code"].replace("\r\n", "\n").strip()
        return f"```python\n{code}\n```"


def _n_args(test: str, func: str) -> int:
    """Arity of the first call to `func` in the first assert (the prompt's synthesised signature)."""
    try:
        for node in ast.walk(ast.parse(test.strip())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == func:
                return len(node.args)
    except SyntaxError:
        pass
    return 1
