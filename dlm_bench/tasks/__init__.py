"""Benchmark suites. One file per suite; each registers a `Task` subclass with `@register_task`.

A task owns everything suite-specific: where its data lives, the prompt template, answer
extraction, grading and the training reward. Third-party packages add tasks through the
entry-point group ``dlm_bench.tasks`` (the entry point names a module that registers on import).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dlm_bench.errors import UserError
from dlm_bench.registry import Registry
from dlm_bench.tasks import data


@dataclass(frozen=True)
class Problem:
    id: str                  # stable id within the task (e.g. "HumanEval/0", "gsm8k/test/17")
    question: str            # the problem statement shown in the prompt
    answer: Any              # gold answer in the task's own form (number, string, tests, ...)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    correct: bool
    extracted: str | None    # what was read out of the completion (None when nothing was found)
    reason: str              # "correct", "wrong", "no_answer", "timeout", "runtime_error", ...


class Task:
    """Base class. Subclasses set `name`, `splits` and `prompt_template` and implement the rest."""

    name: ClassVar[str]
    eval_split: ClassVar[str] = "test"
    train_split: ClassVar[str | None] = None
    splits: ClassVar[dict[str, int | None]] = {}   # split -> expected size (None: generated/variable)
    prompt_template: ClassVar[str] = "{question}"  # data, recorded with every result
    template_source: ClassVar[str] = ""            # which paper/repo the template follows
    version: ClassVar[int] = 1                     # bumped when grading changes; part of the config hash
    # What an answer is, for code downstream (diversity, reports) that must never match task names:
    # number | math (LaTeX, math-verify) | expression (arithmetic over given numbers) | code | grid
    answer_kind: ClassVar[str] = "number"
    # "flexible": any answer form the grader can read; "strict": only the form the prompt asks for.
    answer_modes: ClassVar[tuple[str, ...]] = ("flexible",)
    # Training rewards `rewards(kind=...)` accepts; "binary" is the grade (code tasks add the recipes').
    reward_kinds: ClassVar[tuple[str, ...]] = ("binary",)
    # split -> its file under the data folder (`tasks/data.py` finds it); a split not listed is generated.
    # None: the task does not say, so `dlm-bench tasks` has to load it to know.
    data_files: ClassVar[dict[str, str] | None] = None

    answer_mode: str = "flexible"

    def __init__(self, data_dir: str | None = None):
        self.data_dir = data_dir

    def set_answer_mode(self, mode: str) -> "Task":
        if mode not in self.answer_modes:
            raise UserError(f"task {self.name!r} has no answer mode {mode!r}; it has: {', '.join(self.answer_modes)}")
        self.answer_mode = mode
        return self

    def grader_id(self) -> dict:
        """What decides a grade besides the completion: recorded with every result and in its hash."""
        return {"version": self.version, "answer_mode": self.answer_mode}

    def load(self, split: str) -> list[Problem]:
        raise NotImplementedError

    def locate(self, split: str) -> str | None:
        """Where `split` is read from, for `dlm-bench tasks`, without reading it (UserError where it is
        missing); None for a generated split."""
        if self.data_files is None:
            return f"{len(self.load(split))} rows"
        if split not in self.data_files:
            return None
        return str(data.find_file(self.data_files[split], self.data_dir).parent)

    def result_note(self) -> str | None:
        """A caveat printed beside this task's numbers (e.g. LiveCodeBench's "public tests only"), once
        its data is loaded; None when there is none."""
        return None

    def prompt(self, problem: Problem) -> list[dict]:
        """Chat messages for the model; backends apply the tokenizer's chat template."""
        return [{"role": "user", "content": self.prompt_template.format(question=problem.question)}]

    def grade(self, problem: Problem, completion: str) -> Grade:
        raise NotImplementedError

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        """Grade a batch; tasks that run code override this to use every core."""
        return [self.grade(p, c) for p, c in zip(problems, completions)]

    def reward(self, problem: Problem, completion: str) -> float:
        """Training reward. Default: 1.0 for a correct grade, else 0.0."""
        return float(self.grade(problem, completion).correct)

    def rewards(self, problems: list[Problem], completions: list[str], kind: str = "binary") -> list[float]:
        """Training rewards of one of `reward_kinds` (UserError for another)."""
        self.check_reward_kind(kind)
        return [self.reward(p, c) for p, c in zip(problems, completions)]

    def check_reward_kind(self, kind: str) -> None:
        if kind not in self.reward_kinds:
            raise UserError(f"task {self.name!r} has no {kind!r} training reward; it has: {', '.join(self.reward_kinds)}")

    def sft_target(self, problem: Problem) -> str | None:
        """A reference completion for supervised pre-training (None when the task has none)."""
        return None

    @classmethod
    def train_scale(cls, updates_per_batch: int) -> dict:
        """Method settings that fit this task's own scale, applied over every method's defaults (its
        per-task recipe and the user's settings win), for a method making `updates_per_batch` optimizer
        updates per rollout batch. None here: the methods' recipes are for the benchmarks."""
        return {}


_TASKS = Registry("task", Task, "dlm_bench.tasks", ("gsm8k", "math500", "minerva", "aime", "olympiadbench", "humaneval", "mbpp",
                                                 "livecodebench", "countdown", "sudoku", "testbed"),
                  "dlm_bench.tasks")
register_task = _TASKS.register


def task_names() -> list[str]:
    return _TASKS.names()


def answer_kind(name: str) -> str | None:
    """The registered task's answer kind; None for a task not installed here (e.g. old records)."""
    try:
        return _TASKS.get(name).answer_kind
    except UserError:
        return None


def reward_kind(task: Task, code_reward: str) -> str:
    """The training reward a method's `code_reward` setting selects on `task`: that kind on a code task
    (UserError if the task lacks it), the binary grade on every other task."""
    kind = code_reward if task.answer_kind == "code" else "binary"
    task.check_reward_kind(kind)
    return kind


def training_rewards(task: Task, problems: list[Problem], completions: list[str], kind: str) -> list[float]:
    """`task.rewards` of that kind; binary is asked for the old way, so tasks that predate kinds work."""
    if kind == "binary":
        return task.rewards(problems, completions)
    return task.rewards(problems, completions, kind=kind)


def train_scale(name: str, updates_per_batch: int) -> dict:
    """The registered task's `Task.train_scale`; {} for a name no task has (the caller reports it)."""
    if name not in _TASKS.names():
        return {}
    return _TASKS.get(name).train_scale(updates_per_batch)


def get_task(name: str, data_dir: str | None = None, answer_mode: str = "flexible") -> Task:
    cls = _TASKS.get(name)
    if data_dir is not None and not Path(data_dir).is_dir():  # else the task would silently look elsewhere
        raise UserError(f"data folder {str(data_dir)!r} does not exist")
    return cls(data_dir=data_dir).set_answer_mode(answer_mode)
