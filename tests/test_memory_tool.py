"""`dlm-bench memory` (issue 24): the fake-tensor tracer against real runs counted the same way, the
sampler's bounded noise memory changing no token, and the command as a user types it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dlm_bench.cli import main
from dlm_bench.memory.measure import measure_eval, measure_training, probe_answers
from dlm_bench.models import load_model
from dlm_bench.models.dlm import shift_right_in_place
from dlm_bench.sampler import SamplerConfig, make_generators, sample
from dlm_bench.training.loop import TrainConfig
from shared_files import real_model_snapshot

LLADA, LLADA_FIX, DREAM = "llada-8b-instruct", "llada-8b-instruct-maskfix", "dream-v0-instruct-7b"
PROBES = {"honours_padding": True, "gather_logits": True}     # what the probes answer for maskfix LLaDA, Dream
# The fake and the real run allocate the same storages; the only difference seen is a few scalars that
# FakeTensorMode makes when it lifts Python constants (16 bytes): the stated tolerance is 0.1 %.
TOLERANCE = 1e-3
SMALL = dict(gen_length=8, steps=8, block_length=8, group_size=2, batch_prompts=1, lora_r=2, lora_alpha=4)


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory):
    from dlm_bench.models.random_init import build_tiny
    root = tmp_path_factory.mktemp("real")
    return {n: str(build_tiny(real_model_snapshot(n), root / n, seed=1)) for n in (LLADA, LLADA_FIX, DREAM)}


def _model(name, tiny_dir, real_dirs):
    return tiny_dir if name == "tiny" else real_dirs[name]


def _same_peaks(fake, real):
    assert [s.name for s in fake.stages] == [s.name for s in real.stages]
    for f, r in zip(fake.stages, real.stages):
        assert abs(f.peak - r.peak) <= TOLERANCE * r.peak, (f.name, f.peak, r.peak)
        assert abs(f.start - r.start) <= TOLERANCE * max(r.start, 1), (f.name, f.start, r.start)
    assert real.peak.peak > real.stages[0].peak      # the update and sampler stages add something


@pytest.mark.parametrize("name", ["tiny", LLADA_FIX, DREAM])
def test_tracer_peak_equals_the_real_run(name, tiny_dir, real_dirs):
    """Build, prepare, two updates and a rollout sampler step: every stage's peak under fake tensors
    equals the real CPU run's, both counted as live storages."""
    probes = {"honours_padding": True, "gather_logits": name != "tiny"}
    runs = []
    for fake in (True, False):
        cfg = TrainConfig(method="trafl", task="gsm8k", model=_model(name, tiny_dir, real_dirs), dtype="float32",
                          overrides=dict(SMALL))
        runs.append(measure_training(cfg, prompt_length=6, fake=fake, probes=probes))
    _same_peaks(*runs)
    assert runs[1].placeholders == {}       # a real run reads real values
    assert runs[0].stage("update 2").by_kind.get("optimizer state", 0) > 0     # AdamW's moments by then


def test_tracer_peak_equals_the_real_run_in_evaluation(real_dirs):
    scfg = SamplerConfig(gen_length=16, block_length=8, steps=16, temperature=0.9)
    fake, real = (measure_eval(real_dirs[DREAM], scfg, rows=3, prompt_length=5, dtype=torch.float32, fake=f,
                               probes=PROBES) for f in (True, False))
    _same_peaks(fake, real)


def test_probes_come_from_a_tiny_model_of_the_same_code(tiny_dir):
    assert probe_answers(str(real_model_snapshot(LLADA))) == {"honours_padding": False, "gather_logits": True}
    assert probe_answers(str(real_model_snapshot(LLADA_FIX))) == {"honours_padding": True, "gather_logits": True}
    assert probe_answers(tiny_dir)["gather_logits"] is False        # the built-in model keeps full logits


def test_fsdp_shards_parameters_gradients_and_optimizer_state(tiny_dir):
    """Full fine-tuning on rank 0 of 2 (FSDP2 over a fake process group): the trainable state is half
    the single process's; rollouts and `prepare` gather the whole model."""
    runs = {}
    for world in (1, 2):
        cfg = TrainConfig(method="justgrpo", task="gsm8k", model=tiny_dir, dtype="float32",
                          overrides=dict(gen_length=8, steps=8, block_length=1, group_size=2, batch_prompts=2))
        runs[world] = measure_training(cfg, prompt_length=6, world=world, probes={"honours_padding": True,
                                                                                   "gather_logits": False})
    for stage, kind in (("update 2", "trainable parameters"), ("update 2", "optimizer state"),
                        ("rollout", "gradients")):
        one, two = (runs[w].stage(stage).by_kind[kind] for w in (1, 2))
        assert 0.49 < two / one < 0.55, (kind, one, two)        # FSDP pads shards to equal sizes
    whole = runs[1].stage("update 2").by_kind["trainable parameters"]
    assert runs[2].stage("prepare 2").by_kind["gathered parameters"] >= whole   # gathered for the rollout
    assert "gathered parameters" not in runs[1].stage("prepare 2").by_kind


# ----------------------------------------------------------------------------- the sampler's noise

def _old_candidates(blk, pads, gens, lo, hi, width, temperature, dtype):
    """The draw as `_step` made it before (commit 866874c): every row's full-width uniforms stacked."""
    u = torch.stack([torch.rand((width - p, blk.shape[-1]), generator=g, dtype=dtype)[lo - p:hi - p]
                     for p, g in zip(pads, gens)])
    return torch.argmax(blk.to(dtype).exp() / (-torch.log(u)) ** temperature, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_bounded_noise_is_the_same_draw(dtype, temperature):
    from dlm_bench.sampler import _gumbel_argmax
    torch.manual_seed(0)
    pads, width, V = [0, 3, 7], 40, 50
    for lo, hi in ((8, 16), (32, 40)):                      # two blocks, rows with their own left padding
        blk = torch.randn(len(pads), hi - lo, V)
        old_gens, new_gens = make_generators([1, 2, 3], "cpu"), make_generators([1, 2, 3], "cpu")
        old = _old_candidates(blk, pads, old_gens, lo, hi, width, temperature, dtype)
        new = torch.stack([_gumbel_argmax(row, p, g, lo, hi, width, temperature, dtype)
                           for row, p, g in zip(blk, pads, new_gens)])
        assert torch.equal(old, new)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(old_gens, new_gens))


@pytest.mark.parametrize("name", [LLADA_FIX, LLADA, DREAM])
def test_tokens_identical_to_the_sampler_before_the_change(name, real_dirs):
    """Tokens stored from the sampler of commit 866874c (full-width noise stacked, Dream's shift by
    concatenation) on the same tiny random models: 3 left-padded rows, several blocks, T > 0, steps
    above and below the block length, bfloat16 noise, random remasking."""
    stored = json.loads((Path(__file__).parent / "data" / "sampler_tokens_866874c.json").read_text())
    dlm = load_model(real_dirs[name], device="cpu")
    dlm.completion_text = lambda window: ""      # random weights pick ids the tokenizer cannot decode (Dream)
    prompts = [dlm.prompt_ids(p) for p in stored["prompts"]]
    assert len({len(p) for p in prompts}) == 3
    for i, setting in enumerate(stored["settings"]):
        comps = sample(dlm, prompts, SamplerConfig(stop_at_eos=False, **setting), make_generators([11, 22, 33], "cpu"))
        assert [c.tokens for c in comps] == stored["tokens"][f"{name}/{i}"], setting


def test_shift_in_place_equals_the_concatenation():
    import dlm_bench.models.dlm as models
    x = torch.randn(3, 11, 7)
    want = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    for chunk in (1, 3 * 7 * 4 * 2, 1 << 30):           # one column, two columns, everything at a time
        was, models.SHIFT_CHUNK_BYTES = models.SHIFT_CHUNK_BYTES, chunk
        try:
            assert torch.equal(shift_right_in_place(x.clone()), want)
        finally:
            models.SHIFT_CHUNK_BYTES = was


# ----------------------------------------------------------------------------- the command

def test_memory_command_prints_stages_peak_and_assumption(tiny_dir, capsys):
    assert main(["memory", tiny_dir, "--method", "base", "--batch", "2", "--gen-length", "8",
                 "--prompt-length", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fake-tensor allocated bytes" in out and "eval sampler step (2 rows)" in out
    assert "Peak:" in out and "an assumption" in out and "largest other than parameters" in out


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch"),
    (["--world-size", "0"], "--world-size"),
    (["--method", "nope"], "nope"),
    (["--method", "base", "--set", "lr=1"], "sampler."),
    (["--method", "base", "--world-size", "2"], "world-size"),
    (["--set", "bogus=1"], "bogus"),
    (["--world-size", "2", "--set", "lora_r=2"], "DDP"),
])
def test_memory_command_bad_input_is_one_line(argv, message, tiny_dir, capsys):
    assert main(["memory", tiny_dir, "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and message in err, err


def test_memory_command_needs_a_model_directory(tmp_path, capsys):
    assert main(["memory", str(tmp_path / "none")]) == 2
    assert "config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the fit check

def test_footprint_predicts_the_tracer(real_dirs):
    """The cheap model `passk`/`train` check on a GPU against the tracer, on tiny real LLaDA: a sampler
    call's peak, and what a LoRA run keeps resident between steps."""
    from dlm_bench.models.footprint import parameter_bytes, sampler_bytes, training_resident_bytes
    dlm = load_model(real_dirs[LLADA_FIX], device="cpu")
    for rows, length in ((2, 16), (6, 32)):
        scfg = SamplerConfig(gen_length=length, block_length=8, steps=length, temperature=0.9)
        m = measure_eval(real_dirs[LLADA_FIX], scfg, rows=rows, prompt_length=8, dtype=torch.float32, probes=PROBES)
        predicted = parameter_bytes(dlm.model) + sampler_bytes(dlm, rows, 8 + length, 8)
        assert abs(predicted / m.stage("eval").peak - 1) < 0.05, (rows, predicted, m.stage("eval").peak)
    cfg = TrainConfig(method="espo", task="gsm8k", model=real_dirs[LLADA_FIX], dtype="float32", overrides=dict(SMALL))
    m = measure_training(cfg, prompt_length=6, probes=PROBES)
    from dlm_bench.methods import get_method
    from dlm_bench.training.policy import lora_spec
    spec = lora_spec(get_method("espo").config_for("gsm8k", dict(SMALL)).lora)
    lora = load_model(real_dirs[LLADA_FIX], device="cpu", lora=spec)
    resident = training_resident_bytes(lora, lora=True, reference_copy=False)
    assert abs(resident / m.stage("prepare 2").start - 1) < 0.01, (resident, m.stage("prepare 2").start)


def test_a_batch_that_cannot_fit_is_refused_in_one_line(monkeypatch):
    """On a (pretend) 4 GiB GPU the check names what to lower and the override flag; on the CPU it
    does nothing, whatever the numbers."""
    from dlm_bench.errors import UserError
    from dlm_bench.models.footprint import GIB, refuse_unless_fits
    refuse_unless_fits(100 * GIB, torch.device("cpu"), "x", "lower y", "--no-memory-check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 4 * GIB})())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "a small GPU")
    refuse_unless_fits(GIB // 4, torch.device("cuda"), "x", "lower y", "--no-memory-check")
    with pytest.raises(UserError, match="lower --batch-size, or pass --no-memory-check") as e:
        refuse_unless_fits(4 * GIB, torch.device("cuda"), "a batch", "lower --batch-size", "--no-memory-check")
    assert "\n" not in str(e.value)


def test_memory_check_flags_reach_the_configs(tiny_dir):
    from dlm_bench.commands import passk, train
    p = __import__("argparse").ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["espo", "--task", "testbed", "--model", tiny_dir, "--no-memory-check"])
    assert train.build_config(args).memory_check is False
    assert train.build_config(p.parse_args(["espo", "--task", "testbed", "--model", tiny_dir])).memory_check is True
    q = __import__("argparse").ArgumentParser()
    passk.add_arguments(q)
    args = q.parse_args(["--model", tiny_dir, "--method", "base", "--task", "testbed", "--no-memory-check"])
    assert passk.config_from_args(args).memory_check is False


def test_fsdp_with_the_gathered_head_runs(real_dirs):
    """FSDP2 on a model whose scores gather the head (LLaDA): the head's weight is a shard outside the
    model's forward, so scores take the full-logits path under FSDP (the fake run found the crash)."""
    cfg = TrainConfig(method="trafl", task="gsm8k", model=real_dirs[LLADA_FIX], dtype="float32", parallel="fsdp",
                      overrides=dict(SMALL))
    m = measure_training(cfg, prompt_length=6, world=2, probes=PROBES)
    assert m.stage("update 2").by_kind.get("optimizer state", 0) > 0
