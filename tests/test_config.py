"""The config layer: every spelling users have written still works, bad values fail in one line
before any model is loaded, every setting is documented, and seeds/hashes come from one place."""
import subprocess
import sys

import pytest

from dlm_bench import config as C
from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, make_config, method_names

TRAINING = [m for m in method_names() if get_method(m).trains]
# every flat --set name the loop accepted before the shared blocks existed
FLAT = {"lr": 2e-5, "lr_schedule": "linear", "warmup_ratio": 0.25, "weight_decay": 0.5,
        "adam_betas": (0.8, 0.9), "max_grad_norm": 3.0, "train_steps": 7, "inner_updates": 3,
        "group_size": 5, "batch_prompts": 3, "temperature": 0.7, "gen_length": 40, "steps": 20,
        "block_length": 10, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.125}
PATHS = {"lr": "optim.lr", "group_size": "rollout.group_size", "lora_r": "lora.r", "steps": "rollout.steps",
         "lora_dropout": "lora.dropout", "train_steps": "optim.train_steps"}


@pytest.mark.parametrize("name", TRAINING)
def test_flat_names_set_the_block_fields(name):
    cls = get_method(name)
    cfg = make_config(cls, FLAT)
    for flat, value in FLAT.items():
        assert getattr(cfg, flat) == value                       # readable under the old name ...
    for flat, path in PATHS.items():
        assert C.get_path(cfg, path) == FLAT[flat]               # ... and stored in its block
    assert make_config(cls, {"optim.lr": 2e-5}) == make_config(cls, {"lr": 2e-5}) == \
        make_config(cls, {"optim": {"lr": 2e-5}})
    assert make_config(cls, {}) == cls.Config()


def test_yaml_and_cli_spellings_are_coerced():
    cls = get_method("trafl")
    cfg = make_config(cls, {"lr": "1e-4", "adam_betas": [0.9, 0.95], "group_size": "4", "z_detach": "true",
                            "train_steps": "none"})
    assert cfg.optim.lr == 1e-4 and cfg.optim.adam_betas == (0.9, 0.95) and cfg.rollout.group_size == 4
    assert cfg.z_detach is True and cfg.optim.train_steps is None


def test_espo_counts_pairs_under_its_recipe_name():
    espo = get_method("espo")
    assert make_config(espo, {"num_mc": 3}).scoring.num_masks == 6
    assert make_config(espo, {"num_mc": 3}).num_mc == 3
    assert espo.Config().scoring.num_masks == 2 * 2          # --num_mc 2 pairs


@pytest.mark.parametrize("over, message", [
    ({"lrr": 1e-3}, "unknown setting 'lrr'"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"lr": 0}, "optim.lr must be > 0.0"),
    ({"lr": float("nan")}, "must be a finite number"),
    ({"group_size": 2.5}, "group_size must be an integer"),
    ({"group_size": 0}, "rollout.group_size must be >= 1"),
    ({"lr_schedule": "exp"}, "lr_schedule must be one of constant, constant_with_warmup, linear, cosine"),
    ({"warmup_ratio": 1.5}, "optim.warmup_ratio must be <= 1.0"),
    ({"adam_betas": [0.9]}, "adam_betas must be a list of 2 values"),
    ({"mask_scheme": "bogus"}, "scoring.mask_scheme must be one of paired, independent, espo"),
    ({"z_detach": "maybe"}, "z_detach must be true or false"),
    ({"optim": {"lr": -1.0}}, "optim.lr must be > 0.0"),
])
def test_bad_settings_are_one_line_user_errors(over, message):
    with pytest.raises(UserError) as e:
        make_config(get_method("trafl"), over)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("trafl")


def test_a_config_built_by_hand_is_checked_when_the_method_is_made():
    cls = get_method("tracerl")
    bad = cls.Config()
    bad.rollout.group_size = -1
    with pytest.raises(UserError, match="group_size must be >= 1"):
        cls(bad)


@pytest.mark.parametrize("name", TRAINING)
def test_every_setting_is_documented_with_its_source(name):
    rows = C.describe(get_method(name).Config)
    assert len(rows) >= 17
    full_ft = get_method(name).Config().lora.r == 0
    assert not [path for path, _, help_, _ in rows if not help_]
    # every default says where it comes from ("not found; ..." counts: it says so), except the LoRA
    # scale, dropout and targets of a method that trains without LoRA
    unsourced = [path for path, _, _, src in rows if not src]
    assert not [p for p in unsourced if not (full_ft and p in ("lora.alpha", "lora.dropout", "lora.targets"))]


def test_methods_verbose_prints_defaults_help_and_source():
    out = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "methods", "-v", "espo"], capture_output=True,
                         text=True, check=True).stdout
    assert "optim.lr = 3e-06 (alias lr)" in out and "run_*_llada.sh --learning_rate 3e-6" in out
    assert "scoring.num_masks = 4 (alias num_masks, num_mc = this / 2)" in out
    bad = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "methods", "nosuch"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown method(s) nosuch" in bad.stderr


def test_train_refuses_a_bad_setting_before_loading_the_model(tmp_path):
    # the model path does not exist: a config error must be reported first (no model is loaded)
    r = subprocess.run([sys.executable, "-m", "dlm_bench.cli", "train", "trafl", "--task", "testbed",
                        "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                        "--set", "lr_schedule=exp"], capture_output=True, text=True)
    assert r.returncode == 2 and "lr_schedule must be one of" in r.stderr and "Traceback" not in r.stderr


def test_nested_yaml_blocks_route_to_the_method(tmp_path):
    import argparse
    from dlm_bench.commands.train import build_config
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 2.0e-5\nrollout:\n  group_size: 3\nlora_r: 4\nseed: 5\n")
    args = argparse.Namespace(method="trafl", task="testbed", model=str(tmp_path), out=None, config=str(f),
                              train_steps=None, seed=None, device=None, data_dir=None, sets=["beta=2"])
    cfg = build_config(args)
    mcfg = make_config(get_method("trafl"), cfg.overrides)
    assert (mcfg.optim.lr, mcfg.rollout.group_size, mcfg.lora.r, mcfg.beta, cfg.seed) == (2e-5, 3, 4, 2.0, 5)


def test_seeds_keep_their_derivations():
    # the evaluation seed of a sample and the training seeds are pinned by the stored records: these
    # are the derivations the records were made with (sha256 of the documented encodings)
    import hashlib
    h = hashlib.sha256("abc\x00p1\x003".encode()).digest()
    assert C.sample_seed("abc", "p1", 3) == int.from_bytes(h[:8], "big") >> 1
    h = hashlib.sha256(b"1,2,3").digest()
    assert C.derive_seed(1, 2, 3) == int.from_bytes(h[:8], "little") >> 1
    assert C.mask_seed(5, 2) == 5 * 1_000_003 + 2 and C.mask_seed(2 ** 62, 0) < 2 ** 63
    assert C.text_seed(1) != C.text_seed("1")
    assert C.stable_hash({"b": 1, "a": 2}) == C.stable_hash({"a": 2, "b": 1})
