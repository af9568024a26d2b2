"""`dlm-bench runs`: real run folders made by real sweeps; stale ones (superseded, model gone, model
changed) are found and pruned, dry run by default, never while a live writer holds one."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dlm_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--task", "testbed", "--k", "1,2", "--n", "2", "--temps", "0.5", "--lengths", "8", "--block-length", "4",
         "--steps-per-token", "0.5", "--limit", "3", "--device", "cpu", "--no-progress"]
HOLD = """
import sys, time
from pathlib import Path
from dlm_bench.runs.locks import folder_lock
with folder_lock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
"""


def _model(tiny_dir, where: Path, jitter: float = 0.0) -> Path:
    shutil.copytree(tiny_dir, where)
    if jitter:
        _perturb(where, jitter)
    return where


def _perturb(model: Path, jitter: float) -> None:
    from safetensors.torch import load_file, save_file
    w = load_file(model / "model.safetensors")
    g = torch.Generator().manual_seed(int(jitter * 1e6))
    save_file({k: v + jitter * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
               for k, v in w.items()}, model / "model.safetensors", metadata={"format": "pt"})


def _sweep(model, label, out) -> None:
    assert main(["passk", "--model", str(model), "--method", label, "--out", str(out), *SWEEP]) == 0


@pytest.fixture(scope="module")
def made(tiny_dir, tmp_path_factory):
    """runs/base current; runs/old superseded by runs/new (same label, retrained); runs/gone's model
    deleted; runs/edited's model retrained in place; runs/s/seed-K: two training seeds, both current."""
    tmp_path = tmp_path_factory.mktemp("made")
    r = tmp_path / "runs"
    _sweep(tiny_dir, "base", r / "base")
    _sweep(_model(tiny_dir, tmp_path / "v1" / "ckpt", 0.01), "m", r / "old")
    time.sleep(0.01)
    _sweep(_model(tiny_dir, tmp_path / "v2" / "ckpt", 0.02), "m", r / "new")
    gone = _model(tiny_dir, tmp_path / "gone", 0.03)
    _sweep(gone, "g", r / "gone")
    shutil.rmtree(gone)
    edited = _model(tiny_dir, tmp_path / "edited", 0.04)
    _sweep(edited, "e", r / "edited")
    _perturb(edited, 0.05)
    for seed in (0, 1):
        _sweep(_model(tiny_dir, tmp_path / f"s{seed}", 0.06 + seed / 100), "s", r / "s" / f"seed-{seed}")
    return r


@pytest.fixture
def runs(made, tmp_path):
    """A fresh copy of the folders for each test (the models they name are shared, never changed)."""
    return Path(shutil.copytree(made, tmp_path / "runs"))


def _status(text: str) -> dict:
    lines = text.strip().splitlines()
    start = lines[0].index("status")
    return {ln.split()[0]: ln[start:] for ln in lines[1:]}


def test_list_shows_every_folder_with_its_status(runs, capsys):
    capsys.readouterr()
    assert main(["runs", "list", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    st = _status(out)
    assert set(st) == {"base", "old", "new", "gone", "edited", "s/seed-0", "s/seed-1"}
    assert st["base"] == st["new"] == st["s/seed-0"] == st["s/seed-1"] == "current"
    assert st["old"].startswith("superseded") and str(runs / "new") in st["old"]
    assert st["gone"].startswith("model missing") and st["edited"].startswith("model changed")
    row = next(ln for ln in out.splitlines() if ln.startswith("old "))
    assert row.split()[1:3] == ["m", "testbed"] and "ckpt@" in row
    assert row.split()[4:7] == ["1", str(3 * 2), "yes"]           # cells, records, complete


def test_prune_is_a_dry_run_until_yes(runs, capsys):
    capsys.readouterr()
    assert main(["runs", "prune", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "dry run: 3 folder(s)" in out and all((runs / d).is_dir() for d in ("old", "gone", "edited"))
    assert main(["runs", "prune", "--runs", str(runs), "--yes"]) == 0
    left = sorted(str(p.parent.relative_to(runs)) for p in runs.rglob("configs.jsonl"))
    assert left == ["base", "new", "s/seed-0", "s/seed-1"]
    assert main(["compare", "m", "base", "--runs", str(runs), "--k", "2"]) == 0   # what is left still reads


def test_prune_refuses_while_a_live_writer_holds_a_folder(runs, tmp_path, capsys):
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(runs / "gone"), str(ready), str(stop)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        while not ready.exists():
            assert holder.poll() is None, "the lock holder died"
            time.sleep(0.05)
        capsys.readouterr()
        assert main(["runs", "prune", "--runs", str(runs), "--yes"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by pid {holder.pid}" in err and "nothing removed" in err
        assert all((runs / d).is_dir() for d in ("old", "gone", "edited"))
        assert main(["runs", "list", "--runs", str(runs)]) == 0
        assert f"in use by pid {holder.pid}" in _status(capsys.readouterr().out)["gone"]
    finally:
        stop.touch()
        holder.wait(timeout=60)
    assert main(["runs", "prune", "--runs", str(runs), "--yes"]) == 0      # the writer is gone: it goes
    assert not (runs / "gone").exists()


def test_remove_named_folders(runs, tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["runs", "remove", str(tmp_path / "plain")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["runs", "remove", str(runs / "new")]) == 0 and (runs / "new").is_dir()
    assert main(["runs", "remove", str(runs / "new"), "--yes"]) == 0 and not (runs / "new").exists()
    assert main(["runs", "list", "--runs", str(tmp_path / "nowhere")]) == 2


def test_a_complete_run_is_never_pruned_for_a_newer_incomplete_one(tiny_dir, tmp_path, capsys):
    """One rule for "the current model of a label" (runs.index.current): prune, compare and report agree
    that a complete sweep stays current while a newer model's sweep is unfinished."""
    from dlm_bench.runs.index import read_all_scores, read_index
    r = tmp_path / "runs"
    _sweep(_model(tiny_dir, tmp_path / "v1" / "ckpt", 0.01), "m", r / "complete")
    time.sleep(0.01)
    _sweep(_model(tiny_dir, tmp_path / "v2" / "ckpt", 0.02), "m", r / "partial")
    (r / "partial" / "results.json").unlink()          # as a sweep killed before its end
    capsys.readouterr()
    assert main(["runs", "list", "--runs", str(r)]) == 0
    listed = capsys.readouterr().out
    assert "incomplete, newer" in listed and "kept:" in listed
    assert main(["runs", "prune", "--runs", str(r), "--yes"]) == 0
    out = capsys.readouterr().out
    assert (r / "complete").is_dir() and (r / "partial").is_dir()
    assert f"keeping {r / 'complete'}" in out and "nothing to remove" in out
    kept = set(read_index(r / "complete"))
    assert set(read_all_scores(r)["config_hash"]) == kept      # what compare and report read
    assert "leaving out" in capsys.readouterr().err
    assert main(["runs", "prune", "--runs", str(r), "--include-incomplete-newer", "--yes"]) == 0
    assert not (r / "complete").exists() and (r / "partial").is_dir()
