"""Masked-diffusion pre-training: the loss falls, checkpoints are atomic, and resume is exact."""
import json

import pytest
import torch
from safetensors.torch import load_file

from dlm_bench.errors import UserError
from dlm_bench.training.pretrain import PretrainConfig, pretrain

SMALL = dict(task="testbed", init="tiny:1m", batch_size=8, answer_length=12, lr=3e-3, warmup=2, save_every=2)


def _weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def test_resume_is_exact(tmp_path):
    straight = pretrain(PretrainConfig(out=str(tmp_path / "a"), steps=4, **SMALL), progress=False)
    pretrain(PretrainConfig(out=str(tmp_path / "b"), steps=2, **SMALL), progress=False)
    resumed = pretrain(PretrainConfig(out=str(tmp_path / "b"), steps=4, **SMALL), progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "log.jsonl")]
    assert steps == [1, 2, 3, 4]                     # nothing repeated, nothing lost
    assert not list((tmp_path / "b").glob(".checkpoint-*"))   # no half-written checkpoint left


def test_loss_falls(tmp_path):
    pretrain(PretrainConfig(out=str(tmp_path / "c"), steps=30, **{**SMALL, "save_every": 30}), progress=False)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "c" / "log.jsonl")]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_resuming_with_other_settings_is_refused(tmp_path):
    pretrain(PretrainConfig(out=str(tmp_path / "d"), steps=1, **SMALL), progress=False)
    with pytest.raises(UserError, match="another config"):
        pretrain(PretrainConfig(out=str(tmp_path / "d"), steps=2, **{**SMALL, "lr": 1e-4}), progress=False)
    with pytest.raises(UserError, match="must be positive"):
        pretrain(PretrainConfig(out=str(tmp_path / "e"), steps=0, **SMALL), progress=False)
