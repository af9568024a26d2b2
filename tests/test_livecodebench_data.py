"""LiveCodeBench on its real problems (../shared/data/livecodebench: 279 release_v5 problems, public tests
only, no labels): they load and run through the sandbox, every result says which tests graded it, and
the difficulty split is refused in one line."""
import pytest

from dlm_bench.cli import main
from dlm_bench.errors import UserError
from dlm_bench.tasks import get_task
from dlm_bench.tasks.livecodebench import LiveCodeBench

# Hand-written solutions of two real problems: row 0 (stdin: position of the second largest element)
# and row 5 (functional: shortest path 0 -> n-1 after each added road, by BFS).
SECOND_LARGEST = "n = int(input())\na = list(map(int, input().split()))\nprint(a.index(sorted(a)[-2]) + 1)\n"
SHORTEST = ("from collections import deque\nclass Solution:\n"
            "    def shortestDistanceAfterQueries(self, n, queries):\n"
            "        adj = [[i + 1] for i in range(n - 1)] + [[]]\n        out = []\n"
            "        for u, v in queries:\n            adj[u].append(v)\n            dist = [-1] * n\n"
            "            dist[0] = 0\n            q = deque([0])\n            while q:\n"
            "                x = q.popleft()\n                for y in adj[x]:\n"
            "                    if dist[y] < 0:\n                        dist[y] = dist[x] + 1\n"
            "                        q.append(y)\n            out.append(dist[n - 1])\n        return out\n")


def fenced(code: str) -> str:
    return f"```python\n{code}```"


@pytest.fixture(scope="module")
def problems():
    return get_task("livecodebench").load("test")


def test_real_set_loads_public_tests_only(problems):
    assert len(problems) == 279
    assert sum(p.answer["func_name"] is not None for p in problems) == 104     # LeetCode-style, 175 stdin
    assert all(p.meta["public_tests_only"] and p.meta["n_private"] == 0 for p in problems)
    task = get_task("livecodebench")
    task.load("test")
    assert task.test_set == "public" and task.grader_id()["tests"] == "public"
    assert task.result_note() == "public tests only"


def test_real_problems_run_in_the_sandbox(problems):
    task = get_task("livecodebench")
    task.load("test")
    grades = task.grade_many([problems[0], problems[5], problems[0]],
                             [fenced(SECOND_LARGEST), fenced(SHORTEST), fenced("print(1)\n")])
    assert [(g.correct, g.reason) for g in grades] == [(True, "correct"), (True, "correct"), (False, "wrong")]
    assert all(g.public_tests_only for g in grades)


def test_difficulty_split_refused_in_one_line(capsys, tmp_path):
    with pytest.raises(UserError, match="no difficulty labels") as exc:
        get_task("livecodebench").load("hard")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="no difficulty labels"):
        LiveCodeBench(difficulty="easy").load()
    assert main(["passk", "--model", str(tmp_path), "--method", "m", "--task", "livecodebench",
                 "--split", "hard", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no difficulty labels" in err and "\n" not in err


def test_official_release_wins_over_the_public_copy(tmp_path):
    """Where a user has the official release file (with private tests), it is read instead."""
    from pathlib import Path
    fix = Path(__file__).parent / "fixtures" / "livecodebench"
    (tmp_path / "livecodebench").mkdir()
    (tmp_path / "livecodebench" / "test.jsonl").write_bytes((fix / "test.jsonl").read_bytes())
    task = get_task("livecodebench", data_dir=str(tmp_path))
    probs = task.load("test")
    assert len(probs) == 6 and task.test_set == "public+private" and task.result_note() is None
    assert [p.id for p in task.load("hard")] == ["fix_stdin_hard", "9003"]
    assert task.locate("test") == str(tmp_path / "livecodebench")


def test_grade_command_prints_the_test_set(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text(f'{{"index": 0, "completion": {__import__("json").dumps(fenced(SECOND_LARGEST))}}}\n')
    assert main(["grade", "livecodebench", str(src)]) == 0
    out = capsys.readouterr().out
    assert "correct=1" in out and "(public tests only)" in out


def test_passk_prints_public_tests_only_beside_its_numbers(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["passk", "--model", tiny_dir, "--method", "base", "--task", "livecodebench", "--k", "1",
                 "--num-samples", "1", "--temps", "0.5", "--lengths", "8", "--limit", "2", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(livecodebench: public tests only)" in printed.split("Pass@1 (%)")[1]
    import json
    results = json.loads((out / "results.json").read_text())
    assert results["note"] == "public tests only"
    assert {c["config"]["grader"]["tests"] for c in results["cells"]} == {"public"}
