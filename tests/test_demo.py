"""The demo driver: config validation (fast) and a miniature end-to-end run (slow)."""
import pytest
import yaml

from dlm_bench.protocol import load_protocol, read_yaml, run_demo
from dlm_bench.errors import UserError


def test_bad_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_protocol(str(tmp_path / "none.yaml"))
    (tmp_path / "bad.yaml").write_text("task: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_protocol(str(tmp_path / "bad.yaml"))
    (tmp_path / "partial.yaml").write_text("task: testbed\n")
    with pytest.raises(UserError, match="missing section"):
        load_protocol(str(tmp_path / "partial.yaml"))


def test_shipped_demo_config_is_complete():
    cfg = load_protocol("configs/demo.yaml")
    assert cfg.eval.n == 16 and cfg.eval.limit is None and cfg.eval.decoders == ["protocol", "rollout"]
    assert {"base", "trafl", "espo", "justgrpo"} <= set(cfg.methods) and cfg.train.control == "base"
    for name in ("cpu-study", "positive-control"):
        study = load_protocol(f"configs/{name}.yaml")
        assert study.eval.limit is None and study.train.control == "base" and len(study.train.seeds) >= 4
        assert study.eval.decoders == ["protocol", "rollout"]


def test_paper_config_names_registered_methods_tasks_and_valid_sweeps():
    """configs/paper.yaml: every method and task it names exists, and every eval cell is a valid
    sampler setting (block divides length, steps divisible by the number of blocks)."""
    from dlm_bench.evaluate import SweepConfig
    from dlm_bench.methods import method_names
    from dlm_bench.tasks import task_names
    cfg = read_yaml("configs/paper.yaml")
    load_protocol("configs/paper.yaml")
    e = cfg["eval"]
    assert set(cfg["methods"]) <= set(method_names()) and {cfg["task"], *e["tasks"]} <= set(task_names())
    assert (e["n"], e["temperatures"], e["lengths"]) == (16, [0.3, 0.6, 0.9], [256, 512])
    sweep = SweepConfig(model=".", method="base", task="gsm8k", ks=tuple(e["ks"]), n=e["n"],
                        temperatures=tuple(e["temperatures"]), lengths=tuple(e["lengths"]),
                        block_length=e["block_length"], steps_per_token=e["steps_per_token"])
    for t in e["temperatures"]:
        for g in e["lengths"]:
            sc = sweep.sampler(t, g).resolved()
            assert sc.steps == g and sc.block_length == 32


@pytest.mark.slow
def test_miniature_demo_end_to_end(tmp_path, tiny_dir):
    cfg = read_yaml("configs/demo.yaml")
    cfg.update(results=str(tmp_path / "results"), report=str(tmp_path / "report"))
    cfg["base"]["checkpoint"] = tiny_dir
    cfg["train"]["steps"] = 1
    cfg["train"]["overrides"].update(batch_prompts=2, group_size=2)
    cfg["eval"].update(n=2, ks=[1, 2], temperatures=[0.6], lengths=[12], limit=2, batch_size=8)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    report = run_demo(str(path))
    text = report.read_text()
    assert all(m in text for m in ("base", "trafl", "espo", "justgrpo"))
    # each checkpoint also under its own training decoder, the base under each of theirs
    rollout = tmp_path / "results" / "passk-rollout"
    assert {d.name for d in rollout.iterdir()} == {"l2r-T1-L12", "b12-T1-L12", "b12-T0.6-L12"}
    assert "## Matched decoding" in text and "own training decoder: left-to-right, T = 1" in text
    assert "## Training reward against the base model" in text      # control: base
    assert "MDE (pp)" in text and "one training seed per method" in text.split("## Figure 1b")[0]
    with pytest.raises(UserError, match="unknown stage"):
        run_demo(str(path), stages=("nope",))


def test_transfer_protocol_config_is_runnable_shape():
    cfg = read_yaml("configs/tabom_transfer.yaml")
    assert cfg["task"] == "mbpp" and cfg["eval"]["tasks"] == ["mbpp", "gsm8k"] and "tabom" in cfg["methods"]


def test_missing_base_without_pretrain_settings_is_a_user_error(tmp_path):
    cfg = read_yaml("configs/tabom_transfer.yaml")
    cfg["base"]["checkpoint"] = str(tmp_path / "absent")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="not found"):
        run_demo(str(path))


def test_cpu_study_config_names_every_method_with_five_seeds():
    from dlm_bench.protocol import training_seeds
    from dlm_bench.methods import get_method
    cfg = read_yaml("configs/cpu-study.yaml")
    assert training_seeds(load_protocol("configs/cpu-study.yaml")) == [0, 1, 2, 3, 4]
    for m in cfg["methods"]:
        get_method(m)                                 # registered
        over = {**cfg["train"]["overrides"], **cfg["train"]["per_method"].get(m, {})}
        if get_method(m).trains:
            get_method(m).config_for(cfg["task"], over)   # every setting valid for the method


def test_seeded_protocol_lays_runs_out_for_seed_statistics(tmp_path, tiny_dir):
    """train.seeds: one run per seed in METHOD/seed-K, base once; the report's seed section reads them
    and every sweep records the training run (method, seed) it evaluated."""
    import json
    cfg = read_yaml("configs/cpu-study.yaml")
    cfg.update(results=str(tmp_path / "results"), report=str(tmp_path / "report"), methods=["base", "trafl"])
    cfg["base"]["checkpoint"] = tiny_dir
    cfg["train"].update(steps=1, seeds=[0, 3])
    cfg["train"]["overrides"].update(batch_prompts=2, group_size=2, gen_length=8, steps=8, block_length=8)
    cfg["eval"].update(n=2, ks=[1, 2], temperatures=[0.6], lengths=[8], limit=3, batch_size=8)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    report = run_demo(str(path))
    passk = tmp_path / "results" / "passk"
    assert sorted(p.name for p in (passk / "trafl").iterdir()) == ["seed-0", "seed-3"]
    assert not any(p.name.startswith("seed-") for p in (passk / "base").iterdir())
    models = [json.loads(f.read_text()) for f in (passk / "trafl").rglob("model.json")]
    assert sorted(m["training"]["seed"] for m in models) == [0, 3]
    assert all(m["training"]["method"] == "trafl" and m["training"]["complete"] for m in models)
    assert [json.loads(f.read_text())["training"] for f in (passk / "base").rglob("model.json")] == [None]
    text = report.read_text()
    assert "## Per training seed" in text and "trained methods: mean over 2 training seeds" in text
    own = tmp_path / "results" / "passk-rollout" / "b8-T0.6-L8"           # trafl's own decoder, per seed
    assert sorted(p.name for p in (own / "trafl").iterdir()) == ["seed-0", "seed-3"] and (own / "base").is_dir()
    assert "own training decoder: one block, low-confidence order, T = 0.6, 8 tokens" in text
    bad = dict(cfg, train=dict(cfg["train"], seeds=[1, 1]))
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="distinct"):
        run_demo(str(path))


@pytest.mark.parametrize("edit, why", [
    (lambda c: c["eval"].update(cahce="dual"), "unknown key 'eval.cahce'; did you mean 'eval.cache'?"),
    (lambda c: c["eval"].update(n="many"), "eval.n must be an integer"),
    (lambda c: c["train"]["overrides"].update(lrr=1e-4), "unknown setting 'lrr'; did you mean 'lr'?"),
    (lambda c: c.update(methods=["base", "trafll"]), "unknown method 'trafll'; did you mean 'trafl'?"),
    (lambda c: c["train"].update(seeds=[0, 1]), "train.seed would be ignored beside train.seeds"),
    (lambda c: c["eval"].update(block_length=5), "block_length 5 does not divide gen_length 12"),
])
def test_a_bad_protocol_stops_make_demo_in_one_line_before_anything_runs(tmp_path, edit, why):
    """`make demo` runs `dlm-bench demo --config FILE`: a misspelt or ignored key exits 2 with one line
    naming it, and no results folder is made."""
    import subprocess
    import sys
    cfg = read_yaml("configs/demo.yaml")
    cfg["results"] = str(tmp_path / "results")
    edit(cfg)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "demo", "--config", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "" and why in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "results").exists()


def test_protocol_command_checks_and_shows_every_shipped_config(capsys):
    from dlm_bench.cli import main
    for name in ("demo", "cpu-study", "paper", "tabom_transfer"):
        assert main(["protocol", "--check", f"configs/{name}.yaml"]) == 0
    capsys.readouterr()
    assert main(["protocol", "--show", "configs/paper.yaml"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["eval"]["cache"] == "none" and resolved["eval"]["remasking"] == "low_confidence"  # defaults
    assert resolved["eval"]["lengths"] == [256, 512] and resolved["train"]["save_every"] == 25       # the file's


def _protocol(tmp_path, **changes):
    cfg = read_yaml("configs/demo.yaml")
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            cfg[section][name] = value
        else:
            cfg[section] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_decoders_and_expectations_are_checked(tmp_path):
    for changes, msg in [(dict(eval__decoders=["rollout"]), "must list 'protocol'"),
                         (dict(eval__decoders=["protocol", "rollout", "rollout"]), "must list 'protocol'"),
                         (dict(eval__decoders=["protocol", "greedy"]), "must list 'protocol'"),
                         (dict(expect={"method": "tabom"}), "trained method and a baseline"),
                         (dict(expect={"method": "justgrpo", "k": 32}), "expect.k"),
                         (dict(expect={"method": "justgrpo", "decoder": "rollout"}, eval__decoders=["protocol"]),
                          "is not swept"),
                         (dict(train__control="ref"), "control")]:
        with pytest.raises(UserError, match=msg):
            load_protocol(_protocol(tmp_path, **changes))


def test_the_base_is_swept_with_every_training_decoder():
    from dlm_bench.protocol import rollout_decoders
    proto = load_protocol("configs/demo.yaml")
    decs = rollout_decoders(proto, proto.methods, proto.base.checkpoint)
    assert sorted(d.name for d in decs) == ["b12-T0.6-L12", "b12-T1-L12", "l2r-T1-L12"]   # trafl, espo, justgrpo


def test_expectation_passes_and_fails_on_the_stored_records(tmp_path, capsys):
    """`expect:` reads the rollout-decoder records: 4 seeds clearly above the base pass; asking for an
    interval above +50 pp fails with ExpectationFailed (demo exits 1)."""
    import numpy as np
    from test_seeds import _write_run
    from dlm_bench.protocol import ExpectationFailed, expectation
    rng = np.random.default_rng(0)
    rates = rng.uniform(0.1, 0.5, 40)
    root = tmp_path / "results" / "passk-rollout" / "l2r-T1-L12"
    root.mkdir(parents=True)
    (root / "decoder.json").write_text('{"name": "l2r-T1-L12", "description": "left-to-right"}')
    for k in range(4):
        _write_run(root / "justgrpo" / f"seed-{k}" / "run", "justgrpo", rates + 0.2, 16, rng, f"j{k}")
    _write_run(root / "base" / "run", "base", rates, 16, rng, "b")
    path = _protocol(tmp_path, results=str(tmp_path / "results"),
                     expect={"method": "justgrpo", "decoder": "rollout", "k": 1})
    expectation(load_protocol(path))
    assert "PASS" in capsys.readouterr().out
    path = _protocol(tmp_path, results=str(tmp_path / "results"),
                     expect={"method": "justgrpo", "decoder": "rollout", "k": 1, "above": 0.5})
    with pytest.raises(ExpectationFailed, match="FAIL"):
        expectation(load_protocol(path))
