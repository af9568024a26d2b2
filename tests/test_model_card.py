"""Model cards: every checkpoint `train` and `pretrain` write, and `merge`'s output, holds a README.md in the
Hugging Face form, parsed here by huggingface_hub's own card loader; the card never changes the model
fingerprint that sweeps are keyed by."""
import json
import re
import shutil
from pathlib import Path

import yaml
from huggingface_hub import ModelCard

from dlm_bench.cli import main
from dlm_bench.evaluate import model_fingerprint
from dlm_bench.training.model_card import hub_id

TINY = {"group_size": 4, "batch_prompts": 2, "gen_length": 8, "steps": 8, "block_length": 8}


def _train(tiny_dir, out, **extra):
    sets = [a for k, v in {**TINY, **extra}.items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "trafl", "--task", "testbed", "--model", tiny_dir, "--out", str(out), "--train-steps", "2",
                 "--seed", "7", "--device", "cpu", "--no-progress", *sets]) == 0
    return out / "checkpoint"


def test_train_checkpoint_card(tiny_dir, tmp_path):
    ckpt = _train(tiny_dir, tmp_path / "run", lora_r=0, lr=2e-5)
    card = ModelCard.load(ckpt / "README.md")
    assert card.data.base_model == tiny_dir and card.data.library_name == "transformers"
    assert {"dlm-bench", "trafl", "testbed", "diffusion-language-model"} <= set(card.data.tags)
    text = card.text
    for heading in ("## Method", "## Recipe", "## Data", "## Training", "## Software"):
        assert heading in text
    assert re.search(r"\| `optim.lr` \| `2e-05` \| set for this run \(default", text)       # the user's value
    assert "| `beta` |" in text                                                            # every setting
    assert "steps: 2 of 2 rollout batches" in text and "seed: 7" in text
    assert "split `train`" in text and "dlm-bench 0.1.0" in text
    assert re.search(r"git commit [0-9a-f]{40}", text)                  # the tests run in a git checkout
    meta = yaml.safe_load((ckpt / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == tiny_dir


def test_card_is_not_part_of_the_fingerprint(tiny_dir, tmp_path):
    ckpt = _train(tiny_dir, tmp_path / "run", lora_r=0)
    with_card = model_fingerprint(str(ckpt))
    assert "README.md" not in with_card["files"]
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "README.md").unlink()
    assert model_fingerprint(str(bare))["hash"] == with_card["hash"]
    (bare / "README.md").write_text("---\nlicense: mit\n---\nedited")
    assert model_fingerprint(str(bare))["hash"] == with_card["hash"]


def test_lora_card_and_merge_card(tiny_dir, tmp_path):
    adapter = _train(tiny_dir, tmp_path / "run", lora_r=4, lora_alpha=8)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    merged = tmp_path / "merged"
    assert main(["merge", str(adapter), str(merged)]) == 0
    mcard = ModelCard.load(merged / "README.md")
    assert mcard.data.library_name == "transformers" and mcard.data.base_model == tiny_dir
    assert "merged" in mcard.data.tags and "lora" not in mcard.data.tags
    assert "## Merge" in mcard.text and "## Recipe" in mcard.text          # the adapter's recipe is kept


def test_pretrain_card_and_hub_base_model(tmp_path):
    out = tmp_path / "base"
    assert main(["pretrain", "--out", str(out), "--init", "tiny:1m", "--train-steps", "2", "--batch-size", "4",
                 "--answer-length", "8", "--save-every", "2"]) == 0
    card = ModelCard.load(out / "checkpoint" / "README.md")
    assert "base_model" not in card.data.to_dict()          # a fresh model has none
    assert "masked-diffusion-sft" in card.data.tags and "steps: 2 of 2" in card.text
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps({"_name_or_path": "GSAI-ML/LLaDA-8B-Instruct"}))
    assert hub_id(str(snap)) == "GSAI-ML/LLaDA-8B-Instruct"
    (snap / "config.json").write_text(json.dumps({"_name_or_path": "/some/local/path"}))
    assert hub_id(str(snap)) == str(snap)
