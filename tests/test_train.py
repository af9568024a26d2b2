"""The training loop on the tiny model: every method runs; resume is exact; 1 process == 2 gloo processes."""
import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import fake_rewards
from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, method_names
from dlm_bench.training.loop import TrainConfig, lr_multiplier, shard, step_prompts, train, Dist

TINY = dict(group_size=4, batch_prompts=2, gen_length=8, steps=8, block_length=8, lora_r=0,
            lr_schedule="constant")


def weights(ckpt: Path) -> dict:
    files = sorted(ckpt.glob("*.safetensors"))
    assert files, f"no weights in {ckpt}"
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- pure pieces

def test_helpers():
    a = step_prompts(5, 3, seed=0, step=0) + step_prompts(5, 3, seed=0, step=1)
    assert sorted(a[:5]) == list(range(5))               # the first epoch is a permutation
    assert step_prompts(5, 3, 0, 1) == step_prompts(5, 3, 0, 1)
    assert [list(shard(5, Dist(r, 2))) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert lr_multiplier("constant_with_warmup", 0, 10, 2) == 0.0   # HF semantics
    assert lr_multiplier("constant_with_warmup", 2, 10, 2) == 1.0
    assert lr_multiplier("linear", 10, 10, 0) == 0.0
    assert lr_multiplier("cosine", 5, 10, 0) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- every method runs

@pytest.mark.parametrize("name", [m for m in method_names() if get_method(m).trains])
def test_each_method_trains(name, tiny_dir, tmp_path, varied_rewards):
    over = dict(TINY, inner_updates=2, lr=1e-3)
    if name == "espo":      # also the LoRA path: reference = adapter-disabled policy
        over.update(lora_r=4, lora_alpha=8, lora_dropout=0.1)
    if name == "tracerl":   # the synthetic rewards are mostly > 0: its [0.2, 0.8] accuracy filter would drop all
        over.update(group_filter=None, truncated_reward=None)   # and a random model never ends its answers
    out = tmp_path / name
    ckpt = train(TrainConfig(method=name, model=tiny_dir, out=str(out), train_steps=1, overrides=over,
                             device="cpu"), progress=False)
    (row,) = rows(out)
    offline = get_method(name).config_for("testbed").rollout.source == "offline"
    # offline rollouts (TABOM) replay the base model's stored decodes: no forward passes in the step
    assert row["step"] == 1 and (row["nfe"] == 0 if offline else row["nfe"] > 0) and row["reward_std"] > 0
    assert (out / "trajectories" / "trajectories.jsonl").is_file() == offline
    assert all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in row.values())
    assert "loss" in row and row["grad_norm"] > 0
    assert json.loads((out / "train_result.json").read_text())["trained"] is True
    assert (ckpt / "trainer_state.pt").is_file()


def test_base_records_the_model(tiny_dir, tmp_path):
    out = train(TrainConfig(method="base", model=tiny_dir, out=str(tmp_path / "b")), progress=False)
    assert out == Path(tiny_dir)
    rec = json.loads((tmp_path / "b" / "train_result.json").read_text())
    assert rec["trained"] is False and rec["model"] == str(Path(tiny_dir).resolve())


# ----------------------------------------------------------------------------- resume is exact

def test_resume_is_exact(tiny_dir, tmp_path, varied_rewards):
    over = dict(TINY, lr=1e-3, lr_schedule="linear", warmup_ratio=0.3, inner_updates=1)

    def cfg(out, steps):
        return TrainConfig(method="trafl", model=tiny_dir, out=str(out), train_steps=steps, overrides=over,
                           device="cpu", save_every=1)
    full = train(cfg(tmp_path / "full", 2), progress=False)
    half = train(cfg(tmp_path / "half", 1), progress=False)           # "killed" after step 1 ...
    with open(tmp_path / "half" / "log.jsonl", "a") as f:             # ... having logged step 2 and a torn line
        f.write(json.dumps({"step": 2, "loss": 123.0}) + "\n" + '{"step": 3, "lo')
    half = train(cfg(tmp_path / "half", 2), progress=False)           # resumed: step 2 logged once, anew
    a, b = weights(full), weights(half)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(full / "trainer_state.pt", weights_only=False)
    sb = torch.load(half / "trainer_state.pt", weights_only=False)
    for k, v in sa["extra_modules"].items():                          # the log Z head too
        assert torch.equal(v, sb["extra_modules"][k]), k
    assert [r["step"] for r in rows(tmp_path / "half")] == [1, 2]
    assert rows(tmp_path / "full")[1]["loss"] == rows(tmp_path / "half")[1]["loss"]
    with pytest.raises(UserError, match=r"other settings \(overrides\.lr: 0\.001 there, 0\.002 now\)"):
        train(TrainConfig(method="trafl", model=tiny_dir, out=str(tmp_path / "half"), train_steps=3,
                          overrides=dict(over, lr=2e-3), device="cpu"), progress=False)


# ----------------------------------------------------------------------------- data parallel

DP_OVER = dict(TINY, batch_prompts=3, lr=1e-3, max_grad_norm=1e9)     # 3 prompts: ranks get 2 and 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DP_RUNS = {  # name: (method, overrides, parallel)
    "justgrpo-fsdp": ("justgrpo", DP_OVER, "auto"),                    # full fine-tuning: FSDP2 by default
    "justgrpo-ddp": ("justgrpo", DP_OVER, "ddp"),
    "trafl-fsdp": ("trafl", DP_OVER, "fsdp"),                          # + a log Z head outside FSDP
    "trafl-lora-ddp": ("trafl", dict(DP_OVER, lora_r=4, lora_alpha=8), "auto"),   # LoRA: DDP by default
    # 3 minibatches of one prompt each over 2 ranks: rank 1 holds none of two of them (weight-0 filler
    # chunks keep FSDP in step); 2 passes: ESPO's per-pass mask draws and old ELBOs
    "espo-minibatches-fsdp": ("espo", dict(DP_OVER, inner_updates=2, minibatches=3), "auto")}


def _dp_config(run: str, model: str, out: str) -> TrainConfig:
    method, over, parallel = DP_RUNS[run]
    return TrainConfig(method=method, model=model, out=out, train_steps=1, overrides=over, device="cpu",
                       micro_batch_size=3, parallel=parallel)


@pytest.mark.parametrize("run", sorted(DP_RUNS))
def test_two_processes_match_one(run, tiny_dir, tmp_path, varied_rewards):
    method = DP_RUNS[run][0]
    one = train(_dp_config(run, tiny_dir, str(tmp_path / "one")), progress=False)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", tiny_dir, str(tmp_path / "two"), run],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        log = p.communicate(timeout=240)[0]
        assert p.returncode == 0, log[-3000:]
    r1, r2 = rows(tmp_path / "one")[0], rows(tmp_path / "two")[0]
    assert r1["reward_mean"] == pytest.approx(r2["reward_mean"], abs=1e-9)
    assert r1["grad_norm"] == pytest.approx(r2["grad_norm"], rel=1e-4)
    assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4, abs=1e-7)
    a, b = weights(one), weights(tmp_path / "two" / "checkpoint")
    lora = "lora" in run
    base = {k: torch.zeros_like(v) for k, v in a.items()} if lora else weights(Path(tiny_dir))
    moved = 0.0
    assert a.keys() == b.keys()
    for k in a:
        ua, ub = a[k] - base[k], b[k] - base[k]
        moved = max(moved, float(ua.abs().max()))
        assert torch.allclose(ua, ub, atol=2e-5, rtol=1e-3), k
    assert moved > 1e-4
    if method == "trafl":                                              # the head's update too
        ha = torch.load(one / "trainer_state.pt", weights_only=False)["extra_modules"]
        hb = torch.load(tmp_path / "two" / "checkpoint" / "trainer_state.pt", weights_only=False)["extra_modules"]
        for k in ha:
            assert torch.allclose(ha[k], hb[k], atol=2e-5, rtol=1e-3), k


def _two_processes(*args) -> None:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, __file__, "worker", *map(str, args)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        log = p.communicate(timeout=240)[0]
        assert p.returncode == 0, log[-3000:]


def test_fsdp_checkpoints_resume_exactly(tiny_dir, tmp_path, varied_rewards):
    """Two FSDP processes: 2 steps straight == 1 step, stop, resume for the second (weights and AdamW
    state gathered by name); resuming that checkpoint in another parallel mode is refused."""
    _two_processes(tiny_dir, tmp_path / "full", "justgrpo-fsdp", 2)
    _two_processes(tiny_dir, tmp_path / "half", "justgrpo-fsdp", 1)
    _two_processes(tiny_dir, tmp_path / "half", "justgrpo-fsdp", 2)
    a, b = weights(tmp_path / "full" / "checkpoint"), weights(tmp_path / "half" / "checkpoint")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in rows(tmp_path / "half")] == [1, 2]
    state = torch.load(tmp_path / "half" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["optimizer_by_name"] and state["step"] == 2
    with pytest.raises(UserError, match="with FSDP; resume it with the same parallel mode"):
        train(dataclasses.replace(_dp_config("justgrpo-fsdp", tiny_dir, str(tmp_path / "half")), train_steps=3),
              progress=False)


def _worker(model: str, out: str, run: str, steps: str = "1") -> None:
    torch.set_num_threads(1)
    from dlm_bench.tasks.testbed import Testbed
    Testbed.rewards = fake_rewards
    train(dataclasses.replace(_dp_config(run, model, out), train_steps=int(steps), save_every=1), progress=False)
    torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- bad input

def test_a_second_writer_to_a_training_folder_is_refused(tiny_dir, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dlm_bench.runs.locks import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"training folder .* is in use by pid {holder.pid}"):
            train(TrainConfig(method="trafl", model=tiny_dir, out=str(out), train_steps=1, overrides=TINY,
                              device="cpu"), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "checkpoint").exists()


def _cli(*argv):
    from dlm_bench.commands import train as cmd
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.build_config(p.parse_args(list(argv)))


def test_cli_settings_and_errors(tiny_dir, tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seed: 3\nbeta: 0.5\nsampler:\n  remasking: random\noverrides:\n  group_size: 2\n")
    cfg = _cli("espo", "--task", "testbed", "--model", tiny_dir, "--config", str(y), "--train-steps", "4",
               "--set", "lr=1e-4", "--set", "save_every=2", "--set", "sampler.threshold=0.9",
               "--set", "adam_betas=[0.9,0.95]")
    assert (cfg.seed, cfg.train_steps, cfg.save_every) == (3, 4, 2)
    assert cfg.overrides == {"beta": 0.5, "group_size": 2, "lr": 1e-4, "adam_betas": [0.9, 0.95]}
    assert cfg.sampler == {"remasking": "random", "threshold": 0.9}
    for argv, msg in [(("nope", "--task", "testbed", "--model", tiny_dir), "unknown method"),
                      (("espo", "--task", "testbed", "--model", tiny_dir, "--set", "bogus=1"), "unknown setting"),
                      (("espo", "--task", "testbed", "--model", tiny_dir, "--set", "lr"), "KEY=VALUE"),
                      (("espo", "--task", "testbed", "--model", tiny_dir, "--set", "sampler.steps=3"), "sampler"),
                      (("espo", "--model", tiny_dir), "--task"),
                      (("espo", "--task", "testbed", "--model", tiny_dir, "--config", "/no/such.yaml"), "does not exist")]:
        with pytest.raises(UserError, match=msg):
            _cli(*argv)
    for cfg, msg in [(TrainConfig(method="espo", model=tiny_dir, task="nope"), "unknown task"),
                     (TrainConfig(method="espo", model=str(tmp_path / "none"), out=str(tmp_path / "o")), "does not exist"),
                     (TrainConfig(method="espo", model=tiny_dir, overrides={"nope": 1}), "unknown setting"),
                     (TrainConfig(method="espo", model=tiny_dir, overrides={"lr_schedule": "zigzag"}), "lr_schedule"),
                     (TrainConfig(method="espo", model=tiny_dir, train_steps=0), "train_steps"),
                     (TrainConfig(method="base", model=str(tmp_path / "none"), out=str(tmp_path / "o")), "does not exist")]:
        with pytest.raises(UserError, match=msg):
            train(cfg, progress=False)


def test_methods_command(capsys):
    from dlm_bench.commands import methods
    methods.run(argparse.Namespace(verbose=True, names=[]))
    text = capsys.readouterr().out
    for name in method_names():
        assert name in text
    assert "rollout_order" in text and "left_to_right" in text


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(*sys.argv[2:])


def test_rollout_noise_dtype_setting(tiny_dir):
    """ESPO's recipe precision: `--set sampler.noise_dtype=bfloat16` reaches the rollout sampler."""
    from dlm_bench.training.loop import plan
    cfg = _cli("espo", "--task", "testbed", "--model", tiny_dir, "--set", "sampler.noise_dtype=bfloat16")
    assert cfg.sampler == {"noise_dtype": "bfloat16"}
    assert plan(cfg).scfg.noise_dtype == "bfloat16"
    assert plan(TrainConfig(method="espo", task="testbed", model=tiny_dir)).scfg.noise_dtype == "float64"
    with pytest.raises(UserError, match="noise_dtype"):
        plan(TrainConfig(method="espo", task="testbed", model=tiny_dir, sampler={"noise_dtype": "half"}))


def test_a_training_run_folder_stands_for_its_checkpoint(tiny_dir, tmp_path, capsys):
    """`passk --model results/train/X` uses X/checkpoint (one line says so) rather than reading the run's
    config.json as a model; a run with no checkpoint yet is refused in one line."""
    from dlm_bench.cli import main
    out = tmp_path / "run"
    train(TrainConfig(method="trafl", model=tiny_dir, out=str(out), train_steps=1, overrides=dict(TINY),
                      device="cpu"), progress=False)
    sweep = ["--method", "m", "--task", "testbed", "--k", "1", "--n", "1", "--temps", "0.5", "--lengths", "8",
             "--block-length", "4", "--limit", "2", "--device", "cpu", "--no-progress"]
    assert main(["passk", "--model", str(out), "--out", str(tmp_path / "a"), *sweep]) == 0
    assert f"using its model {out / 'checkpoint'}" in capsys.readouterr().err
    assert main(["passk", "--model", str(out / "checkpoint"), "--out", str(tmp_path / "b"), *sweep]) == 0
    same = [json.loads((tmp_path / d / "results.json").read_text())["cells"][0]["config_hash"] for d in "ab"]
    assert same[0] == same[1]
    shutil.rmtree(out / "checkpoint")
    (out / "train_result.json").unlink()                 # as a run killed before its first save
    capsys.readouterr()
    assert main(["passk", "--model", str(out), "--out", str(tmp_path / "c"), *sweep]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training run folder with no checkpoint yet" in err[0]


# ----------------------------------------------------------------------------- the control

def test_control_is_the_base_models_reward_on_the_same_prompts(tiny_dir, tmp_path, varied_rewards):
    """control=base logs, per step, what the base model scores on that step's prompts with the run's
    rollout seeds: equal to the run's own reward at step 1 (nothing learnt yet), and equal at every step
    to the reward of a run whose policy does not move (lr 1e-12)."""
    over = dict(TINY, lr=5e-2)
    train(TrainConfig(method="justgrpo", model=tiny_dir, out=str(tmp_path / "c"), train_steps=3, overrides=over,
                      device="cpu", control="base"), progress=False)
    train(TrainConfig(method="justgrpo", model=tiny_dir, out=str(tmp_path / "still"), train_steps=3,
                      overrides=dict(TINY, lr=1e-12), device="cpu"), progress=False)
    c, still = rows(tmp_path / "c"), rows(tmp_path / "still")
    assert c[0]["control_reward_mean"] == c[0]["reward_mean"] and c[0]["reward_minus_control"] == 0
    assert [r["control_reward_mean"] for r in c] == [r["reward_mean"] for r in still]
    assert [r["reward_minus_control"] for r in c] == pytest.approx(
        [r["reward_mean"] - s["reward_mean"] for r, s in zip(c, still)], abs=1e-5)
    assert any(r["reward_minus_control"] != 0 for r in c[1:])           # the policy moved
    assert "control_reward_mean" not in still[0]
    assert _cli("justgrpo", "--task", "testbed", "--model", tiny_dir, "--control", "base").control == "base"
    with pytest.raises(UserError, match="control must be one of"):
        TrainConfig(method="justgrpo", model=tiny_dir, control="ref").validate()


def test_testbed_scale_and_learning_rate_rule():
    """`train METHOD --task testbed` without settings: the testbed's lengths, not the 8B recipe's, and
    the learning rate divided by the square root of the optimizer updates of one rollout batch (the
    user's settings win)."""
    from dlm_bench.tasks.testbed import LR_ONE_UPDATE, SCALE
    for name in [m for m in method_names() if get_method(m).trains]:
        cfg = get_method(name).config_for("testbed")
        r, o = cfg.rollout, cfg.optim
        assert (r.gen_length, r.steps, r.group_size, r.batch_prompts, cfg.lora.r) == (
            SCALE["gen_length"], SCALE["steps"], SCALE["group_size"], SCALE["batch_prompts"], 0), name
        updates = o.inner_updates * min(o.minibatches, r.batch_prompts)
        assert o.lr == pytest.approx(LR_ONE_UPDATE / updates ** 0.5), name
    assert get_method("tracerl").config_for("testbed").optim.lr == pytest.approx(3e-5 / 8 ** 0.5)  # 8 minibatches
    espo = get_method("espo")
    assert espo.config_for("testbed", {"inner_updates": 2}).optim.lr == pytest.approx(LR_ONE_UPDATE / 2 ** 0.5)
    assert espo.config_for("testbed", {"optim.lr": 1e-3}).optim.lr == 1e-3
    assert espo.config_for("gsm8k").rollout.gen_length == espo.config_for("gsm8k", {}).rollout.gen_length != 12
