"""Offline rollouts (`rollout.source = "offline"`, TABOM's recipe): the base model's own decodes of the
training prompts, sampled once before the first update and reused every epoch.

`collect` writes them to OUT/trajectories/ in the evaluation store's append-only format (one record
per (problem index, sample), flushed per chunk), so a run killed while collecting resumes where it
stopped; it samples only the problems the run's steps will visit. Collection always finishes before
the first update, so the policy that samples is the base model (a fresh LoRA adapter leaves it
unchanged). Sample j of problem i is seeded by (seed, i, j) alone, so the set does not depend on the
world size or on the order the steps visit the problems. Under torchrun each rank collects a share
into its own shard and then reads them all."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dlm_bench.config import derive_seed, stable_hash
from dlm_bench.errors import UserError
from dlm_bench.training.schedule import problems_visited
from dlm_bench.runs.store import Store


@dataclass
class Trajectory:
    """One stored completion, shaped like the sampler's output for the training loop."""
    text: str
    tokens: list
    step_map: list
    reward: float
    nfe: int = 0              # replaying costs no forward passes
    scored: int | None = None  # positions scored from the window's start (None: the whole window)


def _identity(run) -> str:
    p, cfg = run.plan, run.cfg
    ident = {"model": str(Path(cfg.model).resolve()), "seed": cfg.seed, "task": cfg.task,
             "rollout": dataclasses.asdict(p.mcfg.rollout), "sampler": dict(cfg.sampler)}
    if p.reward_kind != "binary":  # stored rewards depend on it; binary keeps the hashes of older runs
        ident["reward"] = p.reward_kind
    return stable_hash(ident)


def collect(run) -> dict[tuple[int, int], Trajectory]:
    """Sample (or finish sampling) the run's offline trajectories; returns them by (problem, sample)."""
    from dlm_bench.sampler import make_generators, sample
    from dlm_bench.tasks import training_rewards
    from dlm_bench.training.parallel import gathered
    p, cfg, d = run.plan, run.cfg, run.d
    r, G = p.mcfg.rollout, p.mcfg.rollout.group_size
    folder = Path(cfg.out) / "trajectories"
    store = Store(folder, rank=None if d.world == 1 else d.rank).open()
    key = _identity(run)
    done = {(int(k[2]), int(k[3])) for k in store.done_keys("trajectories") if k[1] == key}
    want = problems_visited(len(p.problems), r.batch_prompts, cfg.seed, p.steps)
    todo = [(i, j) for i in want[d.rank::d.world] for j in range(G) if (i, j) not in done]
    if todo and run.step > 0:
        raise UserError(f"{folder} lacks {len(todo)} trajectories of a run already at step {run.step}; "
                        f"they must come from the base model: start the run again in a new --out")
    if todo:
        run.dlm.model.eval()
        bar = tqdm(total=len(todo), desc=f"trajectories {cfg.method}", unit="sample", disable=not d.main)
        with gathered(run.dlm.model):
            for s in range(0, len(todo), cfg.rollout_chunk):
                chunk = todo[s:s + cfg.rollout_chunk]
                seeds = [derive_seed(cfg.seed, 0x7AB, i, j) for i, j in chunk]
                comps = sample(run.dlm, [run.prompt_ids(i) for i, _ in chunk], p.scfg,
                               make_generators(seeds, run.dlm.device))
                rewards = training_rewards(p.task, [p.problems[i] for i, _ in chunk], [c.text for c in comps],
                                           p.reward_kind)
                store.append("trajectories", [
                    {"method": cfg.method, "task": cfg.task, "temperature": r.temperature,
                     "gen_length": r.gen_length, "problem_id": str(i), "sample": j, "seed": sd,
                     "config_hash": key, "text": c.text, "tokens": list(map(int, c.tokens)),
                     "step_map": list(map(int, c.step_map)), "reward": float(rw), "nfe": int(c.nfe)}
                    for (i, j), sd, c, rw in zip(chunk, seeds, comps, rewards)])
                bar.update(len(chunk))
        bar.close()
    d.barrier()
    return {(int(rec["problem_id"]), int(rec["sample"])): Trajectory(rec["text"], rec["tokens"], rec["step_map"],
                                                                      float(rec["reward"]))
            for rec in Store(folder).read("trajectories") if rec["config_hash"] == key}
