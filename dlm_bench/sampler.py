"""LLaDA decoding (ML-GSAI/LLaDA `generate.py`), re-written for batch invariance and trajectories.
Block-diffusion models (block-causal attention: SDAR/TraDo, LLaDA2) decode in `block_sampler.py`,
through the same `sample()`.

The answer window of `gen_length` masks is split into semi-autoregressive blocks; `steps` are shared
equally by the blocks and each step reveals a precomputed number of tokens (as even as possible,
remainder first). A step predicts every position, samples candidates by Gumbel-max at temperature T
in float64 (T = 0: argmax), and commits the most confident masked positions of the current block
(`low_confidence`: untempered probability of the sampled token; `random`: uniform scores).
`noise_dtype="bfloat16"` (or "float32") instead draws the noise and computes that softmax in that
dtype, as ESPO's rollouts do in the model's bf16 (see `_step`); float64 stays the default.

Differences from the reference, none of which changes a completion's text:
- Every row has its own `torch.Generator` and draws noise over exactly the positions it would have
  alone, so a row's completion does not depend on the batch it is in, and at batch 1 the random
  stream is consumed exactly as the reference consumes the global one.
- A row stops once an end-of-text token is committed with everything before it decided (the text is
  cut there anyway); the rest of its window is filled with end-of-text, as LLaDA's SFT data pads.
  `stop_at_eos=False` reproduces the reference's tokens after end-of-text too.
- Each completion records the step at which every token was unmasked and its number of forward
  passes (NFE).
- With more steps per block than the block has tokens, the reference's last steps of each block
  reveal nothing. Their forward pass is skipped, but their random draws (which depend only on the
  logits' shape) are still made, so the next block sees the reference's random stream
  (`_idle_draws`). Such steps count no NFE and no step in the step map.

`cache="prefix"|"dual"` (Fast-dLLM's block KV cache, `dlm_bench/models/kv_cache.py`) changes completions:
a block's first step is a full pass, exactly as without the cache; its other steps run the model
over a window only (NFE still counts one per step; their FLOPs are in bench/decoding.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from dlm_bench import block_sampler
from dlm_bench.config import knob
from dlm_bench.decoders import SCHEDULES, block_schedule, eos_factor, lowest, max_ascending_steps
from dlm_bench.decoders import transfer_schedule  # noqa: F401  (re-exported: LLaDA's schedule)
from dlm_bench.errors import UserError

REMASKING = ("low_confidence", "random", "sequential")   # sequential: block-diffusion models only
ORDERS = ("diffusion", "left_to_right")
CACHES = ("none", "prefix", "dual")
NOISE_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


LLADA = "ML-GSAI/LLaDA generate.py"


@dataclass(frozen=True)
class SamplerConfig:
    """How completions are decoded (`sampler.NAME` in `--set`; docs/sampler.md)."""
    gen_length: int = knob(256, "completion window in tokens", source=LLADA, low=1)
    block_length: int = knob(32, "semi-autoregressive block length (clamped to gen_length)", source=LLADA, low=1)
    steps: int = knob(256, "denoising steps over the whole window", source=LLADA, low=1)
    temperature: float = knob(0.0, "Gumbel-max sampling temperature (0: greedy)", source=LLADA, low=0.0)
    remasking: str = knob("low_confidence", "which masked tokens a step commits ('sequential': block-diffusion "
                          "models only, TraDo's)", source=LLADA, choices=REMASKING)
    order: str = knob("diffusion", "'left_to_right': one token per step, in order (JustGRPO rollouts)",
                      source=LLADA, choices=ORDERS)
    cfg_scale: float = knob(0.0, "unsupervised classifier-free guidance (prompt masked)", source=LLADA, low=0.0)
    threshold: float | None = knob(None, "parallel decoding: commit every token above this confidence (block-"
                                   "diffusion models: at least the schedule's count per step)",
                                   source="NVlabs/Fast-dLLM", low=0.0, high=1.0)
    logits_eos_inf: bool = knob(False, "never sample end-of-text (LLaDA's HumanEval setting)", source=LLADA)
    confidence_eos_eot_inf: bool = knob(False, "LLaDA's flag, as its code behaves (see _suppressed_ids)",
                                        source=LLADA)
    stop_at_eos: bool = knob(True, "stop a row once an end-of-text is committed with everything before it "
                                   "decided, and fill the rest with end-of-text", source="harness default "
                             "(the text is cut there anyway; False reproduces the reference's later tokens)")
    cache: str = knob("none", "block KV cache: 'prefix' or 'dual' (approximate; models/kv_cache.py); "
                      "full attention only: block-diffusion models always cache finished blocks exactly",
                      source="NVlabs/Fast-dLLM; off: exact decoding", choices=CACHES)
    noise_dtype: str = knob("float64", "dtype of the Gumbel noise (and of the confidence softmax unless float64)",
                            source=LLADA + " (float64)", choices=tuple(NOISE_DTYPES))
    schedule: str = knob("uniform", "tokens revealed per step of a block: 'uniform' (even, remainder first) | "
                                    "'ascending' (2^i at step i, the rest at the last: CJ-GRPO's ascending step "
                                    "sizes; a block of 2^S tokens in S steps)", choices=SCHEDULES,
                         source=LLADA + " (uniform); ascending: yjyddq/EOSER-ASS-RL eval/generate.py")
    eos_gamma: float | None = knob(None, "EOSER: scale an end-of-text candidate's confidence by a factor rising "
                                         "from this to 1 over the steps, so end-of-text is committed late "
                                         "(None: off; the paper uses 0.4, and 0.01 with 'ascending')",
                                   source="off, as LLaDA; EOSER: yjyddq/EOSER-ASS-RL eval/generate.py", low=0.0,
                                   high=1.0)
    rcr: bool = knob(False, "running-confidence remasking (MDPO): every step commits all masked positions up to "
                            "the block's end, then masks again the committed tokens of lowest confidence; tokens "
                            "stay revisable to the last step, so rows never stop early (stop_at_eos has no "
                            "effect)",
                     source="off, as LLaDA; RCR: autonomousvision/mdpo src/mdlm_generation_utils.py")

    def hashed(self) -> dict:
        """The fields as they enter a config hash: each field added after the first release is left out
        while it has its default (`cache` "none", `noise_dtype` "float64", `schedule` "uniform",
        `eos_gamma` None, `rcr` False), so every hash (and so every sweep seed) from before it existed
        stays what it was."""
        out = asdict(self)
        for name, default in LATER_FIELDS.items():
            if out[name] == default:
                del out[name]
        return out

    def resolved(self) -> "SamplerConfig":
        """Validate; left-to-right order is LLaDA decoding with blocks of one token and one step each."""
        for name in ("gen_length", "block_length", "steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if self.remasking not in REMASKING:
            raise UserError(f"remasking must be one of {REMASKING}, got {self.remasking!r}")
        if self.order not in ORDERS:
            raise UserError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise UserError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.noise_dtype not in NOISE_DTYPES:
            raise UserError(f"noise_dtype must be one of {tuple(NOISE_DTYPES)}, got {self.noise_dtype!r}")
        if self.cache not in CACHES:
            raise UserError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if self.cache != "none" and self.cfg_scale > 0:
            raise UserError(f"cache={self.cache} does not support classifier-free guidance (cfg_scale > 0)")
        self._check_decoders()
        if self.order == "left_to_right":
            return SamplerConfig(**{**asdict(self), "block_length": 1, "steps": self.gen_length,
                                    "order": "diffusion"})
        if self.gen_length % self.block_length:
            raise UserError(f"block_length {self.block_length} does not divide gen_length {self.gen_length}")
        blocks = self.gen_length // self.block_length
        if self.steps % blocks:
            raise UserError(f"steps {self.steps} is not divisible by the number of blocks {blocks}")
        most = max_ascending_steps(self.block_length)
        if self.schedule == "ascending" and self.steps // blocks > most:
            raise UserError(f"schedule 'ascending' reveals 2^i tokens at step i: a block of {self.block_length} "
                            f"tokens takes at most {most} steps, got {self.steps // blocks} per block")
        return self

    def _check_decoders(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.eos_gamma is not None and not 0.0 <= self.eos_gamma <= 1.0:
            raise UserError(f"eos_gamma must be in [0, 1] (or None), got {self.eos_gamma}")
        if self.eos_gamma is not None and self.remasking != "low_confidence":
            raise UserError("eos_gamma scales confidences: it needs remasking=low_confidence")
        if self.threshold is not None and (self.schedule != "uniform" or self.rcr):
            raise UserError("threshold decoding has no schedule: it cannot be combined with schedule='ascending' "
                            "or rcr")
        if self.rcr and self.cache != "none":
            raise UserError(f"rcr re-masks earlier tokens, which cache={self.cache} keeps fixed: use cache=none")


# fields added after the first release, with their defaults: a config hash leaves them out at these
LATER_FIELDS = {"cache": "none", "noise_dtype": "float64", "schedule": "uniform", "eos_gamma": None, "rcr": False}


@dataclass
class Completion:
    tokens: list[int]       # the whole answer window
    text: str               # decoded and cut at end-of-text
    step_map: list[int]     # decoding step (0-based, global) at which each window token was unmasked
    nfe: int                # forward passes spent on this row (CFG counts two per step)
    length: int             # tokens before the first end-of-text
    unknown: int = 0        # ids in the text part that the tokenizer has no token for (left out of `text`)


def make_generators(seeds: list[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample_seeded(dlm, prompts: list[list[int]], cfg: SamplerConfig, seeds: list[int], chunk: int,
                  **kw) -> list[Completion]:
    """`sample` in calls of at most `chunk` rows, row i drawing from a generator seeded by seeds[i] (a
    row's completion does not depend on the chunking)."""
    out = []
    for s in range(0, len(prompts), chunk):
        out += sample(dlm, prompts[s:s + chunk], cfg, make_generators(seeds[s:s + chunk], dlm.device), **kw)
    return out


@dataclass
class Partial:
    """A decode to resume (d-TreeRPO's branches): every row's window and step map after `step` global
    steps (mask id and -1 where still masked), as an earlier `sample(..., until=step)` left them."""
    tokens: torch.Tensor      # [B, G]
    step_map: torch.Tensor    # [B, G]
    step: int


@dataclass
class StepView:
    """What one denoising step did, for a recorder (`sample(..., recorder=f)` calls f(view) after each
    step): MDPO and EGSPO train on intermediate states and predictions. Tensors are on the model's
    device; `logits` is the step's forward pass over the answer windows (after CFG and logits_eos_inf)."""
    rows: torch.Tensor        # [n] batch rows decoded at this step
    steps: torch.Tensor       # [n] their global step index
    before: torch.Tensor      # [n, G] windows before the step
    after: torch.Tensor       # [n, G] windows after it
    logits: torch.Tensor      # [n, G, V]
    cols: slice               # window columns the step chose from (the block; with rcr, the window to its end)
    candidates: torch.Tensor  # [n, len(cols)] the sampled candidates x0 there
    scores: torch.Tensor      # [n, len(cols)] their confidence (with rcr: the running confidence after the step)


@torch.no_grad()
def sample(dlm, prompts: list[list[int]], cfg: SamplerConfig, generators: list[torch.Generator],
           progress=None, resume: Partial | None = None, until: int | None = None,
           recorder=None) -> list[Completion]:
    """Decode one completion per prompt (token-id lists); row i draws its randomness from generators[i].
    `resume`/`until` decode global steps [resume.step, until) only; `recorder` sees every step."""
    if dlm.family.block_causal and cfg.order == "left_to_right":
        # one token per step in order, inside the model's blocks: its `sequential` decoding (JustGRPO's order)
        cfg = replace(cfg, order="diffusion", remasking="sequential", steps=cfg.gen_length)
    cfg = cfg.resolved()
    if len(generators) != len(prompts):
        raise ValueError("one generator per prompt is required")
    if (resume is not None or until is not None or recorder is not None) and (cfg.cache != "none" or
                                                                                cfg.threshold is not None):
        raise UserError("partial decodes and step recorders need the fixed schedule without a cache")
    if dlm.family.block_causal:     # SDAR/TraDo, LLaDA2: block_sampler.py
        block_sampler.check(cfg, dlm.family)
        if resume is not None or until is not None or recorder is not None or \
                (cfg.schedule, cfg.eos_gamma, cfg.rcr) != ("uniform", None, False):
            raise UserError(f"schedule/eos_gamma/rcr, partial decodes and step recorders are not available for "
                            f"block-diffusion models ({dlm.family.name})")
        tokens, steps_map, nfe = block_sampler.decode(dlm, prompts, cfg, generators, progress)
    elif cfg.remasking == "sequential":
        raise UserError("remasking=sequential is block-diffusion decoding (TraDo/SDAR, LLaDA2); this model has "
                        "full attention: use low_confidence or random")
    else:
        tokens, steps_map, nfe = _decode_groups(dlm, prompts, cfg, generators, progress, resume, until, recorder)
    out = []
    for i in range(len(prompts)):
        window = tokens[i].tolist()
        text, unknown = dlm.decode_completion(window)
        length = dlm.completion_length(window)
        out.append(Completion(window, text, steps_map[i].tolist(), int(nfe[i]), length, unknown))
    return out


def _decode_groups(dlm, prompts, cfg: SamplerConfig, gens, progress, resume, until, recorder):
    """A cached pass cannot strip padding the way `DLM` does for a model that ignores the attention
    mask, so such a model decodes each prompt length on its own (rows are independent anyway)."""
    lengths = [len(p) for p in prompts]
    if cfg.cache == "none" or dlm.honours_padding or len(set(lengths)) == 1:
        return _decode(dlm, prompts, cfg, gens, progress, resume, until, recorder)
    tokens = torch.zeros((len(prompts), cfg.gen_length), dtype=torch.long)
    step_map, nfe = torch.zeros_like(tokens), torch.zeros(len(prompts), dtype=torch.long)
    for n in sorted(set(lengths)):
        idx = [i for i, m in enumerate(lengths) if m == n]
        t, s, f = _decode(dlm, [prompts[i] for i in idx], cfg, [gens[i] for i in idx], progress, None, None, None)
        tokens[idx], step_map[idx], nfe[idx] = t, s, f
    return tokens, step_map, nfe


@dataclass
class _Run:
    """The running state of one decode: prompts left-padded to P, then the answer windows."""
    x: torch.Tensor           # [B, P + G] ids
    att: torch.Tensor         # [B, P + G] attention mask
    pad: list[int]            # left padding of each row
    gens: list
    P: int
    step_map: torch.Tensor    # [B, G]
    row_step: torch.Tensor    # [B] steps taken (per row: threshold decoding varies)
    done: torch.Tensor        # [B] stopped at end-of-text
    running: torch.Tensor     # [B, G] rcr's running confidence of each committed token
    nfe: torch.Tensor
    vocab: int | None = None  # the logits' last dimension, known after the first forward pass
    total: int = 0            # steps taken over all blocks (progress)

    @property
    def width(self) -> int:
        return self.x.shape[1]

    @classmethod
    def begin(cls, dlm, prompts, cfg: SamplerConfig, gens, resume: Partial | None) -> "_Run":
        device, G = dlm.device, cfg.gen_length
        B, P = len(prompts), max(len(p) for p in prompts)
        x = torch.full((B, P + G), dlm.mask_id, dtype=torch.long, device=device)
        att = torch.zeros((B, P + G), dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            x[i, :P - len(p)] = dlm.pad_id
            x[i, P - len(p):P] = torch.tensor(p, dtype=torch.long, device=device)
            att[i, P - len(p):] = 1
        step_map = torch.full((B, G), -1, dtype=torch.long, device=device)
        row_step = torch.zeros(B, dtype=torch.long, device=device)
        if resume is not None:
            x[:, P:] = resume.tokens.to(device)
            step_map = resume.step_map.to(device).clone()
            row_step += resume.step
        done = ~(x[:, P:] == dlm.mask_id).any(-1) if resume is not None else torch.zeros(B, dtype=torch.bool,
                                                                                        device=device)
        return cls(x, att, [P - len(p) for p in prompts], gens, P, step_map, row_step, done,
                   torch.full((B, G), torch.inf, dtype=torch.float64, device=device),
                   torch.zeros(B, dtype=torch.long, device=device))

    def stop_finished(self, rows: torch.Tensor, dlm) -> None:
        """Rows whose end-of-text is committed with everything before it decided stop; the rest of
        their window becomes end-of-text (decoded at the current step)."""
        fin = rows[_finished(self.x[rows, self.P:], dlm.eos_id, dlm.mask_id)]
        if fin.numel():
            win = self.x[fin, self.P:]
            self.x[fin, self.P:] = torch.where(win == dlm.mask_id, dlm.eos_id, win)
            sm = self.step_map[fin]
            self.step_map[fin] = torch.where(sm < 0, self.row_step[fin, None], sm)
            self.done[fin] = True


def _decode(dlm, prompts, cfg: SamplerConfig, gens, progress, resume=None, until=None, recorder=None):
    run = _Run.begin(dlm, prompts, cfg, gens, resume)
    blocks = cfg.gen_length // cfg.block_length
    per_block = cfg.steps // blocks
    first, last = (resume.step if resume is not None else 0), (cfg.steps if until is None else until)
    cache = None
    if cfg.cache != "none":
        from dlm_bench.models.kv_cache import BlockCache
        cache = BlockCache(dlm, cfg.cache)
    for b in range(blocks):
        s0, s1 = max(0, first - b * per_block), min(per_block, last - b * per_block)
        if s0 >= per_block and cfg.threshold is None:
            continue
        if s1 <= 0 and cfg.threshold is None:
            break
        _block(dlm, run, cfg, b, s0, s1, per_block, cache, progress, recorder)
        if bool(run.done.all()):
            break
    return run.x[:, run.P:].cpu(), run.step_map.cpu(), run.nfe.cpu()


def _block(dlm, run: _Run, cfg: SamplerConfig, b: int, s: int, s1: int, per_block: int, cache, progress,
           recorder) -> None:
    """Steps s..s1-1 of block b (until the block is decoded, with a threshold)."""
    P, mask_id = run.P, dlm.mask_id
    lo, hi = P + b * cfg.block_length, P + (b + 1) * cfg.block_length
    c0 = P if cfg.rcr else lo          # rcr may revise any committed token before the block's end
    schedule = block_schedule(cfg.schedule, cfg.block_length, per_block)
    ascending = cfg.schedule == "ascending"
    while cfg.threshold is not None or s < s1:
        rows = (~run.done & (run.x[:, c0:hi] == mask_id).any(-1)).nonzero().flatten()
        if rows.numel() == 0:
            if cache is None and cfg.threshold is None and run.vocab is not None:
                idle = (~run.done).nonzero().flatten().tolist()
                _idle_draws([run.pad[i] for i in idle], [run.gens[i] for i in idle], run.width, run.vocab,
                            s1 - s, cfg, dlm.device)
            break
        full = None
        if cache is None:   # the block's own copy: the full [rows, width, V] logits die here (unless recorded)
            full = _logits(dlm, run.x[rows], run.att[rows], P, cfg)
            blk = full[:, c0:hi].clone()
            full = full if recorder is not None else None
        elif s == 0:    # the block's first step: a full pass (exact), which fills the cache
            started = rows
            blk = _no_eos(cache.start(run.x[rows], run.att[rows], lo, hi), dlm, cfg)[:, lo:hi].clone()
        else:           # rows only ever drop out of a block, so they are a subset of `started`
            blk = _no_eos(cache.block_logits(run.x[rows], run.att[rows], torch.searchsorted(started, rows)),
                          dlm, cfg)
        run.vocab = blk.shape[-1]
        run.nfe[rows] += 2 if cfg.cfg_scale > 0 else 1
        before = run.x[rows, P:].clone() if recorder is not None else None
        rule = _Rule(schedule[s] if cfg.threshold is None else None, sum(schedule[s + 1:]) if cfg.rcr else 0,
                     eos_factor(cfg.eos_gamma, s, per_block if ascending else cfg.steps, ascending))
        x0, score = _step(dlm, run, rows, blk, c0, hi, rule, cfg)
        if recorder is not None:
            recorder(StepView(rows, run.row_step[rows].clone(), before, run.x[rows, P:].clone(), full[:, P:],
                              slice(c0 - P, hi - P), x0, score))
        if cfg.stop_at_eos and not cfg.rcr:
            run.stop_finished(rows, dlm)
        run.row_step[rows] += 1
        s += 1
        run.total += 1
        if progress is not None:
            progress(run.total)


@dataclass(frozen=True)
class _Rule:
    """What a step may do: commit k tokens (None: threshold decoding), leave `remask` masked (rcr), and
    scale end-of-text confidences by `eos` (EOSER)."""
    k: int | None
    remask: int
    eos: float


def _logits(dlm, x, att, P, cfg: SamplerConfig) -> torch.Tensor:
    logits = guided_logits(dlm, x, att, P, cfg.cfg_scale) if cfg.cfg_scale > 0 else dlm.logits(x, att)
    return _no_eos(logits, dlm, cfg)


def guided_logits(dlm, x, att, P: int, scale: float) -> torch.Tensor:
    """Unsupervised classifier-free guidance (LLaDA): the unconditional copy masks the real prompt
    tokens of the first P columns; logits = uncond + (scale + 1) (cond - uncond)."""
    un = x.clone()
    un[:, :P][att[:, :P].bool()] = dlm.mask_id
    cond, uncond = dlm.logits(torch.cat([x, un]), torch.cat([att, att])).chunk(2)
    return uncond + (scale + 1) * (cond - uncond)


def _no_eos(logits, dlm, cfg: SamplerConfig) -> torch.Tensor:
    if cfg.logits_eos_inf:
        logits[..., dlm.eos_id] = -torch.inf
    return logits


def _step(dlm, run: _Run, rows, blk, lo: int, hi: int, rule: _Rule, cfg: SamplerConfig):
    """One denoising step for `rows`: sample candidates, score them, commit the most confident (rcr:
    commit all, then mask again the lowest running confidences). Returns the candidates and scores.

    blk: [n, hi - lo, V] logits of columns lo..hi-1 (the block; with rcr, the window up to the block's
    end). The columns are the same in every left-padded row; only the random draws are per row, over
    the positions the row has alone.
    """
    n, bl, V = blk.shape
    dtype = NOISE_DTYPES[cfg.noise_dtype]
    pads, gens, width = [run.pad[i] for i in rows.tolist()], [run.gens[i] for i in rows.tolist()], run.width
    if cfg.temperature > 0:
        x0 = torch.stack([_gumbel_argmax(row, p, g, lo, hi, width, cfg.temperature, dtype)
                          for row, p, g in zip(blk, pads, gens)])
    else:
        x0 = torch.argmax(blk, dim=-1)
    if cfg.remasking == "low_confidence":
        # float64 (the default) is LLaDA's generate.py: the softmax runs on the logits as the model
        # returns them. Any other dtype is ESPO's rollout sampler (ML-GSAI/ESPO b5f2dac,
        # espo/espo_trainer.py), where dtype = model.dtype (:284): add_gumbel_noise casts the logits,
        # draws rand_like and computes (-log u)^T, exp and the division all in that dtype (:240-245),
        # argmax at T = 0 is on the raw logits (:241, :331), and the confidence is
        # softmax(logits.to(dtype)) (:335); the surrounding autocast is off under bf16 (:313).
        conf_logits = blk if cfg.noise_dtype == "float64" else blk.to(dtype)
        if cfg.confidence_eos_eot_inf:
            conf_logits = conf_logits.clone()
            conf_logits[..., _suppressed_ids(dlm, cfg)] = -torch.inf
        score = torch.gather(F.softmax(conf_logits, dim=-1), -1, x0[..., None]).squeeze(-1)
        if rule.eos != 1.0:       # EOSER: end-of-text candidates count as less confident early on
            score = torch.where(x0 == dlm.eos_id, score * rule.eos, score)
    else:
        score = torch.stack([_random_scores(p, g, width, blk.device)[lo - p:hi - p]
                             for p, g in zip(pads, gens)])
    current = run.x[rows, lo:hi]
    masked = current == dlm.mask_id
    conf = torch.where(masked, score, torch.full_like(score, -torch.inf))
    if cfg.rcr:
        return x0, _rcr_commit(dlm, run, rows, lo, hi, x0, score, masked, rule.remask)
    if rule.k is None:  # threshold decoding: everything confident enough, and at least the best one
        transfer = (conf > cfg.threshold) & masked
        transfer[torch.arange(n, device=blk.device), conf.argmax(-1)] = True
    else:
        transfer = torch.zeros_like(masked)
        if rule.k > 0 and (cfg.confidence_eos_eot_inf or cfg.noise_dtype != "float64"):
            # many exact ties (zeros; bf16 probabilities): break them as the reference does
            transfer = _topk_as_reference(conf, rule.k, pads, lo, width)
        elif rule.k > 0:
            transfer.scatter_(1, torch.topk(conf, k=rule.k, dim=-1).indices, True)
    run.x[rows, lo:hi] = torch.where(transfer, x0, current)
    w0, w1 = lo - run.P, hi - run.P
    run.step_map[rows, w0:w1] = torch.where(transfer, run.row_step[rows, None], run.step_map[rows, w0:w1])
    return x0, score


def _rcr_commit(dlm, run: _Run, rows, lo: int, hi: int, x0, score, masked, remask: int) -> torch.Tensor:
    """Running-confidence remasking: every masked position in lo..hi-1 takes its candidate and its
    confidence becomes its running confidence; then the `remask` committed tokens of lowest running
    confidence are masked again. Returns the running confidences of columns lo..hi-1 after the step."""
    w0, w1 = lo - run.P, hi - run.P
    x = torch.where(masked, x0, run.x[rows, lo:hi])
    running = torch.where(masked, score.to(run.running.dtype), run.running[rows, w0:w1])
    again = lowest(running, remask)
    run.x[rows, lo:hi] = torch.where(again, dlm.mask_id, x)
    run.running[rows, w0:w1] = running
    sm = torch.where(masked, run.row_step[rows, None], run.step_map[rows, w0:w1])
    run.step_map[rows, w0:w1] = torch.where(again, -1, sm)
    return running


def _topk_as_reference(conf, k: int, pads, lo: int, width: int) -> torch.Tensor:
    """The top-k of each row's block confidences, ties broken exactly as the reference breaks them.

    torch.topk's choice among equal values depends on the layout of the row it searches, and the
    reference searches the whole sequence (-inf outside the current block's masked positions), not
    the block. With `confidence_eos_eot_inf` every end-of-text/end-of-turn candidate scores exactly
    0, and a bf16 softmax (`noise_dtype`) rounds many probabilities to the same value, so such ties
    are common; this runs topk on the row laid out as the reference lays it out (the row alone,
    without its left padding: at batch 1 that is the reference's row). The default path keeps the
    block-only topk, which agrees with it wherever the top k are not tied.
    """
    n, bl = conf.shape
    transfer = torch.zeros((n, bl), dtype=torch.bool, device=conf.device)
    for i, p in enumerate(pads):
        row = torch.full((width - p,), -torch.inf, dtype=conf.dtype, device=conf.device)
        row[lo - p:lo - p + bl] = conf[i]
        idx = torch.topk(row, k=k).indices - (lo - p)
        transfer[i, idx[(idx >= 0) & (idx < bl)]] = True
    return transfer


def _suppressed_ids(dlm, cfg: SamplerConfig) -> list[int]:
    """Tokens whose confidence `confidence_eos_eot_inf` zeroes, exactly as ML-GSAI/LLaDA generate.py
    (b7e6c35) lines 94-101 behave: after x0 is drawn, the chained assignment
    `logits_with_noise[:, :, EOS] = logits[:, :, EoT] = -inf` runs, and the confidence is
    softmax(logits). At T > 0 `logits_with_noise` is a new tensor, so only end-of-turn is
    suppressed; at T = 0 `add_gumbel_noise` returns `logits` itself, so end-of-text is suppressed
    too. (This is the setting of LLaDA's OpenCompass evals, which decode at T = 0.) x0 itself is
    unchanged: an end-of-text or end-of-turn candidate can still be committed, but only last.
    A model without an end-of-turn token has its end-of-text suppressed in its place."""
    ids = [dlm.eot_id if dlm.eot_id is not None else dlm.eos_id]
    if cfg.temperature == 0:
        ids.append(dlm.eos_id)
    return sorted(set(ids))


def _idle_draws(pads, gens, width, vocab, n_steps, cfg: SamplerConfig, device):
    """The random numbers of `n_steps` steps that reveal nothing, discarded.

    With more steps per block than the block has tokens, the reference's last steps of a block
    reveal 0 tokens (its schedule puts the remainder first), yet each still draws its Gumbel noise
    (`torch.rand_like` over the [B, L, V] logits, at T > 0) and, for random remasking, its [B, L]
    scores. Neither draw depends on the logits' values, only on their shape, so a row reproduces the
    reference's random stream by drawing the same shapes in the same order, without the forward pass
    (no NFE, no step in the step map). The next block then starts from the reference's state.
    """
    if cfg.temperature == 0 and cfg.remasking != "random":
        return
    for p, g in zip(pads, gens):
        for _ in range(n_steps):
            if cfg.temperature > 0:
                _gumbel_uniforms(p, g, width, vocab, NOISE_DTYPES[cfg.noise_dtype], device)
            if cfg.remasking == "random":
                _random_scores(p, g, width, device)


def _gumbel_argmax(logits, pad: int, gen, lo: int, hi: int, width: int, temperature: float, dtype) -> torch.Tensor:
    """One row's Gumbel-max candidates [block] at temperature T: argmax of exp(l) / (-log u)^T, the
    reference's `add_gumbel_noise` in `dtype`. u is the reference's draw over the row's whole width
    (its random stream), of which only the block is kept: the full [width, V] draw (4x the bf16
    logits of a row in float64) dies on return from `_block_uniforms`, so one row's draw is alive at
    a time, and the noise is computed in place on the block's copy. Same ops, same values as
    computing it for all rows at once."""
    noise = _block_uniforms(pad, gen, lo, hi, width, logits.shape[-1], dtype, logits.device)
    noise.log_().neg_().pow_(temperature)
    return logits.to(dtype).exp().div_(noise).argmax(-1)


def _block_uniforms(pad: int, gen, lo: int, hi: int, width: int, vocab: int, dtype, device) -> torch.Tensor:
    return _gumbel_uniforms(pad, gen, width, vocab, dtype, device)[lo - pad:hi - pad].clone()


def _gumbel_uniforms(pad: int, gen, width: int, vocab: int, dtype, device) -> torch.Tensor:
    """A row's uniforms for the Gumbel noise of one step: the reference's rand_like over the row's
    own positions (its left padding excluded) and the whole vocabulary."""
    return torch.rand((width - pad, vocab), generator=gen, dtype=dtype, device=device)


def _random_scores(pad: int, gen, width: int, device) -> torch.Tensor:
    """A row's `random` remasking scores of one step, over its own positions."""
    return torch.rand(width - pad, generator=gen, device=device)


def _finished(windows: torch.Tensor, eos_id: int, mask_id: int) -> torch.Tensor:
    """Rows where an end-of-text token is committed and everything before it is decided."""
    is_eos = windows == eos_id
    first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1), windows.shape[1])
    before = torch.arange(windows.shape[1], device=windows.device)[None, :] < first[:, None]
    return is_eos.any(-1) & ~((windows == mask_id) & before).any(-1)
