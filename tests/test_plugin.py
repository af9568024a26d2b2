"""A method and a task from an out-of-tree package, exactly as docs/new-method.md writes them:
entry points found, then train -> sweep -> compare through the CLI on a tiny model."""
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "new-method.md"


def doc_files() -> dict[str, str]:
    """The fenced blocks of the page that start with `# file: PATH`."""
    out = {}
    for body in re.findall(r"```(?:python|toml)\n(.*?)```", DOC.read_text(), re.S):
        first, _, rest = body.partition("\n")
        if first.startswith("# file: "):
            out[first[len("# file: "):].strip()] = rest
    return out


def doc_commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", DOC.read_text(), re.S).group(1)
    return [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def install(root: Path) -> dict:
    """Write the package and make its entry points visible the way `pip install` would: a
    .dist-info folder with entry_points.txt on the path."""
    files = doc_files()
    assert {"pyproject.toml", "mybench/reverse.py", "mybench/reinforce.py"} <= set(files)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    meta = tomllib.loads(files["pyproject.toml"])["project"]
    info = root / f"{meta['name']}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in meta["entry-points"].items()))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))


def cli(argv, env, cwd):
    assert argv[0] == "dlm-bench"
    quiet = ["--no-progress"] if argv[1] in ("train", "passk") else []
    return subprocess.run([sys.executable, "-m", "dlm_bench.cli", *argv[1:], *quiet],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_an_out_of_tree_method_and_task_run_the_whole_path(tmp_path, tiny_dir):
    env = install(tmp_path / "pkg")
    work = tmp_path / "work"
    work.mkdir()
    outputs = {}
    for argv in doc_commands():
        argv = [tiny_dir if a == "MODEL_DIR" else a for a in argv]
        r = cli(argv, env, work)
        assert r.returncode == 0, (argv, r.stderr[-2000:])
        outputs[argv[1]] = outputs.get(argv[1], "") + r.stdout
    assert "reinforce" in outputs["methods"] and "optim.lr = 1e-05 (alias lr)" in outputs["methods"]
    assert "my paper, Table 2" in outputs["methods"] and "baseline = 'group'" in outputs["methods"]
    assert re.search(r"^\s*reverse\b", outputs["tasks"], re.M)
    log = (work / "runs" / "reinforce" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4
    # the comparison pairs the 40 test problems of the plugin task at k = 4
    assert "reinforce (A) vs base (B)" in outputs["compare"]
    assert re.search(r"^\| reverse \| 8 \| 0\.9 \| 40 \|", outputs["compare"], re.M)


def test_a_bad_setting_of_the_plugin_method_is_a_one_line_error(tmp_path, tiny_dir):
    env = install(tmp_path / "pkg")
    r = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "train", "reinforce", "--task", "reverse",
                        "--model", tiny_dir, "--out", str(tmp_path / "o"), "--set", "baseline=median"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "reinforce: baseline must be one of group, none" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["method", "task"])
def test_a_plugin_that_reuses_a_builtin_name_is_refused(tmp_path, kind):
    root = tmp_path / "pkg"
    env = install(root)
    if kind == "method":
        (root / "mybench" / "reinforce.py").write_text(
            (root / "mybench" / "reinforce.py").read_text().replace('name = "reinforce"', 'name = "trafl"'))
        argv = ["methods"]
    else:
        (root / "mybench" / "reverse.py").write_text(
            (root / "mybench" / "reverse.py").read_text().replace('name = "reverse"', 'name = "gsm8k"'))
        argv = ["tasks"]
    r = subprocess.run([sys.executable, "-m", "dlm_bench.cli", *argv], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and f"two {kind}s are named" in r.stderr
