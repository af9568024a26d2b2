"""Start-up: `dlm-bench --help`, every command's --help and `dlm-bench tasks` import none of the heavy
libraries (bench/startup.py times them); library deprecation notices are hidden unless -v."""
import subprocess
import sys

import pytest

from shared_files import real_model_snapshot

HEAVY = ("torch", "transformers", "datasets", "pandas", "scipy", "matplotlib")


def _imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


def test_help_and_tasks_import_no_heavy_library():
    from dlm_bench.cli import COMMANDS
    argvs = [["--help"]] + [[c, "--help"] for c in COMMANDS if c != "lm-eval"]   # lm-eval's help is lm-eval's
    helps = f"for argv in {argvs!r}:\n    try:\n        main(argv)\n    except SystemExit:\n        pass"
    assert _imported_after("from dlm_bench.cli import main\n" + helps) == []
    assert _imported_after("from dlm_bench.cli import main\nmain(['tasks'])") == []


def test_library_warnings_hidden_unless_verbose(tmp_path):
    from dlm_bench.models.random_init import build_tiny
    model = build_tiny(real_model_snapshot("llada-8b-instruct-maskfix"), tmp_path / "llada")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "What is 2+2?"}\n')
    argv = ["sample", str(model), str(prompts), "--gen-length", "8", "--steps", "2", "--block-length", "8"]
    quiet, loud = (subprocess.run([sys.executable, "-m", "dlm_bench.cli", *flags, *argv], capture_output=True,
                                  text=True, timeout=600) for flags in ([], ["-v"]))
    assert quiet.returncode == loud.returncode == 0
    assert "deprecated" in loud.stderr            # transformers 5 logs these for LLaDA's remote code
    assert "deprecated" not in quiet.stderr
    assert quiet.stdout.count('"completion"') == loud.stdout.count('"completion"') == 1


def test_hide_filters_library_deprecations_only():
    import warnings
    from dlm_bench import library_warnings
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        library_warnings.hide()
        warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="transformers_modules.llada.modeling")
        warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="dlm_bench.sampler")
        warnings.warn_explicit("real", UserWarning, "x.py", 1, module="transformers.modeling_utils")
    assert [str(w.message) for w in seen] == ["ours", "real"]
    library_warnings._hidden = False
