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
