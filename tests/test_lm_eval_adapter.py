"""The lm-eval `dlm` model on the tiny DLM (offline): called directly with lm_eval Instance objects,
and end to end through `lm_eval.simple_evaluate` on local YAML tasks (tests/fixtures/lm_eval)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (optional extra `lmeval`)")

from lm_eval.api.instance import Instance  # noqa: E402

import torch  # noqa: E402

from dlm_bench.errors import UserError  # noqa: E402
from dlm_bench.lm_eval_adapter import DLMEvalHarness, cut_at  # noqa: E402

GEN = {"until": ["\n\n"], "temperature": 1.0, "do_sample": True, "max_gen_toks": 16}


def _lm(tiny, seed=7):
    return DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8, seed=seed, mc_num=4,
                          greedy_check=True, batch_size=3)


def _gen_requests(repeats, gen=GEN, docs=("Q: 1+1=", "Q: 2+3=")):
    reqs = []
    for doc_id, ctx in enumerate(docs):
        inst = Instance("generate_until", {}, (ctx, dict(gen)), 0, metadata=("toy", doc_id, repeats))
        reqs += [inst] * repeats  # lm-eval sends the same Instance once per repeat
    return reqs


def test_registered():
    from lm_eval.api.registry import get_model
    assert get_model("dlm") is DLMEvalHarness


def test_repeats_differ_and_seed_reproduces(tiny):
    out = _lm(tiny).generate_until(_gen_requests(3))
    assert len(out) == 6 and all(isinstance(s, str) for s in out)
    assert len(set(out[:3])) > 1, "repeats at T > 0 must not be identical"
    again = _lm(tiny).generate_until(_gen_requests(3))
    assert again == out, "the same seed must reproduce the same outputs"
    other = _lm(tiny, seed=8).generate_until(_gen_requests(3))
    assert other != out
    # batch-invariant: one request at a time (first document only) gives the same texts
    one = DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8, seed=7, mc_num=4, batch_size=1)
    assert one.generate_until(_gen_requests(3, docs=("Q: 1+1=",))) == out[:3]


def test_greedy_ignores_seed(tiny):
    greedy = dict(GEN, temperature=0.0, do_sample=False)
    a = _lm(tiny, seed=1).generate_until(_gen_requests(3, greedy, docs=("Q: 1+1=",)))
    b = _lm(tiny, seed=2).generate_until(_gen_requests(3, greedy, docs=("Q: 1+1=",)))
    assert a == b and len(set(a)) == 1


def test_until_cuts():
    assert cut_at("abc\n\ndef", ["\n\n"]) == "abc"
    assert cut_at("abcXYdef", ["Y", "X"]) == "abc"
    assert cut_at("abc", "") == "abc"


def test_loglikelihood_finite_and_deterministic(tiny):
    reqs = [Instance("loglikelihood", {}, ("Q: 1+1=", " 2"), 0, metadata=("toy", 0, 1)),
            Instance("loglikelihood", {}, ("Q: 1+1=", " 3 apples"), 1, metadata=("toy", 0, 1))]
    a = _lm(tiny).loglikelihood(reqs)
    b = _lm(tiny).loglikelihood(reqs)
    assert a == b
    for ll, greedy in a:
        assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)
    assert a[1][0] < a[0][0]  # a longer continuation of random tokens is less likely


def test_rolling_not_supported(tiny):
    with pytest.raises(UserError, match="ELBO"):
        _lm(tiny).loglikelihood_rolling([])


# ---- model_args and gen_kwargs as lm-eval and Hugging Face users know them ----------------------

def test_model_args_checked_before_loading(tiny_dir, tmp_path):
    with pytest.raises(UserError, match=r"'gen_lenght' \(did you mean 'gen_length'\?\), "
                                        r"'temprature' \(did you mean 'temperature'\?\)"):
        DLMEvalHarness(pretrained=tiny_dir, gen_lenght=999, temprature=0.9)
    with pytest.raises(UserError, match="batch_size=auto"):
        DLMEvalHarness(pretrained=tiny_dir, batch_size="auto:4")
    with pytest.raises(UserError, match="max_batch_size"):
        DLMEvalHarness(pretrained=tiny_dir, batch_size=4, max_batch_size=64)
    with pytest.raises(UserError, match="remasking must be one of"):
        DLMEvalHarness(pretrained=tiny_dir, remasking="lowest")
    with pytest.raises(UserError, match="not a directory"):
        DLMEvalHarness(pretrained=str(tmp_path / "missing"))
    lm = DLMEvalHarness(pretrained=tiny_dir, device="cpu")
    assert lm._dlm is None                     # loads on the first request, not before
    assert lm.max_length == 1024 and lm._dlm is not None  # the tiny config's max_position_embeddings


def test_seed_from_torch_unless_given(tiny):
    """lm-eval seeds torch (its --seed, third slot) before it sends requests: without seed= the
    adapter samples with that seed; with seed= it uses its own. get_model_info reports which."""
    reqs = _gen_requests(2, docs=("Q: 1+1=",))
    torch.manual_seed(7)
    lm = DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8)
    torch.rand(3)                              # draws since the seed do not change it
    from_torch = lm.generate_until(reqs)
    assert from_torch == _lm(tiny, seed=7).generate_until(reqs)
    assert lm.get_model_info()["dlm_sampling_seed"] == 7
    assert "--seed" in lm.get_model_info()["dlm_seed_from"]
    torch.manual_seed(8)
    assert DLMEvalHarness(dlm=tiny, gen_length=16, block_length=8, steps=8).generate_until(reqs) != from_torch
    assert _lm(tiny, seed=7).get_model_info()["dlm_seed_from"] == "model_args seed"


def test_check_seeds():
    from dlm_bench.lm_eval_adapter import check_seeds
    check_seeds(["--seed", "3", "--model_args", "pretrained=/m,seed=3"])
    check_seeds(["--seed", "0,1234,5,1234", "--model_args", "pretrained=/m", "seed=5"])
    check_seeds(["--seed", "0,8,None,52", "--model_args=pretrained=/m,seed=5"])   # torch unseeded
    check_seeds(["--model_args", "seed=5"])                                       # no --seed given
    with pytest.raises(UserError, match="disagree"):
        check_seeds(["--seed=1", "--model_args", "pretrained=/m,seed=2"])
    with pytest.raises(UserError, match="torch seed 9"):
        check_seeds(["-a", "pretrained=/m", "seed=2", "--seed", "1,2,9,4"])


def test_do_sample_and_temperature_as_hugging_face(tiny):
    lm = _lm(tiny)
    assert lm._temperature({"do_sample": True}) == 1.0          # HF generate's default temperature
    assert lm._temperature({"do_sample": "false", "temperature": 0.7}) == 0.0
    assert lm._temperature({"temperature": 0.7}) == 0.7 and lm._temperature({}) == 0.0
    no_t = {"until": [], "do_sample": True, "max_gen_toks": 16}
    at_one = _lm(tiny).generate_until(_gen_requests(3, no_t))
    assert at_one == _lm(tiny).generate_until(_gen_requests(3, dict(no_t, temperature=1.0)))
    greedy = _lm(tiny).generate_until(_gen_requests(3, dict(no_t, do_sample=False)))
    assert len(set(at_one[:3])) > 1 and len(set(greedy[:3])) == 1


def test_unsupported_gen_kwargs_warn_once(tiny, capsys):
    gen = dict(GEN, top_p=0.9, top_k=5)
    lm = _lm(tiny)
    lm.generate_until(_gen_requests(2, gen))
    lm.generate_until(_gen_requests(1, gen))
    lines = [x for x in capsys.readouterr().err.splitlines() if "not supported" in x]
    assert lines == ["dlm: gen_kwargs top_k=5, top_p=0.9 not supported by the diffusion sampler; ignored"]


def test_max_gen_toks_is_a_hard_cap(tiny):
    """20 tokens asked at block 8: the sampler's window is 24 tokens, the same as for 24 asked (same
    seeds), and the answer is cut back to 20 tokens (the char tokenizer: one character each)."""
    g20, g24 = dict(GEN, until=[], max_gen_toks=20), dict(GEN, until=[], max_gen_toks=24)
    docs = tuple(f"Q: {i}*3=" for i in range(6))
    t20 = _lm(tiny).generate_until(_gen_requests(1, g20, docs))
    t24 = _lm(tiny).generate_until(_gen_requests(1, g24, docs))
    assert all(len(tiny.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 20 for t in t20)
    assert all(b.startswith(a) for a, b in zip(t20, t24)) and t20 != t24


def test_contexts_truncated_from_the_left(tiny, capsys):
    """Greedy, so the seed (a hash of the whole context) plays no part: two contexts that end alike
    decode alike once cut to max_length minus the 8-token window, and differently when not cut."""
    greedy = dict(GEN, do_sample=False, max_gen_toks=8)
    tail = "the same last thirty-two chars.."
    docs = ("X" * 60 + tail, "Q: 7*9=? " * 6 + tail)
    cut = DLMEvalHarness(dlm=tiny, gen_length=8, block_length=8, steps=8, max_length=40)
    a, b = cut.generate_until(_gen_requests(1, greedy, docs))
    assert a == b
    assert "2 of 2 contexts were longer than max_length minus the answer window" in capsys.readouterr().err
    whole = _lm(tiny).generate_until(_gen_requests(1, greedy, docs))
    assert whole[0] != whole[1]
    ll = [Instance("loglikelihood", {}, ("Y" * 50, " 2"), 0, metadata=("toy", 0, 1))]
    assert math.isfinite(DLMEvalHarness(dlm=tiny, mc_num=4, max_length=20).loglikelihood(ll)[0][0])
    assert "1 of 1 contexts were longer than max_length minus the continuation" in capsys.readouterr().err
    with pytest.raises(UserError, match="no room"):
        DLMEvalHarness(dlm=tiny, mc_num=4, max_length=2).loglikelihood(ll)


# ---- end to end: lm_eval.simple_evaluate on local YAML tasks, as a user runs it -------------------

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
TASKS = ["dlm_toy_gen", "dlm_toy_mc"]  # generate_until (3 rows x 3 repeats) and multiple_choice (2 rows)


@pytest.fixture
def offline(monkeypatch):
    """No network: the offline switches in the environment and in the already-imported libraries
    (datasets and huggingface_hub read them once, at import)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setattr(datasets.config, name, True, raising=False)


def _write_tasks(tmp_path: Path) -> Path:
    """The fixture templates as task YAMLs in tmp_path: data files resolved to absolute paths, and
    the datasets cache kept in tmp_path (outside the scanned task folder)."""
    import yaml

    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    for tmpl in sorted(FIXTURES.glob("*.yaml.tmpl")):
        cfg = yaml.safe_load(tmpl.read_text())
        kw = cfg["dataset_kwargs"]
        kw["data_files"] = {split: str(FIXTURES / f) for split, f in kw["data_files"].items()}
        kw["cache_dir"] = str(tmp_path / "hf_datasets")
        (task_dir / tmpl.name.removesuffix(".tmpl")).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return task_dir


def _simple_evaluate(tiny_dir, task_dir, seed=7):
    import lm_eval
    from lm_eval.tasks import TaskManager

    # the comma-separated string a user passes as --model_args (parsed by lm-eval itself)
    model_args = (f"model_path={tiny_dir},device=cpu,gen_length=8,block_length=8,steps=8,seed={seed},"
                  "mc_num=4,batch_size=4")
    return lm_eval.simple_evaluate(
        model="dlm", model_args=model_args, tasks=TASKS, limit=3, bootstrap_iters=0, log_samples=True,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))


def test_simple_evaluate_local_tasks_end_to_end(tiny_dir, tmp_path, offline):
    task_dir = _write_tasks(tmp_path)
    out = _simple_evaluate(tiny_dir, task_dir)
    assert out is not None
    assert set(TASKS) <= set(out["results"])

    em = out["results"]["dlm_toy_gen"]["exact_match,none"]
    acc = out["results"]["dlm_toy_mc"]["acc,none"]
    for v in (em, acc):
        assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0

    # generate_until: 3 documents (limit=3), each sent 3 times (repeats: 3) with the task's gen kwargs
    gen = out["samples"]["dlm_toy_gen"]
    assert [s["doc_id"] for s in gen] == [0, 1, 2]
    texts = []
    for s in gen:
        (context, gen_kwargs), = s["arguments"]
        assert context == f"Q: {s['doc']['question']}\nA:"
        assert gen_kwargs["temperature"] == 0.8 and gen_kwargs["do_sample"] is True
        assert gen_kwargs["until"] == ["\n"] and gen_kwargs["max_gen_toks"] == 8
        (resps,) = s["resps"]
        assert len(resps) == 3 and all(isinstance(r, str) for r in resps)
        assert all("\n" not in r and len(r) <= 8 for r in resps)  # cut at `until`; char tokenizer
        assert s["filtered_resps"] == [resps[0]]  # lm-eval's default take_first filter
        texts.append(resps)
    assert any(len(set(r)) > 1 for r in texts), f"repeats at T = 0.8 are all identical: {texts}"

    # multiple_choice -> loglikelihood: one (ELBO, is_greedy) per choice, finite and negative
    mc = out["samples"]["dlm_toy_mc"]
    assert len(mc) == 2  # the file has 2 rows; limit=3 takes them all
    for s in mc:
        assert len(s["resps"]) == len(s["doc"]["choices"]) == 2
        for (ll, greedy), in s["resps"]:
            assert math.isfinite(ll) and ll < 0 and isinstance(greedy, bool)

    # the same seed reproduces the run through lm-eval (fresh model, task objects and dataset load)
    again = _simple_evaluate(tiny_dir, task_dir)
    assert [s["resps"] for s in again["samples"]["dlm_toy_gen"]] == [s["resps"] for s in gen]
    assert [s["resps"] for s in again["samples"]["dlm_toy_mc"]] == [s["resps"] for s in mc]


# ---- `dlm-bench lm-eval`: lm-eval's own CLI, as a user types it ---------------------------------

def _lm_eval_cli(args: list[str]):
    """`dlm-bench lm-eval ARGS` in a real process, offline."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "dlm_bench.cli", "lm-eval", "--model", "dlm", *args],
                          env=env, capture_output=True, text=True, timeout=600)


def _results(out: Path) -> tuple[dict, list[dict]]:
    import json

    (folder,) = out.iterdir()
    (results,) = folder.glob("results_*.json")
    (samples,) = folder.glob("samples_dlm_toy_gen_*.jsonl")
    return json.loads(results.read_text()), [json.loads(x) for x in samples.read_text().splitlines()]


def test_dlm_bench_lm_eval_command_writes_lm_evals_results(tiny_dir, tmp_path):
    """A real process: the command registers `dlm`, passes lm-eval's flags through, falls back to the
    CPU from a cuda device, and `model_path=` still names the output folder after the model.
    lm-eval's --seed drives sampling: --seed 1 and --seed 2 at T = 0.8 give different samples, and
    results.json records the seed used. Each request type shows a progress bar."""
    task_dir = _write_tasks(tmp_path)
    runs = {}
    for seed in (1, 2):
        out = tmp_path / f"lm_eval_out{seed}"
        r = _lm_eval_cli(["--model_args", f"model_path={tiny_dir},gen_length=8,block_length=8,steps=8,mc_num=4",
                          "--device", "cuda:0", "--tasks", "dlm_toy_gen", "--include_path", str(task_dir),
                          "--limit", "2", "--output_path", str(out), "--log_samples", "--seed", str(seed)])
        assert r.returncode == 0, r.stderr[-3000:]
        if not torch.cuda.is_available():
            assert "CUDA is not available; using the CPU" in r.stderr
        assert "dlm generate_until: 100%" in r.stderr
        (folder,) = out.iterdir()
        assert folder.name.endswith(Path(tiny_dir).name)          # the model's name, not a random one
        data, samples = _results(out)
        assert 0.0 <= data["results"]["dlm_toy_gen"]["exact_match,none"] <= 1.0
        assert len(samples) == 2                                  # --limit 2 reached lm-eval
        assert data["config"]["torch_seed"] == seed
        assert data["config"]["dlm_sampling_seed"] == seed and "--seed" in data["config"]["dlm_seed_from"]
        runs[seed] = [s["resps"] for s in samples]
    assert runs[1] != runs[2], runs


def test_dlm_bench_lm_eval_bad_input_one_line(tiny_dir, tmp_path, offline, capsys):
    """Exit 2 and one line (the command's own main, in this process): a misspelt model arg, a --seed
    that model_args contradicts, and a perplexity task, refused before the model loads (this model
    folder has no weights to load)."""
    from dlm_bench.cli import main

    task_dir = _write_tasks(tmp_path)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    common = ["lm-eval", "--model", "dlm", "--include_path", str(task_dir), "--limit", "1"]
    for args, said in (
            (["--model_args", f"pretrained={tiny_dir},gen_lenght=999", "--tasks", "dlm_toy_gen"],
             "'gen_lenght' (did you mean 'gen_length'?)"),
            (["--model_args", f"pretrained={tiny_dir},seed=3", "--seed", "4", "--tasks", "dlm_toy_gen"],
             "disagree"),
            (["--model_args", f"pretrained={empty}", "--tasks", "dlm_toy_ppl"],
             "loglikelihood_rolling (perplexity tasks such as wikitext) is not supported")):
        assert main(common + args) == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
        assert line.startswith("dlm-bench lm-eval: error: dlm: ") and said in line


def test_lm_eval_argv_and_greedy_warning(tiny, capsys):
    from dlm_bench.lm_eval_adapter import lm_eval_argv

    assert lm_eval_argv(["--model_args", "model_path=/m,seed=1", "--tasks", "x"]) == \
        ["--model_args", "pretrained=/m,seed=1", "--tasks", "x"]
    assert lm_eval_argv(["--model_args=model_path=/m"]) == ["--model_args=pretrained=/m"]
    assert lm_eval_argv(["-a", "seed=1", "model_path=/m", "--tasks", "model_path=x"]) == \
        ["-a", "seed=1", "pretrained=/m", "--tasks", "model_path=x"]   # lm-eval 0.4.9+: several words
    lm = _lm(tiny)
    assert lm._temperature({"do_sample": False, "temperature": 0.6}) == 0.0
    assert lm._temperature({"do_sample": False, "temperature": 0.6}) == 0.0
    assert capsys.readouterr().err.count("do_sample=false") == 1       # said once, not per request
    assert lm._temperature({"do_sample": True, "temperature": 0.6}) == 0.6


def test_loglikelihood_honours_cfg_scale(tiny):
    """cfg_scale > 0 scores with LLaDA's guided logits (get_log_likelihood.py get_logits): recomputed
    here from two plain forward passes on the adapter's own mask draw; cfg 0 is the plain ELBO."""
    import torch
    from dlm_bench.config import text_seed
    from dlm_bench.likelihood import ScoredBatch, draw_masks, masked_input
    ctx_text, cont_text = "Q: 1+1=", " 2 ok"
    req = [Instance("loglikelihood", {}, (ctx_text, cont_text), 0, metadata=("toy", 0, 1))]
    plain = _lm(tiny).loglikelihood(req)[0][0]
    lm = _lm(tiny)
    lm.cfg_scale = 1.5
    guided = lm.loglikelihood(req)[0][0]
    ctx, cont = lm._split(ctx_text, cont_text)
    batch = ScoredBatch.build(tiny, [ctx], [cont])
    draw = draw_masks(batch.valid, lm.mc_num, torch.Generator().manual_seed(text_seed(lm.seed, "ll", ctx_text, cont_text)),
                      "stratified_paired")
    L, P = len(cont), len(ctx)
    total = 0.0
    for k in range(draw.masks.shape[0]):
        m = draw.masks[k]
        x, att = masked_input(batch.prompt_ids, batch.prompt_mask, batch.completion, m, tiny.mask_id)
        un = x.clone()
        un[0, :P] = tiny.mask_id
        with torch.no_grad():
            cond, uncond = tiny.logits(x, att).double(), tiny.logits(un, att).double()
        logp = torch.log_softmax(uncond + 2.5 * (cond - uncond), -1)[0, P:]
        lp = logp.gather(-1, batch.completion[0, :, None]).squeeze(-1)
        total += float((lp * m[0]).sum() * draw.weights[k, 0])
    assert guided == pytest.approx(total / draw.masks.shape[0], rel=1e-5)
    assert abs(guided - plain) > 1e-3
