"""CLI conventions: --help states defaults, light commands never import torch, passk prints every k,
flags that survive torchrun, and one meaning for --steps (denoising steps)."""
import subprocess
import sys
from pathlib import Path

import pytest

from dlm_bench.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def _help(command, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_states_defaults(command, capsys):
    text = " ".join(_help(command, capsys).split())
    expected = {"passk": ["--num-samples N, --n N samples per problem", "(default: 16)", "(default: 1,5,16)",
                          "(default: 32)", "base seed (part of the config hash) (default: 0)"],
                "sample": ["(default: 128)", "(default: low_confidence)"],
                "grade": ["(default: flexible)"],
                "compare": ["primary k (default: 5)", "(default: results/passk)"],
                "pretrain": ["--train-steps STEPS (default: 2000)"]}
    for fragment in expected.get(command, []):
        assert fragment in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_light_commands_do_not_import_torch():
    code = ("import sys\nfrom dlm_bench.cli import main\n"
            "for argv in (['grade', '--help'], ['passk', '--help'], ['train', '--help'], ['info', '--help'],"
            " ['sample', '--help'], ['compare', '--help'], ['--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert main(['tasks']) == 0\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO-TORCH"


def test_passk_prints_every_requested_k(tiny_dir, tmp_path, capsys):
    argv = ["passk", "--model", tiny_dir, "--method", "base", "--task", "testbed", "--k", "1..3,5", "--n", "5",
            "--temps", "0.5", "--lengths", "8", "--block-length", "4", "--steps-per-token", "0.5", "--limit", "2",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [k for k in range(1, 7) if f"Pass@{k} (%)" in out] == [1, 2, 3, 5]


def test_sample_count_flag_survives_torchrun():
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "dlm_bench.cli", "passk", "--num-samples",
                                         "4", "--k", "1,2"])
    assert args.training_script_args == ["passk", "--num-samples", "4", "--k", "1,2"]


def test_steps_means_denoising_steps(tiny_dir, capsys):
    import argparse

    from dlm_bench.commands import train
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    cfg = train.build_config(p.parse_args(["espo", "--task", "testbed", "--model", tiny_dir, "--train-steps", "3"]))
    assert cfg.train_steps == 3
    with pytest.raises(SystemExit):      # the old spelling is refused, not silently reinterpreted
        main(["train", "espo", "--task", "testbed", "--model", tiny_dir, "--steps", "3"])
    assert "--steps" in capsys.readouterr().err
