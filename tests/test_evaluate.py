"""Pass@k sweeps and the record store on the tiny model + testbed task: complete and consistent records,
kill-and-resume, ranks, batch-size independence, and every statistic recomputable from the JSONL files."""
import json
import math

import pytest

from dlm_bench.errors import UserError
from dlm_bench.evaluate import SweepConfig, finalize_run, run_sweep, sample_seed, sampling_hash
from dlm_bench.runs.store import Store, read_generations, read_jsonl, read_scores

LIMIT, N, TEMPS, LENGTHS = 4, 4, (0.5, 1.0), (8,)
CELLS = len(TEMPS) * len(LENGTHS)


class _Killed(Exception):
    pass


def _cfg(tiny_dir, out, **kw):
    base = dict(model=tiny_dir, method="base", task="testbed", ks=(1, 2, 4), n=N, temperatures=TEMPS,
                lengths=LENGTHS, block_length=4, steps_per_token=0.5, batch_size=8, limit=LIMIT,
                out=str(out), device="cpu")
    return SweepConfig(**{**base, **kw})


def _records(out, kind):
    """Stored records minus wall-clock timings (the only field that may differ between runs)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out / f"{kind}.jsonl")]


def _partly_right(self, problem, completion):
    """A random model never solves testbed: grade a deterministic ~third of completions correct, so
    that every statistic below is computed on a mix of right and wrong samples, not on zeros."""
    from dlm_bench.tasks import Grade
    ok = sum(map(ord, completion)) % 3 == 0
    return Grade(ok, completion[:8], "correct" if ok else "wrong")


@pytest.fixture(scope="module", autouse=True)
def partly_right_grader():
    from dlm_bench.tasks.testbed import Testbed
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Testbed, "grade", _partly_right)
        yield


@pytest.fixture(scope="module")
def baseline(tiny, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    results = run_sweep(_cfg(tiny_dir, out), dlm=tiny, progress=False)
    return out, results


def test_records_complete_and_consistent(baseline):
    out, results = baseline
    gens, scores = _records(out, "generations"), _records(out, "scores")
    assert len(gens) == len(scores) == LIMIT * N * CELLS
    keys = {(r["method"], r["config_hash"], r["problem_id"], r["sample"]) for r in gens}
    assert len(keys) == len(gens)                          # never written twice
    assert [{k: r[k] for k in gens[0]} for r in scores] == gens  # scores = generations + grade
    assert len({r["config_hash"] for r in gens}) == CELLS
    seed_of = {c["config_hash"]: sampling_hash(c["config"]) for c in results["cells"]}
    for r in scores:
        assert r["seed"] == sample_seed(seed_of[r["config_hash"]], r["problem_id"], r["sample"])
        assert 0 <= r["seed"] < 2 ** 63
        assert len(r["tokens"]) == r["gen_length"] and r["nfe"] >= 1 and 0 <= r["length"] <= r["gen_length"]
        assert isinstance(r["correct"], bool) and r["reason"] and r["isolation"] is None  # no code ran
    assert results["complete"] and len(results["cells"]) == CELLS
    for c in results["cells"]:
        assert c["config"]["sampler"]["steps"] == 4 and c["config"]["sampler"]["block_length"] == 4
        assert c["config"]["prompt_template"] == "{question}:"
    assert set(results["versions"]) == {"torch", "transformers", "dlm-bench", "python"}
    import torch
    env = results["environment"]
    assert env["device"] == "cpu" and env["torch_threads"] == torch.get_num_threads()
    assert env["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert results["config"]["method"] == "base" and results["config"]["n"] == N
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert not list(out.glob("*.rank*.jsonl"))


def test_results_recomputable_from_jsonl(baseline):
    out, results = baseline
    """results.json against Pass@k recomputed here from scores.jsonl with the unbiased estimator
    1 - C(n-c, k)/C(n, k) (Chen et al. 2021) and the sample-sd standard error, not via metrics.py."""
    import statistics
    scores, gens = read_scores(out), read_generations(out)
    assert 0 < int(scores["correct"].sum()) < len(scores)     # a mix, so the check can fail
    for c in results["cells"]:
        mine = scores[scores["config_hash"] == c["config_hash"]]
        counts = mine.groupby("problem_id")["correct"].agg(["sum", "count"])
        for k in (1, 2, 4):
            vals = [1 - math.comb(int(n) - int(ok), k) / math.comb(int(n), k) for ok, n in counts.values]
            stored = c["pass_at_k"][str(k)]
            assert stored["mean"] == pytest.approx(sum(vals) / len(vals), abs=1e-12)
            se = statistics.stdev(vals) / math.sqrt(len(vals))
            assert stored["se"] == pytest.approx(se, abs=1e-12)
        g = gens[gens["config_hash"] == c["config_hash"]]
        assert c["mean_nfe"] == pytest.approx(g["nfe"].mean())
        assert c["mean_length"] == pytest.approx(g["length"].mean())
        assert c["n_problems"] == LIMIT and c["n_records"] == LIMIT * N


def test_rerun_writes_nothing_and_results_stable(baseline, tiny, tiny_dir):
    out, results = baseline
    before = (out / "scores.jsonl").read_bytes()
    again = run_sweep(_cfg(tiny_dir, out), dlm=tiny, progress=False)
    assert (out / "scores.jsonl").read_bytes() == before
    assert again["cells"] == results["cells"]


def test_kill_and_resume_gives_identical_records(baseline, tiny, tiny_dir, tmp_path):
    ref, _ = baseline
    out = tmp_path / "killed"

    def kill_after_3(batches):
        if batches == 3:
            raise _Killed

    with pytest.raises(_Killed):
        run_sweep(_cfg(tiny_dir, out, batch_size=5), dlm=tiny, progress=False, on_batch=kill_after_3)
    # A kill mid-write: the last generation line torn; the scores one line further behind (a
    # generation without its grade) and their last line torn in half.
    s, g = out / "scores.jsonl", out / "generations.jsonl"
    lines = s.read_bytes().splitlines(keepends=True)
    s.write_bytes(b"".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    g.write_bytes(g.read_bytes()[:-7])
    assert len(read_jsonl(s)) == 13 and len(read_jsonl(g)) == 14  # torn lines ignored by readers
    assert run_sweep(_cfg(tiny_dir, out), dlm=tiny, progress=False, max_batches=1) is None
    run_sweep(_cfg(tiny_dir, out, batch_size=3), dlm=tiny, progress=False)
    assert _records(out, "generations") == _records(ref, "generations")
    assert _records(out, "scores") == _records(ref, "scores")


def test_two_ranks_merge_to_single_process_records(baseline, tiny, tiny_dir, tmp_path):
    ref, ref_results = baseline
    out = tmp_path / "ranks"
    cfg = _cfg(tiny_dir, out)
    assert run_sweep(cfg, dlm=tiny, progress=False, rank=1, world=2) is None
    assert run_sweep(cfg, dlm=tiny, progress=False, rank=0, world=2) is None
    assert sorted(p.name for p in out.glob("*.rank*.jsonl")) == [
        "generations.rank0.jsonl", "generations.rank1.jsonl", "scores.rank0.jsonl", "scores.rank1.jsonl"]
    assert {r["problem_id"] for r in read_jsonl(out / "scores.rank1.jsonl")} == {
        f"testbed/test/{i}" for i in range(1, LIMIT, 2)}
    results = finalize_run(cfg)
    assert not list(out.glob("*.rank*.jsonl"))
    assert _records(out, "generations") == _records(ref, "generations")
    assert _records(out, "scores") == _records(ref, "scores")
    strip = [{k: v for k, v in c.items() if k != "mean_seconds"} for c in results["cells"]]
    assert strip == [{k: v for k, v in c.items() if k != "mean_seconds"} for c in ref_results["cells"]]


def test_seed_and_text_do_not_depend_on_batch_size(baseline, tiny, tiny_dir, tmp_path):
    ref, _ = baseline
    out = tmp_path / "bs1"
    run_sweep(_cfg(tiny_dir, out, batch_size=1, limit=1, temperatures=(1.0,)), dlm=tiny, progress=False)
    got = _records(out, "generations")
    want = [r for r in _records(ref, "generations")
            if r["problem_id"] == "testbed/test/0" and r["temperature"] == 1.0]
    assert len(got) == N and got == want


def test_store_never_writes_a_key_twice_and_repairs_torn_tail(tmp_path):
    rec = dict(method="m", task="t", temperature=0.5, gen_length=8, problem_id="p/1", sample=0, seed=1,
               config_hash="h", prompt_hash="x", text="a", tokens=[1], nfe=1, length=1, seconds=0.1)
    st = Store(tmp_path).open()
    assert st.append("generations", [rec, rec, {**rec, "sample": 1}]) == 2
    assert st.append("generations", [rec]) == 0
    with open(tmp_path / "generations.jsonl", "ab") as f:
        f.write(b'{"method":"m","ta')
    st2 = Store(tmp_path).open()               # reopening cuts the torn line off
    assert (tmp_path / "generations.jsonl").read_bytes().endswith(b"}\n")
    assert st2.done_keys("generations") == {("m", "h", "p/1", 0), ("m", "h", "p/1", 1)}
    assert st2.append("generations", [{**rec, "sample": 2}]) == 1
    assert [r["sample"] for r in read_jsonl(tmp_path / "generations.jsonl")] == [0, 1, 2]
    with pytest.raises(ValueError):
        st2.append("scores", [rec])             # a score without its grade is refused


def test_bad_sweep_configs_are_user_errors(tiny_dir, tmp_path):
    for bad in (dict(ks=(1, 8)), dict(temperatures=()), dict(lengths=(6,), block_length=4),
                dict(n=0), dict(batch_size=0), dict(model=str(tmp_path / "nope"))):
        with pytest.raises(UserError):
            run_sweep(_cfg(tiny_dir, tmp_path / "bad", **bad), progress=False)


def test_cli_passk_and_compare(baseline, tiny_dir, tmp_path, capsys):
    from dlm_bench.commands.passk import parse_ints

    assert parse_ints("1..4", "--k") == (1, 2, 3, 4) and parse_ints("1,5,16", "--k") == (1, 5, 16)
    with pytest.raises(UserError):
        parse_ints("1..x", "--k")
    ref, _ = baseline
    runs = tmp_path / "runs"
    (runs / "base").mkdir(parents=True)
    (runs / "base" / "scores.jsonl").write_bytes((ref / "scores.jsonl").read_bytes())
    # method B: the same model re-labelled, on a subset of problems (fast)
    cfg = _cfg(tiny_dir, runs / "other", method="other", seed=1, limit=3, n=2, ks=(1, 2))
    run_sweep(cfg, progress=False)
    from dlm_bench.commands import compare
    import argparse
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    assert compare.run(p.parse_args(["base", "other", "--runs", str(runs), "--k", "2"])) == 0
    text = capsys.readouterr().out
    assert "Pass@2" in text and "base" in text and "other" in text
    with pytest.raises(UserError):
        compare.run(p.parse_args(["base", "zzz", "--runs", str(runs)]))


# ----------------------------------------------------------------------------- the rollout decoder

def test_rollout_decoder_is_the_training_sampler(tiny_dir, tmp_path, varied_rewards):
    """`--decoder rollout` sweeps with exactly the sampler the training run rolled out with: the sweep's
    resolved SamplerConfig equals the run's, for a left-to-right and a one-block method."""
    from dlm_bench.evaluate import rollout_decoder, with_decoder
    from dlm_bench.sampler import SamplerConfig
    from dlm_bench.training.loop import TrainConfig, train
    tiny = dict(group_size=2, batch_prompts=2, gen_length=8, steps=8, block_length=4, lora_r=0, temperature=0.7)
    for method, name in (("justgrpo", "l2r-T0.7-L8"), ("diffu_grpo", "b4-T0.7-L8")):
        out = tmp_path / method
        ckpt = train(TrainConfig(method=method, model=tiny_dir, out=str(out), train_steps=1, overrides=tiny,
                                 device="cpu"), progress=False)
        dec = rollout_decoder(str(ckpt))
        assert dec.name == name and rollout_decoder(str(out)) == dec
        ran = SamplerConfig(**json.loads((out / "config.json").read_text())["sampler"]).resolved()
        sweep = with_decoder(_cfg(str(ckpt), tmp_path / "s", temperatures=(0.3, 0.9), lengths=(16,)), dec).validated()
        assert sweep.temperatures == (0.7,) and sweep.lengths == (8,)
        assert sweep.sampler(0.7, 8) == ran
    with pytest.raises(UserError, match="not a dlm-bench training run"):
        rollout_decoder(tiny_dir)


def test_passk_decoder_flags(tiny_dir, tmp_path):
    """`passk --decoder rollout` takes every decoding setting from the run: a decoding flag beside it
    is refused (one line), and --rollout-run is refused without it."""
    from dlm_bench.cli import main
    base = ["passk", "--model", tiny_dir, "--method", "b", "--task", "testbed", "--out", str(tmp_path / "o")]
    assert main(base + ["--decoder", "rollout", "--temps", "0.6"]) == 2
    assert main(base + ["--decoder", "rollout", "--cache", "dual"]) == 2
    assert main(base + ["--rollout-run", str(tmp_path)]) == 2
    assert main(base + ["--decoder", "rollout"]) == 2          # the tiny model comes from no training run
    assert not (tmp_path / "o").exists()
