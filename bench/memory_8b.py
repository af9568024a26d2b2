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
# Block-diffusion families join once their loader has landed (the other issue): their rows are
# "pending the block-diffusion loader" in the tables until then.
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


def child(spec: dict) -> dict:
    import dlm_bench.memory.measure as measure
    from dlm_bench.memory.measure import measure_eval, measure_training, probe_answers
    from dlm_bench.sampler import SamplerConfig
    from dlm_bench.training.loop import TrainConfig
    model = snapshot(MODELS[spec["model"]])
    probes = probe_answers(model)
    t0 = time.time()
    if spec["kind"] == "eval":
        if spec.get("baseline"):
            measure.sample = _baseline_sampler(spec["baseline"]).sample
        scfg = SamplerConfig(gen_length=512, block_length=32, steps=512, temperature=0.9)
        m = measure_eval(model, scfg, rows=spec["rows"], prompt_length=256, probes=probes)
    else:
        cfg = TrainConfig(method=spec["method"], task="gsm8k", model=model, overrides=dict(spec.get("sets", {})))
        m = measure_training(cfg, prompt_length=256, world=spec.get("world", 1), chunks=spec.get("chunks"),
                             probes=probes)
    return {"stages": [{"name": s.name, "peak": s.peak, "start": s.start, "by_kind": s.by_kind,
                        "largest": [[x.what, x.nbytes] for x in s.largest]} for s in m.stages],
            "notes": m.notes, "placeholders": m.placeholders, "seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- parent

def key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


# Cheapest and most asked first. JustGRPO scores every completion one token at a time (G forward rows
# per completion, all kept for one backward): measured at micro_batch_size 1, its fastest setting.
ORDER = ("trafl", "espo", "tabom", "tracerl", "diffu_grpo", "wd1", "spg", "justgrpo")
SETS = {"justgrpo": {"micro_batch_size": 1}}


def plan(args) -> list[dict]:
    from dlm_bench.methods import get_method, method_names
    methods = [m for m in method_names() if get_method(m).trains] if args.methods == "all" else args.methods.split(",")
    methods = sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    models = args.models.split(",")
    out = []
    for model in models:
        for rows in [int(r) for r in args.evals.split(",") if r]:
            out.append({"kind": "eval", "model": model, "rows": rows})
            if args.baseline:
                out.append({"kind": "eval", "model": model, "rows": rows, "baseline": args.baseline})
    for method in methods:
        for model in models:
            spec = {"kind": "train", "model": model, "method": method, "chunks": args.chunks}
            out.append({**spec, "sets": SETS[method]} if method in SETS else spec)
        if method == "trafl":       # the figure: TraFL at the longer paper length
            out += [{"kind": "train", "model": model, "method": "trafl", "chunks": args.chunks,
                     "sets": {"gen_length": 512, "steps": 512}} for model in models]
    for method in (m for m in methods if args.world > 1 and get_method(m).Config().lora.r == 0):
        for model in models:
            spec = {"kind": "train", "model": model, "method": method, "chunks": args.chunks, "world": args.world}
            out.append({**spec, "sets": SETS[method]} if method in SETS else spec)
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


def tables(results: dict) -> str:
    return json.dumps({k: max(v["stages"], key=lambda s: s["peak"])["peak"] / GIB for k, v in results.items()}, indent=1)


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
