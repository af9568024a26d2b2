"""docs/methods.md is generated from the configs: the committed file must equal the generated one."""
from pathlib import Path

from dlm_bench.commands.methods import markdown
from dlm_bench.methods import method_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def test_committed_methods_table_is_the_generated_one():
    assert DOC.read_text() == markdown() + "\n", \
        "docs/methods.md is stale: run `dlm-bench methods --markdown > docs/methods.md`"


def test_every_registered_method_and_every_setting_is_in_the_table():
    from dlm_bench.config import describe
    from dlm_bench.methods import get_method
    text = markdown()
    for name in method_names():
        assert f"## {name}\n" in text
        for path, *_ in describe(get_method(name).Config):
            assert f"| `{path}` |" in text


def test_every_deviation_row_names_a_test_that_exists():
    """docs/methods.md's fidelity tables: no "differs from the reference" row without a test."""
    import re
    from dlm_bench.methods.fidelity import ENGINE
    from dlm_bench.methods import get_method
    rows = list(ENGINE) + [d for n in method_names() for d in get_method(n).fidelity]
    assert len(rows) >= 20
    root = DOC.parents[1]
    for d in rows:
        path, name = d.test.split("::")
        src = (root / path).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", src, re.M), d.test
