"""The demo driver: config validation (fast) and a miniature end-to-end run (slow)."""
import pytest
import yaml

from dlm_bench.protocol import load_config, run_demo
from dlm_bench.errors import UserError


def test_bad_configs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "none.yaml"))
    (tmp_path / "bad.yaml").write_text("task: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "partial.yaml").write_text("task: testbed\n")
    with pytest.raises(UserError, match="missing section"):
        load_config(str(tmp_path / "partial.yaml"))


def test_shipped_demo_config_is_complete():
    cfg = load_config("configs/demo.yaml")
    assert cfg["eval"]["n"] == 16 and len(cfg["eval"]["temperatures"]) == 3 and len(cfg["eval"]["lengths"]) == 2
    assert {"base", "trafl", "espo", "justgrpo"} <= set(cfg["methods"])


def test_paper_config_names_registered_methods_tasks_and_valid_sweeps():
    """configs/paper.yaml: every method and task it names exists, and every eval cell is a valid
    sampler setting (block divides length, steps divisible by the number of blocks)."""
    from dlm_bench.evaluate import SweepConfig
    from dlm_bench.methods import method_names
    from dlm_bench.tasks import task_names
    cfg = load_config("configs/paper.yaml")
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
    cfg = load_config("configs/demo.yaml")
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
    cfg = load_config("configs/tabom_transfer.yaml")
    assert cfg["task"] == "mbpp" and cfg["eval"]["tasks"] == ["mbpp", "gsm8k"] and "tabom" in cfg["methods"]


def test_missing_base_without_pretrain_settings_is_a_user_error(tmp_path):
    cfg = load_config("configs/tabom_transfer.yaml")
    cfg["base"]["checkpoint"] = str(tmp_path / "absent")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="not found"):
        run_demo(str(path))


def test_cpu_study_config_names_every_method_with_three_seeds():
    from dlm_bench.protocol import training_seeds
    from dlm_bench.methods import get_method
    cfg = load_config("configs/cpu-study.yaml")
    assert training_seeds(cfg) == [0, 1, 2]
    for m in cfg["methods"]:
        get_method(m)                                 # registered
        over = {**cfg["train"]["overrides"], **cfg["train"]["per_method"].get(m, {})}
        if get_method(m).trains:
            get_method(m).config_for(cfg["task"], over)   # every setting valid for the method


def test_seeded_protocol_lays_runs_out_for_seed_statistics(tmp_path, tiny_dir):
    """train.seeds: one run per seed in METHOD/seed-K, base once; the report's seed section reads them
    and every sweep records the training run (method, seed) it evaluated."""
    import json
    cfg = load_config("configs/cpu-study.yaml")
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
