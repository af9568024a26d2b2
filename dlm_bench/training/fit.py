"""`train` on a GPU refuses settings the memory model predicts will not fit (`models/footprint.py`,
docs/memory.md): the rollout sampler call and the update of the first step, each on top of what a
run keeps resident, at the longest prompt of the training split. Nothing happens on a CPU, and
`--no-memory-check` (`memory_check=false`) skips it."""
from __future__ import annotations

from dlm_bench.models.footprint import (refuse_unless_fits, sampler_bytes, training_resident_bytes,
                                        update_bytes)


def check_fits(run, rows: int) -> None:
    """`rows`: completions in one rollout sampler call (`loop.sampler_rows`)."""
    dlm, p, cfg = run.dlm, run.plan, run.cfg
    if dlm.device.type != "cuda" or not cfg.memory_check:
        return
    from dlm_bench.training.parallel import is_sharded
    width = max(len(run.prompt_ids(i)) for i in range(len(p.problems))) + p.scfg.gen_length
    shards = run.d.world if is_sharded(dlm.model) else 1
    resident = training_resident_bytes(dlm, run.lora, run.ref is not None and not run.lora, shards)
    rollout = resident + sampler_bytes(dlm, rows, width, p.scfg.block_length, p.scfg.noise_dtype)
    step = resident + update_bytes(dlm, cfg.method, cfg.micro_batch_size, width) // shards
    if rollout >= step:
        refuse_unless_fits(rollout, dlm.device, f"a rollout sampler call of {rows} completions of {width} tokens",
                           "lower rollout_chunk or micro_prompts (--set)", "--no-memory-check")
    else:
        refuse_unless_fits(step, dlm.device, f"an update with backward chunks of {cfg.micro_batch_size} "
                           f"completions of {width} tokens", "lower micro_batch_size (--set)", "--no-memory-check")
