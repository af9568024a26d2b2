"""micro_batch_size: backward over chunks of completions gives the update of one whole-batch backward."""
# float64 so that summation order (1e-7 in fp32, amplified by Adam) cannot hide or fake a mismatch.
import json
from pathlib import Path

import pytest
import torch

from dlm_bench.errors import UserError
from dlm_bench.training.loop import TrainConfig, train
from test_train import TINY, weights

CASES = {
    "espo": dict(lora_r=4, lora_alpha=8, lora_dropout=0.0),          # LoRA + adapter-disabled reference
    "trafl": dict(inner_updates=2),                                  # per-prompt log Z head on policy features
    "trafl-ref-feats": dict(z_features="reference"),
    "justgrpo": dict(loss_norm="justgrpo"),                          # fixed-window / #nonzero-advantage normaliser
    "justgrpo-token-mean": dict(loss_norm="token_mean"),
    "tracerl": dict(group_filter=None, truncated_reward=None),   # the random model never ends its answers
    "tabom": dict(),
}


def _run(method, over, out, mbs, micro_prompts=1):
    ckpt = train(TrainConfig(method=method, model=over.pop("_model"), out=str(out), train_steps=2,
                             overrides=over, device="cpu", dtype="float64", micro_batch_size=mbs, micro_prompts=micro_prompts),
                 progress=False)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return weights(ckpt), log


def _same_update(tiny_dir, tmp_path, method, extra, micro_prompts=1):
    tol = 1e-5
    over = dict(TINY, lr=1e-3, **extra)
    a, la = _run(method, dict(over, _model=tiny_dir), tmp_path / "one", 1, micro_prompts)
    b, lb = _run(method, dict(over, _model=tiny_dir), tmp_path / "all", 10_000, micro_prompts)
    base = weights(Path(tiny_dir))
    for ra, rb in zip(la, lb):
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=tol), (ra, rb)
        assert ra["loss"] == pytest.approx(rb["loss"], rel=tol, abs=1e-6)   # on-policy GRPO losses are ~0
    _close(a, b, base, tol)


def _close(a, b, base, tol=1e-5):
    """Per tensor: |a - b| relative to the size of the update |b - base| (to |b| for new tensors)."""
    for k in a:
        ref = b[k] - base[k] if k in base else b[k]
        assert float(ref.norm()) > 0, k                        # the updates did something
        rel = float((a[k] - b[k]).norm() / ref.norm())
        assert rel < tol, (k, rel)


@pytest.mark.parametrize("case", sorted(CASES))
def test_micro_batch_of_one_matches_whole_batch(case, tiny_dir, tmp_path, varied_rewards):
    _same_update(tiny_dir, tmp_path, case.split("-")[0], CASES[case])


def test_chunks_cross_groups(tiny_dir, tmp_path, varied_rewards):
    """micro_batch_size 3 over two whole groups of 4: chunks straddle prompts."""
    over = dict(TINY, lr=1e-3)
    a, la = _run("trafl", dict(over, _model=tiny_dir), tmp_path / "three", 3, micro_prompts=2)
    b, lb = _run("trafl", dict(over, _model=tiny_dir), tmp_path / "all", 10_000, micro_prompts=2)
    assert la[0]["grad_norm"] == pytest.approx(lb[0]["grad_norm"], rel=1e-5)       # before any Adam step
    assert [r["grad_norm"] for r in la] == pytest.approx([r["grad_norm"] for r in lb], rel=1e-5)
    _close(a, b, weights(Path(tiny_dir)))


def test_bad_micro_batch_settings(tiny_dir, tmp_path):
    with pytest.raises(UserError, match="micro_batch_size"):
        train(TrainConfig(method="espo", model=tiny_dir, out=str(tmp_path / "x"), micro_batch_size=0))
    with pytest.raises(UserError, match="vargrad"):
        train(TrainConfig(method="trafl", model=tiny_dir, out=str(tmp_path / "v"), train_steps=1, device="cpu",
                          overrides=dict(TINY, z_param="vargrad"), micro_batch_size=2), progress=False)
