"""The one registry behind methods and tasks: duplicates and wrong kinds refused, plugins loaded."""
import pytest

from dlm_bench.errors import UserError
from dlm_bench.methods import Method, get_method, method_names
from dlm_bench.registry import Registry
from dlm_bench.tasks import Task, get_task, task_names


def test_builtins_are_registered():
    assert {"base", "trafl", "espo", "justgrpo", "tracerl", "tabom"} <= set(method_names())
    assert {"gsm8k", "math500", "humaneval", "mbpp", "testbed"} <= set(task_names())
    assert issubclass(get_method("trafl"), Method) and isinstance(get_task("testbed"), Task)


def test_duplicate_names_and_wrong_kinds_are_refused():
    reg = Registry("method", Method, "nowhere", (), "no.such.group")

    class A(Method):
        name = "same"

    class B(Method):
        name = "same"

    reg.register(A)
    reg.register(A)                      # the same class again (a re-import) is fine
    with pytest.raises(UserError, match="two methods are named 'same'"):
        reg.register(B)
    with pytest.raises(TypeError, match="not a subclass"):
        reg.register(Task)
    with pytest.raises(UserError, match="unknown method 'nope'"):
        reg.get("nope")
    assert reg.names() == ["same"]


def test_every_task_declares_its_answer_kind_and_downstream_uses_it():
    from dlm_bench.stats.diversity import is_expression_task
    from dlm_bench.tasks import answer_kind
    kinds = {name: answer_kind(name) for name in task_names()}
    assert set(kinds.values()) <= {"number", "math", "expression", "code", "grid"}
    assert kinds["humaneval"] == "code" and kinds["sudoku"] == "grid" and kinds["math500"] == "math"
    assert [n for n in task_names() if is_expression_task(n)] == ["countdown", "testbed"]
    assert not is_expression_task("countdown-like-plugin-not-installed")
