"""Memory of LLaDA-8B and Dream-7B at the paper's settings, measured with `dlm-bench memory`'s tracer
(fake tensors on the CPU: allocated bytes, nothing allocated, no GPU): the tables of bench/README.md
and docs/memory.md.

Rows: every registered training method at its defaults on GSM8K (configs/paper.yaml trains every method
at its recipe defaults), one micro-batch, P 256 tokens of prompt, two measured updates of at most
`--chunks` backward chunks each (the peak repeats from the second chunk on), then the rollout sampler
step; the evaluation sampler step at the paper's length 512 for batches of 16 and 64 rows; with
`--baseline REV`, the same evaluation steps with the sampler (and Dream's logit shift) of an older
commit, for the before/after ratio. Each configuration runs in a fresh process, one at a time; results
are appended to `--json` as they come, and a rerun skips what is there (a killed run loses nothing).

Run (CPU-heavy: minutes per row on 2 cores):
  nice -n 15 .venv/bin/python bench/memory_8b.py [--models llada,dream] [--methods trafl,espo,...]
      [--evals 16,64] [--baseline 866874c] [--world 8] [--json bench/memory_8b.json] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {"llada": "llada-8b-instruct-maskfix", "dream": "dream-v0-instruct-7b"}
# Block-diffusion families: their loader landed in the same turn as this script; no row measured yet.
PENDING = {"trado": "trado-8b-instruct", "llada2": "llada2-mini"}
GIB = 2 ** 30


def snapshot(name: str) -> str:
    from dlm_bench.tasks.data import models_dir
    root = models_dir()
    if root is None or not (root / name / "config.json").is_file():
        sys.exit(f"model snapshot {name} not found ($DLM_BENCH_MODELS or ../shared/models)")
    return str(root / name)


# ----------------------------------------------------------------------------- child

def _baseline_sampler(rev: str):
    """The sampler module and the shifted-logits rule of commit `rev` (loaded from git, not imported)."""
    import importlib.util
    import tempfile

    import torch

    from dlm_bench.models import DLM
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:dlm_bench/sampler.py"], capture_output=True,
                         text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "sampler_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("sampler_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampler_baseline"] = module          # dataclasses look their module up
    spec.loader.exec_module(module)

    def logits(self, input_ids, attention_mask=None, **model_kw):      # before: the shift made a copy
        out = self._forward(input_ids, attention_mask, **model_kw)
        return torch.cat([out[:, :1], out[:, :-1]], dim=1) if self.shift_logits else out

    DLM.logits = logits
    return module


def _probes(model: str) -> dict:
    """`probe_answers` once per model snapshot (a tiny model built and loaded: seconds of CPU each)."""
    import tempfile

    from dlm_bench.memory.measure import probe_answers
    cache = Path(tempfile.gettempdir()) / "dlm-bench-memory-8b-probes.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if model not in known:
        known[model] = probe_answers(model)
        cache.write_text(json.dumps(known))
    return known[model]


def child(spec: dict) -> dict:
    import dlm_bench.memory.measure as measure
    from dlm_bench.memory.measure import measure_eval, measure_training
    from dlm_bench.sampler import SamplerConfig
    from dlm_bench.training.loop import TrainConfig
    model = snapshot(MODELS[spec["model"]])
    probes = _probes(model)
    t0 = time.time()
    if spec["kind"] == "eval":
        if spec.get("baseline"):
            measure.sample = _baseline_sampler(spec["baseline"]).sample
        scfg = SamplerConfig(gen_length=512, block_length=32, steps=512, temperature=0.9)
        m = measure_eval(model, scfg, rows=spec["rows"], prompt_length=256, probes=probes)
    else:
        sets = dict(spec.get("sets", {}))
        loop = {k: sets.pop(k) for k in list(sets) if k in TrainConfig.__dataclass_fields__}   # micro_batch_size
        cfg = TrainConfig(method=spec["method"], task="gsm8k", model=model, overrides=sets, **loop)
        m = measure_training(cfg, prompt_length=256, world=spec.get("world", 1), chunks=spec.get("chunks"),
                             probes=probes)
    return {"stages": [{"name": s.name, "peak": s.peak, "start": s.start, "by_kind": s.by_kind,
                        "largest": [[x.what, x.nbytes] for x in s.largest]} for s in m.stages],
            "notes": m.notes, "placeholders": m.placeholders, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- parent

def key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


# The paper's methods first (configs/paper.yaml), then the baselines. JustGRPO scores every completion one
# token at a time (G forward rows per completion, all kept for one backward): measured at
# micro_batch_size 1, its smallest setting.
ORDER = ("trafl", "espo", "tabom", "tracerl", "justgrpo", "diffu_grpo", "wd1", "spg")
PAPER = ("trafl", "espo", "tabom", "tracerl", "justgrpo")
SETS = {"justgrpo": {"micro_batch_size": 1}}


def _train_specs(model: str, method: str, args, world: int = 1) -> list[dict]:
    spec = {"kind": "train", "model": model, "method": method, "chunks": args.chunks}
    if world > 1:
        spec["world"] = world
    out = [{**spec, "sets": SETS[method]} if method in SETS else spec]
    if method == "trafl" and world == 1:       # the figure: TraFL at the longer paper length
        out.append({**spec, "sets": {"gen_length": 512, "steps": 512}})
    return out


def plan(args) -> list[dict]:
    from dlm_bench.methods import get_method, method_names
    methods = [m for m in method_names() if get_method(m).trains] if args.methods == "all" else args.methods.split(",")
    methods = sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    full = [m for m in methods if args.world > 1 and get_method(m).Config().lora.r == 0]
    models = args.models.split(",")
    out = []
    for model in models:
        for rows in [int(r) for r in args.evals.split(",") if r]:
            out.append({"kind": "eval", "model": model, "rows": rows})
            if args.baseline:
                out.append({"kind": "eval", "model": model, "rows": rows, "baseline": args.baseline})
    for group in ([m for m in methods if m in PAPER], [m for m in methods if m not in PAPER]):
        for model in models:
            for method in group:
                out += _train_specs(model, method, args)
            for method in (m for m in full if m in group):
                out += _train_specs(model, method, args, args.world)
    return out


def run_all(args) -> dict:
    path = Path(args.json)
    done = json.loads(path.read_text()) if path.is_file() else {}
    for spec in plan(args):
        k = key(spec)
        if k in done:
            continue
        print(f"measuring {k} ...", flush=True)
        r = subprocess.run([sys.executable, __file__, "--child", k], capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("{")]
        if r.returncode or not line:
            print(f"  failed:\n{r.stderr[-3000:]}", flush=True)
            continue
        done[k] = json.loads(line[-1])
        path.write_text(json.dumps(done, indent=1) + "\n")
        top = max(done[k]["stages"], key=lambda s: s["peak"])
        print(f"  peak {top['peak'] / GIB:.2f} GiB in {top['name']} ({done[k]['seconds']} s)", flush=True)
    return done


def _gib(n) -> str:
    return f"{n / GIB:.2f}"


def _stage(r: dict, prefix: str) -> dict:
    return next(s for s in r["stages"] if s["name"].startswith(prefix))


def _fits(peak: int) -> str:
    from dlm_bench.models.footprint import overhead
    need = overhead(peak)
    return f"{need / 1e9:.0f} GB {'yes' if need <= 80e9 else '**no**'}"


def eval_table(results: dict, models) -> list[str]:
    rows = ["| model | rows | before: sampler of 866874c | after | after / before | largest tensors at the peak (after) |",
            "|---|---|---|---|---|---|"]
    for model in models:
        for k, r in results.items():
            spec = json.loads(k)
            if spec["kind"] != "eval" or spec["model"] != model or spec.get("baseline"):
                continue
            before = results.get(key({**spec, "baseline": "866874c"}))
            step, top = _stage(r, "eval"), ""
            top = "; ".join(f"`{w}` {_gib(n)}" for w, n in step["largest"][:2])
            was = _stage(before, "eval")["peak"] if before else None
            rows.append(f"| {model} | {spec['rows']} | {_gib(was) if was else 'not run'} | {_gib(step['peak'])} | "
                        f"{step['peak'] / was:.2f} | {top} |" if was else
                        f"| {model} | {spec['rows']} | not run | {_gib(step['peak'])} | | {top} |")
    return rows


def train_table(results: dict, models, world: int = 1) -> list[str]:
    rows = ["| model | method | trains | window | resident | prepare | update 1 | update 2 | rollout step (rows) "
            "| peak + assumed overhead, fits 80 GB? |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        for k, r in results.items():
            spec = json.loads(k)
            if spec["kind"] != "train" or spec["model"] != model or spec.get("world", 1) != world:
                continue
            notes = r["notes"]
            trains = "LoRA" if "LoRA" in notes[0] else "full"
            window = notes[1].split("P 256 + ")[1].split(",")[0]
            sets = ", ".join(f"{a} {b}" for a, b in spec.get("sets", {}).items() if a != "steps")
            roll = _stage(r, "rollout")
            rows_n = roll["name"].split("(")[1].split(" ")[0]
            peak = max(s["peak"] for s in r["stages"])
            if not _backward_ran(r):
                rows.append(f"| {model} | {spec['method']} | {trains} | {window} | | | no backward ran on the "
                            f"synthetic micro-batch (no gradients or optimizer state at any stage): not measured "
                            f"| | {_gib(roll['peak'])} ({rows_n}) | |")
                continue
            rows.append(f"| {model} | {spec['method']}{' (' + sets + ')' if sets else ''} | {trains} | {window} | "
                        f"{_gib(_stage(r, 'prepare 2')['start'])} | {_gib(_stage(r, 'prepare 2')['peak'])} | "
                        f"{_gib(_stage(r, 'update 1')['peak'])} | {_gib(_stage(r, 'update 2')['peak'])} | "
                        f"{_gib(roll['peak'])} ({rows_n}) | {_fits(peak)} |")
    return rows


def _backward_ran(r: dict) -> bool:
    """Whether an update stage held gradients or optimizer state (a method may skip the synthetic batch,
    e.g. when its filter drops every group): without them the row measures no update."""
    return any(k in s["by_kind"] for s in r["stages"] if s["name"].startswith("update")
               for k in ("gradients", "optimizer state"))


def _dims(model: str) -> tuple[int, int]:
    cfg = json.loads((Path(snapshot(MODELS[model])) / "config.json").read_text())
    return (cfg.get("num_hidden_layers") or cfg["n_layers"]), (cfg.get("hidden_size") or cfg["d_model"])


def update_coefficients(results: dict) -> dict[str, float]:
    """`footprint.UPDATE_BYTES`: per method, the larger over the models of what its steady-state update
    (less one set of in-flight gradients) or `prepare` adds to the resident state, per (completion in a
    backward chunk x token x layers x hidden width), at the method's defaults."""
    from dlm_bench.methods import get_method
    from dlm_bench.training.loop import TrainConfig
    out: dict[str, float] = {}
    for k, r in results.items():
        spec = json.loads(k)
        if spec["kind"] != "train" or spec.get("world", 1) != 1 or spec.get("sets", {}).get("gen_length") \
                or not _backward_ran(r):
            continue
        mcfg = get_method(spec["method"]).config_for("gsm8k", dict(spec.get("sets", {})))
        mbs = spec.get("sets", {}).get("micro_batch_size", TrainConfig.micro_batch_size)
        layers, hidden = _dims(spec["model"])
        upd, prep = _stage(r, "update 2"), _stage(r, "prepare 2")
        above = max(upd["peak"] - upd["by_kind"].get("trainable parameters", 0), prep["peak"]) - prep["start"]
        per = max(0, above) / (mbs * (256 + mcfg.rollout.gen_length) * layers * hidden)
        out[spec["method"]] = max(out.get(spec["method"], 0.0), round(per, 2))
    return out


def tables(results: dict) -> str:
    models = sorted({json.loads(k)["model"] for k in results}, key=list(MODELS).index)
    out = ["Sampler step, evaluation (plain model, P 256 + G 512, block 32, T 0.9, float64 noise), GiB of "
           "fake-tensor allocated bytes:", ""] + eval_table(results, models)
    out += ["", "Training at each method's defaults (GSM8K recipe, P 256, one micro-batch, two updates of at most "
            "2 backward chunks, then the rollout sampler step), GiB of fake-tensor allocated bytes:", ""]
    out += train_table(results, models)
    worlds = sorted({json.loads(k).get("world", 1) for k in results} - {1})
    for w in worlds:
        out += ["", f"Full fine-tuning on rank 0 of {w} (FSDP2), GiB of fake-tensor allocated bytes:", ""]
        out += train_table(results, models, w)
    out += ["", f"footprint.UPDATE_BYTES = {update_coefficients(results)}"]
    out += ["", "| " + " | ".join(f"{name} ({snap})" for name, snap in PENDING.items())
            + " |", "|---|---|", "| not measured yet (`--models` takes only llada, dream) | not measured yet |"]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--models", default="llada,dream")
    p.add_argument("--methods", default="all")
    p.add_argument("--evals", default="16,64")
    p.add_argument("--baseline", default=None, help="git revision whose sampler is the before of the eval rows")
    p.add_argument("--chunks", type=int, default=2, help="backward chunks per measured update")
    p.add_argument("--world", type=int, default=1, help="also measure full fine-tuning on rank 0 of this many")
    p.add_argument("--json", default=str(ROOT / "bench" / "memory_8b.json"))
    p.add_argument("--markdown", action="store_true", help="print the tables from --json, measure nothing")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if not args.markdown:
        run_all(args)
    print(tables(json.loads(Path(args.json).read_text())))


if __name__ == "__main__":
    main()
