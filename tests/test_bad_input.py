"""Every bad input of issue 11: one line on stderr, exit 2, no traceback, nothing written, existing
records byte-identical afterwards. Model loading is forbidden where the check must come first."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dlm_bench.cli import main
from dlm_bench.runs.store import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--method", "base", "--task", "testbed", "--k", "1,2", "--n", "2", "--lengths", "8",
         "--block-length", "4", "--steps-per-token", "0.5", "--limit", "3", "--device", "cpu", "--no-progress"]


def _passk(model, out, temps="0.5", *extra):
    return ["passk", "--model", str(model), "--out", str(out), f"--temps={temps}", *SWEEP, *extra]


def _one_line_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def done_run(tiny_dir, tmp_path_factory):
    """A finished sweep whose files every bad call below must leave untouched."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert main(_passk(tiny_dir, out)) == 0
    return out


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")
    import dlm_bench.models
    monkeypatch.setattr(dlm_bench.models, "load_model", refuse)


@pytest.mark.parametrize("damage", ["truncate", "random", "empty"])
def test_broken_safetensors(damage, tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    w = model / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes({"truncate": data[:len(data) // 2], "random": os.urandom(4096), "empty": b""}[damage])
    out = tmp_path / "run"
    assert "model.safetensors" in _one_line_exit_2(_passk(model, out), capsys)
    assert not out.exists()
    _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", str(model), "--out", str(tmp_path / "t")],
                     capsys)
    assert not (tmp_path / "t").exists()
    _one_line_exit_2(["info", str(model)], capsys)        # the loader itself reports it too


def _prompts(tmp_path) -> str:
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"prompt": "1+1="}\n')
    return str(p)


def test_out_is_a_file_or_under_a_file(tiny_dir, tmp_path, capsys, no_model_loads):
    f = tmp_path / "file"
    f.write_text("keep")
    for out in (f, f / "sub"):
        assert "file" in _one_line_exit_2(_passk(tiny_dir, out), capsys)
        assert "file" in _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", tiny_dir,
                                           "--out", str(out)], capsys)
        assert "file" in _one_line_exit_2(["sample", tiny_dir, _prompts(tmp_path), "-o", str(out / "x.jsonl")],
                                          capsys)
    assert "folder" in _one_line_exit_2(["sample", tiny_dir, _prompts(tmp_path), "-o", str(tmp_path)], capsys)
    assert f.read_text() == "keep"


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into, for real: chmod for a normal user; root ignores modes, so
    there it is made immutable (chattr +i), which binds root too."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        os.chmod(ro, 0o555)
        yield ro
        os.chmod(ro, 0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("running as root on a filesystem without chattr +i: cannot make a folder read-only")
    try:
        yield ro
    finally:
        subprocess.run(["chattr", "-i", str(ro)], check=True)


def test_out_not_writable(read_only_dir, tiny_dir, capsys, no_model_loads):
    ro = read_only_dir
    for out in (ro, ro / "sub"):
        assert "not writable" in _one_line_exit_2(_passk(tiny_dir, out), capsys)
    _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", tiny_dir, "--out", str(ro / "t")], capsys)
    _one_line_exit_2(["sample", tiny_dir, _prompts(ro.parent), "-o", str(ro / "x.jsonl")], capsys)
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("temps", ["nan", "inf", "0.5,nan", "-inf"])
def test_non_finite_temperatures(temps, done_run, tiny_dir, capsys, no_model_loads):
    before = _snapshot(done_run)
    _one_line_exit_2(_passk(tiny_dir, done_run, temps), capsys)
    assert _snapshot(done_run) == before


def test_missing_data_dir(tiny_dir, tmp_path, capsys, no_model_loads):
    nope = str(tmp_path / "nope")
    assert "nope" in _one_line_exit_2(_passk(tiny_dir, tmp_path / "run", "0.5", "--data-dir", nope), capsys)
    assert not (tmp_path / "run").exists()
    src = tmp_path / "c.jsonl"
    src.write_text('{"index": 0, "completion": "4"}\n')
    _one_line_exit_2(["grade", "countdown", str(src), "--data-dir", nope], capsys)
    _one_line_exit_2(["tasks", "--data-dir", nope], capsys)
    _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", tiny_dir, "--out", str(tmp_path / "t"),
                      "--data-dir", nope], capsys)


def test_grade_with_every_row_bad_writes_nothing(tmp_path, capsys):
    src = tmp_path / "gsm8k_rows.jsonl"       # rows of GSM8K graded as MATH-500: the wrong task name
    src.write_text("".join(json.dumps({"problem_id": f"gsm8k/test/{i}", "completion": "\\boxed{1}"}) + "\n"
                           for i in range(5)))
    err = _one_line_exit_2(["grade", "math500", str(src), "-o", str(tmp_path / "o.jsonl")], capsys)
    assert "all 5 rows" in err and "math500" in err
    assert not (tmp_path / "o.jsonl").exists()
    (tmp_path / "empty.jsonl").write_text("\n")
    _one_line_exit_2(["grade", "gsm8k", str(tmp_path / "empty.jsonl")], capsys)
    _one_line_exit_2(["grade", "gsm8k", str(src), "-o", str(tmp_path)], capsys)   # -o is a folder


@pytest.mark.parametrize("setting", ["block_length=7", "steps=3", "temperature=-1", "temperature=nan",
                                     "gen_length=0"])
def test_train_checks_sampler_settings_before_loading(setting, tiny_dir, tmp_path, capsys, no_model_loads):
    out = tmp_path / "t"
    _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", tiny_dir, "--out", str(out),
                      "--set", "gen_length=8", "--set", "steps=8", "--set", "block_length=4", "--set", setting],
                     capsys)
    assert not out.exists()


def test_resume_with_another_model_names_the_difference(tiny_dir, tmp_path, capsys, no_model_loads):
    import dataclasses

    import torch

    from dlm_bench.commands.train import add_arguments, build_config
    import argparse
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "t"
    cfg = build_config(p.parse_args(["espo", "--task", "testbed", "--model", "/elsewhere/model", "--out", str(out)]))
    (out / "checkpoint").mkdir(parents=True)
    torch.save({"config": dataclasses.asdict(cfg), "step": 1, "opt_step": 1}, out / "checkpoint" / "trainer_state.pt")
    before = _snapshot(out / "checkpoint")
    err = _one_line_exit_2(["train", "espo", "--task", "testbed", "--model", tiny_dir, "--out", str(out)], capsys)
    assert "model: '/elsewhere/model' there" in err and repr(tiny_dir) in err
    assert _snapshot(out / "checkpoint") == before


def _fsize_limit(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # the write then fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_loses_nothing(tiny_dir, tmp_path):
    """A real failed write (file-size limit: the kernel refuses the write as on a full disk): one line,
    exit 2, the records already there intact, no torn line; a re-run completes the sweep."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "dlm_bench.cli"]
    assert subprocess.run(cli + _passk(tiny_dir, out), env=env, capture_output=True, timeout=300).returncode == 0
    before = {k: (out / f"{k}.jsonl").read_bytes() for k in ("generations", "scores")}
    limit = max(len(b) for b in before.values()) + 1500        # room for a batch or two, not for 3 cells
    r = subprocess.run(cli + _passk(tiny_dir, out, "0.5,0.7,0.9,1.1"), env=env, capture_output=True, text=True,
                       timeout=300, preexec_fn=_fsize_limit(limit))
    errors = [line for line in r.stderr.splitlines() if line.startswith("dlm-bench")]   # not the load bar
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "re-run to resume" in errors[0]
    for k, b in before.items():
        now = (out / f"{k}.jsonl").read_bytes()
        assert now.startswith(b) and now.endswith(b"\n")
        read_jsonl(out / f"{k}.jsonl")                       # every line whole
    assert subprocess.run(cli + _passk(tiny_dir, out, "0.5,0.7,0.9,1.1"), env=env, capture_output=True,
                          timeout=300).returncode == 0
    rows = read_jsonl(out / "scores.jsonl")
    keys = {(r["config_hash"], r["problem_id"], r["sample"]) for r in rows}
    assert len(rows) == len(keys) == 4 * 3 * 2
