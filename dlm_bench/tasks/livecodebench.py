"""LiveCodeBench code generation (Jain et al. 2024), official `code_generation_lite` release files.

Rows: question_title, question_content, platform, question_id, contest_id, contest_date, starter_code,
difficulty (easy/medium/hard), public_test_cases (JSON list of {input, output, testtype}),
private_test_cases (JSON, or base64 of zlib of a pickled JSON string) and metadata (JSON; func_name
for LeetCode "functional" problems). Release files: test.jsonl (release_v1), test2.jsonl ... (each
later release adds one file). Private tests are unpickled with an Unpickler that refuses every
global, so only plain strings and containers can come out — never pickle.loads.

Grading follows lcb_runner/evaluation/testing_util.py, but every test runs in the sandbox and the
expected outputs never enter it (compared here):
- stdin problems: one fresh process per test, stdout vs expected after stripping the whole text and
  each line; lines equal, or equal as lists of Decimal tokens. Every test runs even after a wrong
  output (LCB stops there, but then whether test k+1 runs tells the program its output k was
  right); only a crash or timeout, which the program can observe itself, stops the row.
- functional problems: one process serves Solution().<func_name>(*args) calls, args = JSON lines of
  the input; each result comes back as plain data and is compared here as LCB's JSON round trip
  sees it (a tuple counts as a list). A fresh Solution() per test.
Both get LCB's import prelude. Copies without private tests are accepted and every problem and grade
is marked `public_tests_only`; where no official file is found, release_latest / release_v5 read the
data folder's public-tests copy (`PUBLIC_COPY`, 279 problems of 2024-08..2025-01). The test set
("public", "public+private") is part of the grader id, so of every result's hash, and `result_note`
prints "public tests only" beside the numbers. Splits: `test` (all) and `easy`/`medium`/`hard`, refused
where the data carries no difficulty labels. Reward: correctness (binary), or a recipe's format score + the
fraction of tests passed, every test run on its own (tasks/_code_reward.py; `test_cases`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from dlm_bench import sandbox
from dlm_bench.tasks import data
from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from . import _code_reward as code_reward
from ._code import CodeGrade, extract_code, no_answer, to_grade

RELEASE_FILES = ["test.jsonl"] + [f"test{i}.jsonl" for i in range(2, 10)]  # release_vN = first N
# ../shared/data's copy: the 279 release_v5 problems of 2024-08..2025-01 with their public tests only
# (rllm/DeepCoder's conversion; no ids, dates or difficulty labels). Used where no official file is.
PUBLIC_COPY = "livecodebench/rllm_lcb_v5_2408_2501_public.json"
PUBLIC_COPY_RELEASES = ("release_latest", "release_v5", "v5")
HUB_ID = "livecodebench/code_generation_lite"
DIFFICULTIES = ("easy", "medium", "hard")

# lcb_runner's import_string: solutions may use these names without importing them
PRELUDE = "\n".join(
    [f"from {m} import *" for m in ("string", "re", "datetime", "collections", "heapq", "bisect", "copy",
                                     "math", "random", "statistics", "itertools", "functools", "operator",
                                     "io", "sys", "json", "builtins", "typing")]
    + ["import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics",
       "import itertools, functools, operator, io, sys, json", "sys.setrecursionlimit(50000)", ""])


class _NoGlobals(pickle.Unpickler):
    """Only the pickle opcodes for plain values work; any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain strings are allowed")


def decode_tests(raw, qid: str) -> list[dict]:
    """public/private test list: JSON text, a list already, or base64(zlib(pickle(JSON text)))."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return raw
    try:
        tests = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        try:
            blob = zlib.decompress(base64.b64decode(raw.encode("ascii"), validate=True))
            obj = _NoGlobals(io.BytesIO(blob)).load()
        except pickle.UnpicklingError as e:
            raise UserError(f"livecodebench {qid}: private_test_cases is an unsafe pickle ({e})") from None
        except Exception as e:  # noqa: BLE001 - bad base64, zlib or pickle data
            raise UserError(f"livecodebench {qid}: cannot decode private_test_cases: {e}") from None
        if isinstance(obj, bytes):
            obj = obj.decode("utf-8")
        if not isinstance(obj, str):
            raise UserError(f"livecodebench {qid}: private_test_cases pickle holds {type(obj).__name__}, "
                            f"not a JSON string")
        tests = json.loads(obj)
    if not isinstance(tests, list) or not all(isinstance(t, dict) and "input" in t and "output" in t
                                               for t in tests):
        raise UserError(f"livecodebench {qid}: tests must be a list of {{input, output, testtype}}")
    return tests


def stdout_matches(got: str, want: str) -> bool:
    """lcb_runner's stdio check: same number of stripped lines, each equal or equal as Decimals."""
    a = [x.strip() for x in got.strip().split("\n")]
    b = [x.strip() for x in want.strip().split("\n")]
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            if [Decimal(t) for t in x.split()] != [Decimal(t) for t in y.split()]:
                return False
        except (InvalidOperation, ValueError):
            return False
    return True


def _func_name(meta: dict, starter_code: str, tests: list[dict]) -> str | None:
    """metadata's func_name; public conversions without metadata: the method in the starter code."""
    if meta.get("func_name"):
        return meta["func_name"]
    m = re.search(r"def\s+(\w+)\s*\(\s*self", starter_code or "")
    return m.group(1) if m and any(t.get("testtype") == "functional" for t in tests) else None


def _parse_date(s, what: str) -> date | None:
    if s in (None, ""):
        return None
    if isinstance(s, (date, datetime)):
        return s.date() if isinstance(s, datetime) else s
    try:
        return datetime.fromisoformat(str(s).replace("Z", "")).date()
    except ValueError:
        raise UserError(f"livecodebench: {what} must be a date like 2024-08-01, not {s!r}") from None


@register_task
class LiveCodeBench(Task):
    name = "livecodebench"
    answer_kind = "code"
    eval_split = "test"
    # test: every problem; easy/medium/hard: one difficulty (refused where the data has no labels)
    splits = {"test": None, "easy": None, "medium": None, "hard": None}
    data_files = {s: "livecodebench/test.jsonl" for s in splits}   # release_v1's file; see `locate`
    test_set = "unknown"      # "public", "public+private" or "mixed", once loaded
    system_prompt = ("You are an expert Python programmer. You will be given a question (problem "
                     "specification) and will generate a correct Python program that matches the "
                     "specification and passes all tests. You will NOT return anything except for the "
                     "program.")
    prompt_template = "### Question:\n{question}\n\n{format}### Answer: (use the provided format with backticks)\n\n"
    format_starter = ("### Format: You will use the following starter code to write the solution to the "
                      "problem and enclose your code within delimiters.\n```python\n{starter_code}\n```\n\n")
    format_stdin = ("### Format: Read the inputs from stdin solve the problem and write the answer to stdout "
                    "(do not directly test on the sample inputs). Enclose your code within delimiters as "
                    "follows.\n```python\n# YOUR CODE HERE\n```\n\n")
    template_source = ("LiveCodeBench/LiveCodeBench lcb_runner/prompts/code_generation.py, generic chat "
                       "format (SYSTEM_MESSAGE_GENERIC + get_generic_question_template_answer), as chat "
                       "messages for LLaDA-8B-Instruct")

    def __init__(self, data_dir: str | None = None, release: str = "release_latest",
                 difficulty: str | list[str] | None = None, start_date=None, end_date=None,
                 files: list[str] | None = None, test_timeout: float = 6.0, memory_mb: int = 4096):
        super().__init__(data_dir)
        if isinstance(difficulty, str):
            difficulty = [d.strip() for d in difficulty.split(",") if d.strip()]
        bad = [d for d in difficulty or [] if d not in DIFFICULTIES]
        if bad:
            raise UserError(f"livecodebench: difficulty must be among {DIFFICULTIES}, not {bad}")
        self.release, self.difficulty, self.files = release, difficulty, files
        self.start, self.end = _parse_date(start_date, "start_date"), _parse_date(end_date, "end_date")
        self.test_timeout, self.memory_mb = test_timeout, memory_mb

    # ---- data ------------------------------------------------------------------------------------

    def _release_files(self) -> list[Path]:
        """The official release files (test.jsonl, test2.jsonl, ...) of `release`, or the public-tests
        copy where the release is one it covers and no official file is found."""
        m = re.fullmatch(r"(release_)?v(\d)", self.release)
        if self.release != "release_latest" and not m:
            raise UserError(f"livecodebench: release must be release_latest, release_vN or vN, "
                            f"not {self.release!r}")
        n = int(m.group(2)) if m else len(RELEASE_FILES)
        names = RELEASE_FILES[n - 1:n] if m and not m.group(1) else RELEASE_FILES[:n]
        try:
            first = data.find_file("livecodebench/" + names[0], self.data_dir)
        except UserError:
            if self.release not in PUBLIC_COPY_RELEASES:
                raise
            return [data.find_file(PUBLIC_COPY, self.data_dir)]
        paths = [first]  # the later files of a release must sit beside the first one
        for name in names[1:]:
            if not (first.parent / name).is_file():
                if self.release == "release_latest":
                    break
                raise UserError(f"livecodebench {self.release}: {first.parent / name} is missing")
            paths.append(first.parent / name)
        return paths

    def locate(self, split: str) -> str:
        """The release files (or the public-tests copy) `load` reads, without reading them."""
        if self.files:
            return ", ".join(self.files)
        first = self._release_files()[0]
        if first.name != Path(PUBLIC_COPY).name:
            return str(first.parent)
        if split in DIFFICULTIES:
            return "easy/medium/hard: no difficulty labels in the public copy"
        return f"{first} (public tests only)"

    def _rows(self) -> list[tuple[dict, str]]:
        if self.files:
            missing = [f for f in self.files if not os.path.isfile(f)]
            if missing:
                raise UserError(f"livecodebench: file(s) not found: {', '.join(missing)}")
            paths = [Path(f) for f in self.files]
        else:
            try:
                paths = self._release_files()
            except UserError as local_err:
                try:  # the hub repo is a dataset script that recent `datasets` refuses; try anyway
                    return [(r, HUB_ID) for r in data.hub_dataset(HUB_ID, "test", self.release)]
                except UserError as hub_err:
                    raise UserError(f"{local_err} Hub: {hub_err}") from None
        return [(r, p.name) for p in paths for r in data.read_files([p])]

    def load(self, split: str = "test") -> list[Problem]:
        if split not in self.splits:
            raise UserError(f"livecodebench has splits {', '.join(self.splits)}, not {split!r}")
        wanted = [split] if split in DIFFICULTIES else self.difficulty
        out = []
        for i, (row, source) in enumerate(self._rows()):
            qid = str(row.get("question_id") or f"{source}:{i}")
            if wanted:  # filter before decoding the (possibly large) private tests
                if row.get("difficulty") not in DIFFICULTIES:
                    raise UserError(f"livecodebench: {source} has no difficulty labels (problem {qid}), so "
                                    f"the difficulty split cannot apply; it needs the official release files")
                if row["difficulty"] not in wanted:
                    continue
            if self.start or self.end:
                day = _parse_date(row.get("contest_date"), f"{qid} contest_date")
                if day is None:
                    raise UserError(f"livecodebench {qid}: no contest_date, so a date window cannot apply")
                if (self.start and day < self.start) or (self.end and day > self.end):
                    continue
            out.append(self._problem(row, qid, source))
        if not out:
            raise UserError("livecodebench: no problem matches the difficulty/date filters")
        self.test_set = test_set(out)
        return out

    def grader_id(self) -> dict:
        """The test set is part of what decides a grade: public-only and full results never share a hash."""
        return {**super().grader_id(), "tests": self.test_set}

    def result_note(self) -> str | None:
        return {"public": "public tests only", "mixed": "some problems public tests only"}.get(self.test_set)

    def _problem(self, row: dict, qid: str, source: str) -> Problem:
        official = "question_content" in row
        public = decode_tests(row.get("public_test_cases") if official else row.get("tests"), qid)
        private = decode_tests(row.get("private_test_cases"), qid) if official else []
        meta_raw = row.get("metadata") or {}
        meta = json.loads(meta_raw) if isinstance(meta_raw, str) else dict(meta_raw)
        tests = public + private
        if not tests:
            raise UserError(f"livecodebench {qid}: no test cases")
        func = _func_name(meta, row.get("starter_code") or "", tests)
        difficulty = row.get("difficulty")
        day = _parse_date(row.get("contest_date"), f"{qid} contest_date")
        answer = {"inputs": [t["input"] for t in tests], "outputs": [t["output"] for t in tests],
                  "func_name": func}
        if func:  # functional: each input line is one JSON argument
            try:
                answer["calls"] = [json.dumps([json.loads(x) for x in t["input"].split("\n")]) for t in tests]
                answer["expected"] = [json.loads(t["output"]) for t in tests]
            except json.JSONDecodeError as e:
                raise UserError(f"livecodebench {qid}: functional test is not JSON: {e}") from None
        return Problem(
            id=qid, question=row.get("question_content") or row.get("problem") or row.get("question") or "",
            answer=answer,
            meta={"title": row.get("question_title"), "platform": row.get("platform"),
                  "contest_id": row.get("contest_id"), "contest_date": day and day.isoformat(),
                  "difficulty": difficulty, "starter_code": row.get("starter_code") or "", "func_name": func,
                  "n_public": len(public), "n_private": len(private), "public_tests_only": not private,
                  "source": source})

    # ---- prompt, grading -------------------------------------------------------------------------

    def prompt(self, problem: Problem) -> list[dict]:
        starter = problem.meta["starter_code"]
        fmt = self.format_starter.format(starter_code=starter) if starter else self.format_stdin
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.prompt_template.format(question=problem.question, format=fmt)}]

    reward_kinds = ("binary", *code_reward.KINDS)

    def grade(self, problem: Problem, completion: str) -> Grade:
        return self.grade_many([problem], [completion])[0]

    def grade_many(self, problems: list[Problem], completions: list[str]) -> list[Grade]:
        sandbox.isolation()  # no sandbox and no explicit opt-out: UserError before any row is graded
        jobs = list(zip(problems, completions))
        if len(jobs) <= 1:
            return [self._grade_one(p, c) for p, c in jobs]
        with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            return list(pool.map(lambda job: self._grade_one(*job), jobs))

    def rewards(self, problems: list[Problem], completions: list[str], kind: str = "binary") -> list[float]:
        """Binary: correctness, graded in parallel (the default would grade one at a time). Else the
        recipe's format score + pass rate (tasks/_code_reward.py)."""
        self.check_reward_kind(kind)
        if kind != "binary":
            return code_reward.recipe_rewards(self, problems, completions, kind)
        return [float(g.correct) for g in self.grade_many(problems, completions)]

    def test_cases(self, problem: Problem, code: str, timeout: float) -> list[code_reward.Case]:
        """One run per test: a fresh process per stdin test, or one call of a fresh Solution()."""
        src, a = PRELUDE + code, problem.answer
        if a["func_name"]:
            return [(sandbox.Program(src, mode="call", cls="Solution", func=a["func_name"], inputs=(call,),
                                     per_call=timeout, timeout=timeout, memory_mb=self.memory_mb,
                                     max_output=64 << 20),
                     lambda r, want=want: r.passed and len(r.values) == 1 and _as_json(r.values[0]) == want)
                    for call, want in zip(a["calls"], a["expected"])]
        return [(sandbox.Program(src, stdin=inp, timeout=timeout, memory_mb=self.memory_mb,
                                 max_output=max(4 << 20, 2 * len(want.encode()) + 4096)),
                 lambda r, want=want: r.passed and stdout_matches(r.stdout, want))
                for inp, want in zip(a["inputs"], a["outputs"])]

    def _grade_one(self, problem: Problem, completion: str) -> CodeGrade:
        public_only = problem.meta["public_tests_only"]
        func = problem.answer["func_name"]
        code = extract_code(completion, "class Solution" if func else None)
        if code is None:
            return no_answer(public_only)
        if func:
            return self._grade_calls(problem, code, public_only)
        res, wrong = None, None
        for k, (inp, want) in enumerate(zip(problem.answer["inputs"], problem.answer["outputs"])):
            res = sandbox.run(sandbox.Program(
                PRELUDE + code, stdin=inp, timeout=self.test_timeout + 2.0, memory_mb=self.memory_mb,
                max_output=max(4 << 20, 2 * len(want.encode()) + 4096)))
            if not res.passed:  # it crashed or ran out of time: the program can tell that itself
                return wrong or to_grade(res, code, public_only)
            if wrong is None and not stdout_matches(res.stdout, want):
                wrong = CodeGrade(False, code, "wrong", res.isolation, f"test {k}: wrong output", public_only)
        # a wrong output does not stop the tests: whether test k+1 ran would tell the program (through
        # anything it leaves for a later job) that its output k was right
        return wrong or CodeGrade(True, code, "correct", res.isolation, "", public_only)

    def _grade_calls(self, problem: Problem, code: str, public_only: bool) -> CodeGrade:
        calls, expected = problem.answer["calls"], problem.answer["expected"]
        prog = sandbox.Program(PRELUDE + code, mode="call", cls="Solution", func=problem.answer["func_name"],
                               inputs=tuple(calls), per_call=self.test_timeout,
                               timeout=(self.test_timeout + 1) * len(calls) + 5, memory_mb=self.memory_mb,
                               max_output=64 << 20)
        res = sandbox.run(prog)
        for k, value in enumerate(res.values):  # plain data, in order, up to the first failure
            if _as_json(value) != expected[k]:
                return CodeGrade(False, code, "wrong", res.isolation, f"test {k}: wrong return value", public_only)
        if not res.passed:
            return to_grade(res, code, public_only)
        return CodeGrade(True, code, "correct", res.isolation, "", public_only)


def test_set(problems: list[Problem]) -> str:
    """Which tests grade these problems: "public" (a copy without private tests), "public+private"
    (the official release) or "mixed"."""
    public = {p.meta["public_tests_only"] for p in problems}
    return "mixed" if len(public) > 1 else "public" if public == {True} else "public+private"


def _as_json(value):
    """The value as LiveCodeBench's json.dumps round trip sees it: a tuple counts as a list, scalar
    dict keys become strings; anything else that is not JSON stays as is (and unequal)."""
    if type(value) in (list, tuple):
        return [_as_json(v) for v in value]
    if type(value) is dict:
        return {k if type(k) is str else json.dumps(k) if type(k) in (int, float, bool, type(None)) else k:
                _as_json(v) for k, v in value.items()}
    return value
