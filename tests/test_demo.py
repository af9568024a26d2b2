"""The demo driver: config validation (fast) and a miniature end-to-end run (slow)."""
import pytest
import yaml

from dlm_bench.demo import load_config, run_demo
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
