"""The package's shape, pinned: layers import only downward, no import cycle (imports inside functions
count too: hiding one there does not break a cycle), no private name imported from another module,
no function over 80 lines. `docs/architecture.md` draws the layers."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dlm_bench"
# Lowest first; a module belongs to the longest prefix that names it.
LAYERS = (
    ("dlm_bench", "dlm_bench.errors", "dlm_bench.checks", "dlm_bench.config", "dlm_bench.registry",
     "dlm_bench.library_warnings"),
    ("dlm_bench.sampler", "dlm_bench.block_sampler", "dlm_bench.decoders", "dlm_bench.likelihood", "dlm_bench.models",
     "dlm_bench.runs", "dlm_bench.sandbox",
     "dlm_bench.distributed", "dlm_bench.environment"),
    ("dlm_bench.methods", "dlm_bench.tasks", "dlm_bench.stats", "dlm_bench.report", "dlm_bench.judge"),
    ("dlm_bench.protocol", "dlm_bench.evaluate", "dlm_bench.training", "dlm_bench.lm_eval_adapter",
     "dlm_bench.memory"),
    ("dlm_bench.commands", "dlm_bench.cli"),
)
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> tuple[str, str | None]:
    """(module imported, name taken from it or None) for one alias of an import statement."""
    if isinstance(node, ast.Import):
        name, taken = alias.name, None
    else:
        base = module.split(".")
        if node.level:
            if MODULES[module].name != "__init__.py":
                base = base[:-1]
            base = base[:len(base) - node.level + 1] + ([node.module] if node.module else [])
            name = ".".join(base)
        else:
            name = node.module
        sub = f"{name}.{alias.name}"
        name, taken = (sub, None) if sub in MODULES else (name, alias.name)
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name, taken


def _imports() -> dict[str, set[tuple[str, str | None]]]:
    """module -> {(module it imports, name it takes from there or reads as an attribute of it)}."""
    edges = {}
    for mod, path in MODULES.items():
        found, aliases = set(), {}
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    target, taken = _target(mod, node, a)
                    if target in MODULES and target != mod:
                        found.add((target, taken))
                        if taken is None and (a.asname or isinstance(node, ast.ImportFrom)):
                            aliases[a.asname or a.name] = target
        for node in ast.walk(tree):          # `metrics._helper(...)` reads a private name as well
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                found.add((aliases[node.value.id], node.attr))
        edges[mod] = found
    return edges


EDGES = _imports()


def _layer(mod: str) -> int:
    best = max(((len(p), i) for i, layer in enumerate(LAYERS) for p in layer if mod == p or mod.startswith(p + ".")),
               default=None)
    assert best is not None, f"{mod} is in no layer of tests/test_layout.py; add it where it belongs"
    return best[1]


def test_layers_import_only_downward():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in EDGES.items() for b, _ in targets if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {a: {b for b, _ in t} for a, t in EDGES.items()}
    state, stack, cycles = {}, [], []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                cycles.append(" -> ".join(stack[stack.index(w):] + [w]))
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "\n".join(cycles)


def test_no_private_name_imported_across_modules():
    private = [f"{a} imports {name} from {b}" for a, targets in EDGES.items() for b, name in targets
               if name and name.startswith("_") and not name.startswith("__")]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_function_over_80_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, ", ".join(long)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above are not vacuous: the import parser finds the edges it must judge."""
    assert ("dlm_bench.errors", "UserError") in EDGES["dlm_bench.training.loop"]
    assert any(b == "dlm_bench.runs.files" for b, _ in EDGES["dlm_bench.environment"])
    assert _layer("dlm_bench.commands.passk") > _layer("dlm_bench.training.loop") > _layer("dlm_bench.sampler")


def test_a_plain_install_carries_methods_tasks_and_data_files(tmp_path):
    """`pip install .` (not editable): dlm_bench.methods and dlm_bench.tasks import from the installed
    copy, with the judge's prompt and the sandbox runner's source files beside them."""
    import subprocess
    import sys
    root = PKG.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    probe = ("import dlm_bench, dlm_bench.methods, dlm_bench.tasks; "
             "from dlm_bench.judge.prompt import load_template; from dlm_bench.sandbox import launch; "
             "print(dlm_bench.__file__); print(len(dlm_bench.methods.method_names()), "
             "len(dlm_bench.tasks.task_names()), bool(load_template(None).system), len(launch._RUNNER))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr
    where, counts = r.stdout.split("\n")[:2]
    assert where.startswith(str(tmp_path / "site"))
    methods, tasks, prompt, runner = counts.split()
    assert int(methods) >= 9 and int(tasks) >= 9 and prompt == "True" and int(runner) > 1000
