"""Records, results, checkpoints, logs and caches are created with the umask's modes (0644 / 0755
under 022), not tempfile's private 0600 / 0700; a stricter umask is honoured too."""
import os
import stat
from pathlib import Path

import pytest

from dlm_bench.cli import main

SWEEP = ["--task", "testbed", "--k", "1", "--n", "2", "--temps", "0.5", "--lengths", "8", "--block-length", "4",
         "--steps-per-token", "0.5", "--limit", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(params=[0o022, 0o077])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _expect(root: Path, mask: int) -> None:
    modes = _modes(root)
    wrong = {name: oct(m) for name, m in modes.items()
             if m != (0o777 if (root / name).is_dir() else 0o666) & ~mask}
    assert len(modes) >= 2 and wrong == {}


def test_sweep_folder_modes(tiny_dir, tmp_path, mask):
    from dlm_bench.runs.files import umask
    assert umask() == mask
    out = tmp_path / "run"
    assert main(["passk", "--model", tiny_dir, "--method", "m", "--out", str(out), *SWEEP]) == 0
    assert {"results.json", "scores.jsonl", "configs.jsonl", "environment.jsonl"} <= set(os.listdir(out))
    _expect(out, mask)


def test_checkpoint_and_judge_cache_modes(tiny, tmp_path, mask):
    from dlm_bench.training import checkpoint
    from dlm_bench.judge.client import JudgeCache
    checkpoint.save(tmp_path / "train", tiny, {"step": 1})
    assert (tmp_path / "train" / "checkpoint" / "model.safetensors").is_file()
    _expect(tmp_path / "train", mask)
    JudgeCache(tmp_path / "cache").put("k", {"verdict": "A"})
    assert JudgeCache(tmp_path / "cache").get("k") == {"verdict": "A"}
    _expect(tmp_path / "cache", mask)
