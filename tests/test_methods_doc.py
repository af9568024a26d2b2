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


def test_every_builtin_method_has_a_family_and_a_comparison_row(capsys):
    """Issue 25: `dlm-bench methods` groups methods by family and docs/methods.md compares them."""
    from dlm_bench.cli import main
    from dlm_bench.methods import get_method
    from dlm_bench.methods.profile import FAMILIES
    builtin = [n for n in method_names() if get_method(n).__module__.startswith("dlm_bench.methods.")]
    for name in builtin:
        p = get_method(name).profile
        assert p is not None and p.family in FAMILIES, name
        assert p.estimator and p.reference, name
    # the memory estimate: rows x (256 + window) tokens x 32 layers x 4096 x 2 bytes (checkpointed LLaDA-8B)
    assert get_method("espo").profile.activation_gib(256) == 4 * 512 * 32 * 4096 * 2 / 2 ** 30 == 0.5
    table = markdown().split("## Comparison", 1)[1].split("\n## ", 1)[0]
    for name in builtin:
        assert f"| `{name}` | {get_method(name).profile.family} |" in table
    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    headers = [line[:-1] for line in out if line.endswith(":")]
    assert headers == [f for f in FAMILIES if any(get_method(n).profile.family == f for n in builtin)]
    # every method is listed under its own family's header
    current = None
    for line in out[1:]:
        if line.endswith(":"):
            current = line[:-1]
        else:
            assert get_method(line.split()[0]).profile.family == current, line
