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
    assert cfg.eval.n == 16 and len(cfg.eval.temperatures) == 3 and len(cfg.eval.lengths) == 2
    assert {"base", "trafl", "espo", "justgrpo"} <= set(cfg.methods)


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


def test_cpu_study_config_names_every_method_with_three_seeds():
    from dlm_bench.protocol import training_seeds
    from dlm_bench.methods import get_method
    cfg = read_yaml("configs/cpu-study.yaml")
    assert training_seeds(load_protocol("configs/cpu-study.yaml")) == [0, 1, 2]
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
    assert "## Across training seeds" in report.read_text()
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
