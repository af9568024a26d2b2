"""AIME 2024 / 2025: the real files load, every gold graded in the prompted format is correct, and the
answer is read as AIME defines it (an integer 0..999; "025" is 25)."""
import pytest

from dlm_bench.tasks import Problem, get_task
from dlm_bench.tasks.aime import aime_gold


def _boxed(ans) -> str:
    return f"Let me reason step by step.\nSo the answer is $\\boxed{{{ans}}}$."


@pytest.fixture(scope="module", params=["aime24", "aime25"])
def aime(request):
    task = get_task(request.param)
    return task, task.load("test")


def test_thirty_integer_answers_per_year(aime):
    task, probs = aime
    assert len(probs) == 30 == task.splits["test"]
    assert all(isinstance(p.answer, int) and 0 <= p.answer <= 999 for p in probs)
    assert len({p.id for p in probs}) == 30 and all(p.question.strip() for p in probs)
    assert task.prompt(probs[0])[0]["content"].endswith("within \\boxed{}.")


def test_known_first_answers():
    """MANIFEST.md: AIME 2024 I problem 1 is 204; AIME 2025 I problem 1 ("bases b > 9") is 70."""
    assert get_task("aime24").load("test")[0].answer == 204
    first = get_task("aime25").load("test")[0]
    assert first.answer == 70 and "b>9" in first.question


def test_oracle_every_gold_correct_and_off_by_one_wrong(aime):
    task, probs = aime
    for mode in ("flexible", "strict"):
        graded = get_task(task.name, answer_mode=mode)
        assert all(graded.grade(p, _boxed(p.answer)).correct for p in probs)
        assert all(graded.grade(p, _boxed(f"{p.answer:03d}")).correct for p in probs)   # zero-padded as on AoPS
        wrong = [graded.grade(p, _boxed((p.answer + 1) % 1000)) for p in probs]
        assert not any(g.correct for g in wrong) and {g.reason for g in wrong} == {"wrong"}
    assert all(task.grade(p, f"... so the answer is {p.answer}.").correct for p in probs)


def test_aime_answer_convention():
    task = get_task("aime24")
    p = Problem(id="x", question="q", answer=aime_gold("025"))
    assert p.answer == 25
    assert task.grade(p, _boxed("25")).correct and task.grade(p, _boxed("025")).correct
    assert task.grade(p, _boxed("25.5")).reason == "invalid"
    assert task.grade(p, _boxed("1025")).reason == "invalid"
    assert task.grade(p, _boxed("-25")).reason == "invalid"
    assert task.grade(p, "no number here").reason == "no_answer"
    strict = get_task("aime24", answer_mode="strict")
    assert strict.grade(p, "The answer is 25.").reason == "no_answer"   # strict: only the box counts
    with pytest.raises(ValueError):
        aime_gold("1000")


def test_aime_from_a_parquet_copy(tmp_path):
    """The same rows from a parquet copy of the file (a --data-dir holding aime24/test.parquet)."""
    import pandas as pd
    from dlm_bench.tasks.data import find_file
    src = find_file("aime24/test.jsonl")
    (tmp_path / "aime24").mkdir()
    pd.read_json(src, lines=True, dtype=False).to_parquet(tmp_path / "aime24" / "test.parquet")
    assert get_task("aime24", data_dir=str(tmp_path)).load("test") == get_task("aime24").load("test")


def test_tasks_lists_aime_with_its_data(capsys):
    from dlm_bench.cli import main
    from shared_files import missing, shared_data_present
    if not shared_data_present():
        missing("benchmark data absent (../shared/data or $DLM_BENCH_DATA)")
    assert main(["tasks"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    for name in ("aime24", "aime25", "olympiadbench"):
        assert "test=" in lines[name] and "missing" not in lines[name] and lines[name].rstrip().endswith(name)
