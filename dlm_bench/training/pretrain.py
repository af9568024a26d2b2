"""Masked-diffusion pre-training / SFT on a task's prompt-answer pairs (LLaDA's SFT objective).

The answer window of `answer_length` tokens holds the answer, end-of-text, then end-of-text padding
(the model learns to emit the padding, as in LLaDA). Each sequence draws t ~ U(0, 1), masks every
answer position with probability p = (1 - eps) t + eps, and scores the masked positions by
cross-entropy weighted 1/p, divided by the window length; the prompt is never masked.

Every step's randomness derives from (seed, step), so a resumed run continues exactly where an
uninterrupted one would be. Checkpoints are atomic (`dlm_bench.training.checkpoint`).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dlm_bench.config import mask_seed
from dlm_bench.runs.files import append_lines
from dlm_bench.runs import tracking
from dlm_bench.training import checkpoint, model_card
from dlm_bench.training.pretrain_config import PretrainConfig
from dlm_bench.errors import UserError
from dlm_bench.likelihood import masked_input

EPS = 1e-3  # LLaDA GUIDELINES.md: p_mask = (1 - eps) t + eps


def _init_model(cfg: PretrainConfig, device: str):
    from dlm_bench.models import DLM, load_model
    if cfg.init.startswith("tiny:"):
        from dlm_bench.models.chartok import build_char_tokenizer
        from dlm_bench.models.tiny import build_tiny
        tok = build_char_tokenizer()
        torch.manual_seed(cfg.seed)
        try:
            model = build_tiny(tok, cfg.init.split(":", 1)[1])
        except ValueError as e:
            raise UserError(str(e)) from e
        return DLM(model=model.to(device), tokenizer=tok, mask_id=tok.mask_token_id, eos_id=tok.eos_token_id,
                   pad_id=tok.pad_token_id)
    return load_model(cfg.init, device=device)


def _identity(config: dict) -> dict:
    """The settings a resumed run must share (its length and time budget may change)."""
    return {k: v for k, v in config.items() if k not in ("steps", "minutes", "save_every", "report_to")}


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


class PairSource:
    """Tokenized (prompt, answer window) pairs of a task split; answers may be drawn afresh per step."""

    def __init__(self, task, split: str, dlm, answer_length: int):
        self.task, self.dlm, self.G = task, dlm, answer_length
        self.problems = task.load(split)
        if not self.problems:
            raise UserError(f"task {task.name!r} split {split!r} is empty")
        self.prompts = [dlm.prompt_ids(task.prompt(p)) for p in self.problems]
        self.random_targets = "rng" in inspect.signature(task.sft_target).parameters
        if task.sft_target(self.problems[0]) is None:
            raise UserError(f"task {task.name!r} has no reference answers to pre-train on")

    def window(self, problem, rng: random.Random) -> list[int]:
        text = self.task.sft_target(problem, rng=rng) if self.random_targets else self.task.sft_target(problem)
        ids = self.dlm.tokenizer(text, add_special_tokens=False)["input_ids"][: self.G - 1]
        return ids + [self.dlm.eos_id] * (self.G - len(ids))

    def batch(self, size: int, seed: int):
        rng = random.Random(seed)
        idx = [rng.randrange(len(self.problems)) for _ in range(size)]
        prompts, mask = self.dlm.pad_left([self.prompts[i] for i in idx])
        answers = torch.tensor([self.window(self.problems[i], rng) for i in idx], device=prompts.device)
        return prompts, mask, answers


def masked_diffusion_loss(dlm, prompts, prompt_mask, answers, gen: torch.Generator) -> torch.Tensor:
    """LLaDA SFT loss: sum over masked answer tokens of CE / p_mask, divided by the window length."""
    B, G = answers.shape
    t = torch.rand(B, generator=gen)
    p = ((1 - EPS) * t + EPS)[:, None].expand(B, G).to(answers.device)
    masked = torch.rand((B, G), generator=gen).to(answers.device) < p
    x, att = masked_input(prompts, prompt_mask, answers, masked, dlm.mask_id)
    logits = dlm.logits(x, att)[:, prompts.shape[1]:].float()
    ce = F.cross_entropy(logits.reshape(B * G, -1), answers.reshape(-1), reduction="none").view(B, G)
    return ((ce / p) * masked).sum(-1).div(G).mean()


def pretrain(cfg: PretrainConfig, device: str = "cpu", progress: bool = True) -> Path:
    """Train; returns the final checkpoint directory. Resumes from `cfg.out` when a checkpoint exists."""
    from dlm_bench.models import load_model
    from dlm_bench.tasks import get_task

    cfg.validate()
    out = Path(cfg.out)
    resumed = checkpoint.load_state(out)
    if resumed:
        ckpt, state = resumed
        dlm = load_model(str(ckpt), device=device)
        if _identity(state["config"]) != _identity(dataclasses.asdict(cfg)):
            raise UserError(f"{out} holds a run with another config; use a new --out or the same settings")
    else:
        dlm, state = _init_model(cfg, device), {"step": 0}
    model = dlm.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    source = PairSource(get_task(cfg.task, data_dir=cfg.data_dir), cfg.split, dlm, cfg.answer_length)
    step, start = state["step"], time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.jsonl"
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not progress, unit="step")
    tracker = tracking.Tracker(cfg.report_to, out, dataclasses.asdict(cfg), resume_step=step)

    def save():
        checkpoint.save(out, dlm, {"step": step, "optimizer": opt.state_dict(), "config": dataclasses.asdict(cfg)},
                        card=model_card.pretrain_card(cfg, step))

    try:
        while step < cfg.steps:
            if cfg.minutes is not None and time.monotonic() - start > 60 * cfg.minutes:
                break
            gen = torch.Generator().manual_seed(mask_seed(cfg.seed, step))
            prompts, pmask, answers = source.batch(cfg.batch_size, seed=mask_seed(cfg.seed, step))
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step)
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = masked_diffusion_loss(dlm, prompts, pmask, answers, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            row = {"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                   "seconds": round(time.monotonic() - start, 2)}
            append_lines(log, [json.dumps(row)])
            tracker.log(row, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.save_every == 0:
                save()
    finally:  # an interrupted run keeps its progress
        save()
        bar.close()
        tracker.close()
    return out / "checkpoint"
