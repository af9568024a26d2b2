"""Method defaults and per-task recipes against the published settings, read from the hyperparameter
tables of ../shared/reference/methods.md (an independent source: the papers' configs and scripts as
collected there), not against literals copied from the dataclasses."""
import re
from pathlib import Path

import pytest

from dlm_bench.methods import get_method
from shared_files import missing

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "methods.md"


def _table(heading: str) -> dict[str, list[str]]:
    """Rows (label -> cells) of the first markdown table after the line starting with `heading`."""
    if not REFERENCE.is_file():
        missing(f"{REFERENCE} not found (the methods reference in ../shared)")
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(heading))
    rows, started = {}, False
    for ln in lines[i + 1:]:
        if ln.startswith("|"):
            started = True
            cells = [c.strip().replace("**", "") for c in ln.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):
                rows[cells[0]] = cells[1:]
        elif started:
            break
    return rows


def _num(cell: str) -> float:
    return float(re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell).group())


def test_espo_recipes_match_the_published_table():
    t = _table("### 2.3 Hyperparameters")
    columns = {"gsm8k": 0, "math500": 1, "countdown": 2, "sudoku": 3, "humaneval": 4, "mbpp": 4}
    fields = {"μ (num_iterations)": "inner_updates", "G (num_generations)": "group_size", "β (KL)": "beta",
              "ε": "epsilon_low", "LR": "lr", "weight decay": "weight_decay", "max grad norm": "max_grad_norm",
              "diffusion steps (rollout)": "steps"}
    espo = get_method("espo")
    wrong = [(task, field, getattr(espo.config_for(task), field), t[row][col])
             for task, col in columns.items() for row, field in fields.items()
             if getattr(espo.config_for(task), field) != pytest.approx(_num(t[row][col]))]
    assert wrong == []


def test_tracerl_defaults_match_its_llada_config():
    t = {k: v[0] for k, v in _table("### 4.2 Hyperparameters").items()}     # the rl_llada.yaml column
    c = get_method("tracerl").Config()
    prompts, group = (int(x) for x in re.findall(r"\d+", t["tasks × responses per step"]))
    eps, beta = (float(x) for x in t["ε (clip), β (KL k3)"].split(","))
    lr, schedule = (x.strip() for x in t["LR"].split(","))
    assert (c.batch_prompts, c.group_size) == (prompts, group)
    assert c.temperature == _num(t["rollout temperature"]) and c.block_length == _num(t["block size"])
    assert c.shrink == _num(t["shrink s"]) and (c.epsilon, c.beta) == (eps, beta)
    assert c.lr == float(lr) and schedule == "cosine"
    # the config's cosine has min_lr_scale 1.0 (issue 17's audit of rl_llada.yaml): a constant LR
    assert c.lr_schedule == "constant" and "min_lr_scale 1.0" in describe_source(c, "optim.lr_schedule")


def describe_source(cfg, path: str) -> str:
    from dlm_bench.config import describe
    return {p: src for p, _, _, src in describe(type(cfg))}[path]


def test_tabom_defaults_within_the_published_settings():
    t = {k: v[0] for k, v in _table("### 5.2 Setup").items()}
    c = get_method("tabom").Config()
    tune, settings = t["Fine-tuning"], t["TABOM settings"]
    assert c.lora_r == int(re.search(r"LoRA rank (\d+)", tune).group(1))
    assert c.lr == float(re.search(r"LR ([\d.e-]+)", tune).group(1))
    assert c.rank_window == int(re.search(r"W = (\d+)", settings).group(1))
    grid = {name: {float(x) for x in re.search(name + r"[^{]*\{([^}]*)\}", settings).group(1).split(",")}
            for name in ("margin", "ranking weight")}
    assert c.rank_margin in grid["margin"] and c.rank_weight in grid["ranking weight"]
