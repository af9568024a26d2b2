"""Model cards: the README.md of every checkpoint folder `train` and `pretrain` write, and of `merge`'s
output, in the Hugging Face form (YAML front matter with base_model, library_name, tags; then prose).

The card is generated from the run's resolved config: method and its source, every method setting with
the source of its value, the task data, steps, seed, and the dlm-bench version and git commit. It is
documentation only: `evaluate.model_fingerprint` leaves README.md out, so a card never changes a
sweep's hash.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from dlm_bench import __version__
from dlm_bench.config import describe, get_path
from dlm_bench.environment import versions

CARD = "README.md"
_REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when files differ from it); None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hub_id(model_dir: str) -> str:
    """The hub id a local model folder came from (its config's `_name_or_path` when that reads
    'owner/name' and is not a path), else the folder as given: the card's base_model."""
    try:
        name = json.loads((Path(model_dir) / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError):
        name = ""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name or "") and not Path(name).exists():
        return name
    return str(model_dir)


def render(meta: dict, title: str, sections: list[tuple[str, list[str]]]) -> str:
    """A card: front matter, a title, then `## heading` sections of lines."""
    body = [f"# {title}", ""]
    for heading, lines in sections:
        body += [f"## {heading}", "", *lines, ""]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    return f"---\n{front}\n---\n\n" + "\n".join(body)


def software_lines() -> list[str]:
    v = versions()
    return [f"- dlm-bench {__version__}, git commit {git_commit() or 'unknown (not a git checkout)'}",
            f"- python {v['python']}, torch {v['torch']}, transformers {v['transformers']}"]


def recipe_rows(method_cls, mcfg) -> list[str]:
    """A Markdown table: every setting of the method, its value in this run and where it comes from."""
    rows = ["| setting | value | source |", "|---|---|---|"]
    for key, default, _help, source in describe(method_cls.Config):
        value = get_path(mcfg, key)
        origin = source or "dlm-bench default"
        if value != default:
            origin = f"set for this run (default {default!r}: {origin})"
        rows.append(f"| `{key}` | `{value!r}` | {origin.replace('|', '/')} |")
    return rows


def training_card(run) -> str:
    """The card of an RL post-training checkpoint (`dlm-bench train`), from the loop's `Run`."""
    p, cfg, lora = run.plan, run.cfg, run.lora
    method_cls, mcfg, task = p.cls, p.mcfg, p.task
    about = (sys.modules[method_cls.__module__].__doc__ or method_cls.__name__).strip().splitlines()[0]
    tags = ["dlm-bench", "diffusion-language-model", "reinforcement-learning", method_cls.name, task.name]
    meta = {"base_model": hub_id(cfg.model), "library_name": "peft" if lora else "transformers",
            "tags": tags + (["lora"] if lora else [])}
    if getattr(task, "hub_id", None):
        meta["datasets"] = [task.hub_id]
    try:
        where = task.locate(p.split) or "generated"
    except Exception:  # noqa: BLE001 - the card never fails a save
        where = "unknown"
    return render(meta, f"{Path(cfg.out).resolve().name}: {method_cls.name} on {task.name}", [
        ("Method", [f"`{method_cls.name}`: {about}",
                    f"Trained with `dlm-bench train {method_cls.name}` from `{cfg.model}`"
                    + (" as a LoRA adapter (merge it with `dlm-bench merge`)." if lora else ".")]),
        ("Recipe", recipe_rows(method_cls, mcfg)),
        ("Data", [f"- task `{task.name}`, split `{p.split}` ({len(p.problems)} prompts) from {where}",
                  f"- reward: the task's grader (`{task.name}`, grader version {getattr(task, 'version', 1)})"]),
        ("Training", [f"- steps: {run.step} of {p.steps} rollout batches", f"- seed: {cfg.seed}",
                      f"- processes: {run.d.world}", "- full settings: `config.json` and `log.jsonl` in the run "
                      "folder beside this checkpoint"]),
        ("Software", software_lines())])


def pretrain_card(cfg, steps_done: int) -> str:
    """The card of a masked-diffusion pre-training / SFT checkpoint (`dlm-bench pretrain`)."""
    base = None if cfg.init.startswith("tiny:") else hub_id(cfg.init)
    meta = {**({"base_model": base} if base else {}), "library_name": "transformers",
            "tags": ["dlm-bench", "diffusion-language-model", "masked-diffusion-sft", cfg.task]}
    settings = ["| setting | value |", "|---|---|"] + [f"| `{k}` | `{v!r}` |" for k, v in vars(cfg).items()]
    return render(meta, f"{Path(cfg.out).resolve().name}: masked-diffusion SFT on {cfg.task}", [
        ("Method", ["LLaDA's SFT objective: masked answer tokens' cross-entropy weighted 1/p_mask "
                    "(`dlm_bench/training/pretrain.py`), from " + (f"`{cfg.init}`" if base else
                                                                  f"a fresh `{cfg.init}` model") + "."]),
        ("Recipe", settings),
        ("Data", [f"- task `{cfg.task}`, split `{cfg.split}` (reference answers)"]),
        ("Training", [f"- steps: {steps_done} of {cfg.steps}", f"- seed: {cfg.seed}"]),
        ("Software", software_lines())])


def merge_card(adapter_dir: str | Path, base_model: str) -> str:
    """The merged model's card: the adapter's card with the merged form's metadata, or a short one."""
    src = Path(adapter_dir) / CARD
    meta, text = {}, ""
    if src.is_file():
        meta, text = split_card(src.read_text(encoding="utf-8"))
    meta = {**meta, "base_model": hub_id(base_model), "library_name": "transformers",
            "tags": [t for t in meta.get("tags", ["dlm-bench", "diffusion-language-model"]) if t != "lora"] + ["merged"]}
    note = [f"`dlm-bench merge` folded the LoRA adapter `{adapter_dir}` into its base `{base_model}`."]
    body = text.split("\n", 2)[2] if text.startswith("# ") else text
    title = f"{Path(adapter_dir).resolve().parent.name or Path(adapter_dir).name} (merged)"
    return render(meta, title, [("Merge", note + [""] + software_lines())]) + ("\n" + body if body else "")


def split_card(text: str) -> tuple[dict, str]:
    """(front matter, the rest) of a card."""
    m = re.match(r"^---\n(.*?)\n---\n\n?", text, re.DOTALL)
    if not m:
        return {}, text
    return yaml.safe_load(m.group(1)) or {}, text[m.end():]
