"""Reproducibility: deterministic mode gives bit-identical training in fresh processes; every sweep and
training run records the environment it ran in, beside (never inside) its config hash."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dlm_bench import environment as envm
from dlm_bench.cli import main
from dlm_bench.protocol import Protocol, deterministic_threads, load_protocol
from dlm_bench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--task", "testbed", "--train-steps", "2", "--device", "cpu", "--no-progress", "--set", "group_size=4",
         "--set", "batch_prompts=2", "--set", "gen_length=8", "--set", "steps=8", "--set", "block_length=8",
         "--set", "lora_r=0", "--set", "lr=1e-3", "--set", "lr_schedule=constant"]


def _train_in_fresh_process(model: str, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "--deterministic", "--threads", "1", "train",
                        "trafl", "--model", model, "--out", str(out), *TRAIN],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file
    return load_file(str(out / "checkpoint" / "model.safetensors"))


def test_deterministic_training_is_bit_identical_in_fresh_processes(tiny_dir, tmp_path):
    a = _train_in_fresh_process(tiny_dir, tmp_path / "a")
    b = _train_in_fresh_process(tiny_dir, tmp_path / "b")
    from safetensors.torch import load_file
    base = load_file(str(Path(tiny_dir) / "model.safetensors"))
    assert a.keys() == b.keys() == base.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert any(not torch.equal(a[k], base[k]) for k in a)          # training did move the weights
    (env,) = envm.history(tmp_path / "a")                            # one environment, noted at the save
    assert env["deterministic_mode"] and env["deterministic_algorithms"] and env["torch_threads"] == 1
    assert env["step"] == 2 and env["device"] == "cpu" and env["dtype"] == "float32"
    assert set(env["versions"]) == {"python", "torch", "transformers", "dlm-bench"}
    assert not (tmp_path / "a" / "checkpoint" / envm.LOG).exists()  # not in the model's fingerprint


def test_set_deterministic_and_restore():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.benchmark, os.environ.get(envm.CUBLAS_VAR))
    saved = envm.set_deterministic(1)
    try:
        env = envm.environment("cpu")
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert env["deterministic_mode"] and env["torch_threads"] == 1 and env["cudnn_deterministic"]
        assert os.environ[envm.CUBLAS_VAR] == (before[3] or envm.CUBLAS_FIXED)
    finally:
        envm.restore(saved)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark, os.environ.get(envm.CUBLAS_VAR)) == before
    assert not envm.environment("cpu")["deterministic_mode"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="positive thread count"):
            envm.set_deterministic(bad)


def test_context_leaves_a_mode_set_on_the_command_line_alone():
    saved = envm.set_deterministic(1)
    try:
        with envm.deterministic(2):                  # the config asks for 2; the CLI said 1
            assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        envm.restore(saved)
    with envm.deterministic(None):
        assert not torch.are_deterministic_algorithms_enabled()


def test_global_flags(capsys):
    assert main(["--threads", "0", "tasks"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "methods"]) == 0          # the value is not taken for the command
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_demo_config_turns_deterministic_mode_on(tmp_path):
    assert deterministic_threads(load_protocol("configs/demo.yaml")) == 2
    assert deterministic_threads(Protocol()) is None
    cfg = yaml.safe_load(Path("configs/demo.yaml").read_text())
    for bad, why in (({"threads": 0}, "threads must be >= 1"), ({"threads": "two"}, "threads must be an integer"),
                     (True, "deterministic must be a mapping"), ({"threads": True}, "threads must be an integer"),
                     ({"thread": 2}, "unknown key 'deterministic.thread'; did you mean 'deterministic.threads'")):
        p = tmp_path / "d.yaml"
        p.write_text(yaml.safe_dump({**cfg, "deterministic": bad}))
        with pytest.raises(UserError, match=why):
            load_protocol(str(p))


def test_note_adds_a_line_only_when_the_environment_changes(tmp_path):
    envm.note(tmp_path, "cpu", torch.float32, step=1)
    envm.note(tmp_path, "cpu", torch.float32, step=2)            # a resume on the same machine
    assert [e["step"] for e in envm.history(tmp_path)] == [1]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)           # resumed with another thread count
        envm.note(tmp_path, "cpu", torch.float32, step=3)
    finally:
        torch.set_num_threads(threads)
    assert [e["step"] for e in envm.history(tmp_path)] == [1, 3]


def test_sweep_records_its_environment_beside_the_hash(tiny_dir, tmp_path):
    sweep = ["passk", "--model", tiny_dir, "--method", "m", "--task", "testbed", "--k", "1", "--n", "1",
             "--temps", "0.5", "--lengths", "8", "--block-length", "4", "--steps-per-token", "0.5",
             "--limit", "2", "--device", "cpu", "--no-progress"]
    assert main([*sweep, "--out", str(tmp_path / "plain")]) == 0
    saved = envm.set_deterministic(1)
    try:
        assert main([*sweep, "--out", str(tmp_path / "det")]) == 0
    finally:
        envm.restore(saved)
    plain, det = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("plain", "det"))
    assert [c["config_hash"] for c in plain["cells"]] == [c["config_hash"] for c in det["cells"]]
    assert not plain["environment"]["deterministic_mode"] and det["environment"]["deterministic_mode"]
    assert det["environment"]["dtype"] == "float32" and det["model_runtime"]["dtype"] == "float32"
    assert [e["deterministic_mode"] for e in det["environments"]] == [True]
