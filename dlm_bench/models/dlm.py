"""`DLM`: a loaded diffusion LM behind one small interface (logits, hidden states, tokenizer, mask and
stop ids, save). Family facts (shifted logits, padding form, attention pattern) come from its
`Family` record (`models/families.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm_bench.models import families, masks
from dlm_bench.models.families import Family

SHIFT_CHUNK_BYTES = 256 * 2 ** 20      # columns moved at a time by `shift_right_in_place`


def shift_right_in_place(logits: torch.Tensor) -> torch.Tensor:
    """Column i takes column i - 1's values (column 0 keeps its own): the shift of an AR-adapted
    model's logits without a second [B, T, V] tensor (the sampler's largest). Columns move right to
    left a chunk at a time, each chunk read before the next one overwrites its source."""
    B, T, V = logits.shape
    step = max(1, SHIFT_CHUNK_BYTES // max(1, B * V * logits.element_size()))
    for stop in range(T, 1, -step):
        start = max(1, stop - step)
        logits[:, start:stop] = logits[:, start - 1:stop - 1].clone()
    return logits


@dataclass
class DLM:
    model: torch.nn.Module
    tokenizer: object
    mask_id: int
    eos_id: int
    pad_id: int
    eot_id: int | None = None          # end-of-turn token (LLaDA <|eot_id|>), if the tokenizer has one
    shift_logits: bool = False         # AR-adapted models (Dream) predict token i at position i-1
    honours_padding: bool = True       # False: the model ignores the attention mask (pre-Oct-2025 LLaDA)
    stop_ids: tuple[int, ...] = ()     # ids that end a completion (EOS, end-of-turn); default: eos, eot
    gather_logits: bool = False        # scores apply the head at masked positions only (models/output_head.py)
    score_rows: int | None = None      # most rows per scoring forward (None: the caller's chunk, 64)
    path: str | None = None
    extra: dict = field(default_factory=dict)
    family: Family | None = None       # None: the family of extra["model_type"] (generic if unknown)
    block_size: int | None = None      # block-causal families: the block of a whole-sequence forward

    def __post_init__(self):
        if self.family is None:
            self.family = families.by_model_type(self.extra.get("model_type"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _forward(self, input_ids, attention_mask=None, hidden=False, position_ids=None, **model_kw) -> torch.Tensor:
        """Raw logits (or last hidden states) of the wrapped model for a left-padded batch [B, T], or
        for a 4-D boolean `attention_mask` [B, 1, T, T] (query sees key) with its `position_ids`, as the
        block-diffusion scores build it (`likelihood.scoring_input`). `model_kw` go to the model as
        they are (the block KV cache passes `past_key_values`)."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return self._forward_4d(input_ids, attention_mask, position_ids, hidden)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if padded and not self.honours_padding:
            if model_kw:  # the sampler never pads such a model when caching (equal-length groups)
                raise ValueError("cached passes over padding need a model that honours the attention mask")
            return self._forward_unpadded(input_ids, attention_mask, hidden)
        kw = dict(model_kw)
        if self.family.block_causal and "attention_mask" not in kw:   # never the model's own default mask
            dtype = next(self.model.parameters()).dtype
            kw.update(masks.block_causal_inputs(attention_mask, input_ids.shape, self.block_size,
                                                self.family.padding, dtype, input_ids.device))
        elif padded:
            kw.update(masks.padded_inputs(attention_mask, self.family.padding,
                                          self.family.padding == "2d" and self._takes_position_ids()))
        if hidden:
            return self.model(input_ids=input_ids, output_hidden_states=True, **kw).hidden_states[-1]
        return self.model(input_ids=input_ids, **kw).logits

    def _forward_4d(self, input_ids, see, position_ids, hidden) -> torch.Tensor:
        """A forward with a given who-sees-whom mask, in the form the family takes (bool or additive)."""
        if self.family.padding == "2d":
            raise ValueError(f"{self.family.name} models take 2-D attention masks only")
        dtype = next(self.model.parameters()).dtype
        kw = {"attention_mask": masks.as_form(see, self.family.padding, dtype), "position_ids": position_ids}
        if hidden:
            return self.model(input_ids=input_ids, output_hidden_states=True, **kw).hidden_states[-1]
        return self.model(input_ids=input_ids, **kw).logits

    def _forward_unpadded(self, input_ids, attention_mask, hidden) -> torch.Tensor:
        """For models that ignore the attention mask: run each group of rows with the same amount of
        left padding without its pad columns, so no row ever sees a pad token (pad positions get 0)."""
        pads = (attention_mask == 0).sum(-1)
        out = None
        for pad in pads.unique().tolist():
            rows = (pads == pad).nonzero().flatten()
            part = self._forward(input_ids[rows, pad:], None, hidden)
            if out is None:
                out = part.new_zeros((input_ids.shape[0], input_ids.shape[1], part.shape[-1]))
            out[rows, pad:] = part
        return out

    def _takes_position_ids(self) -> bool:
        if "takes_position_ids" not in self.extra:
            import inspect
            base = getattr(self.model, "get_base_model", lambda: self.model)()
            self.extra["takes_position_ids"] = "position_ids" in inspect.signature(base.forward).parameters
        return self.extra["takes_position_ids"]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               **model_kw) -> torch.Tensor:
        """[B, T, V] logits where position i scores token i (shifted for AR-adapted models).
        `attention_mask`: 2-D real columns, or a 4-D boolean mask with `position_ids` (`_forward`)."""
        logits = self._forward(input_ids, attention_mask, **model_kw)
        if self.shift_logits and not logits.requires_grad:     # no graph to keep: shift without a copy
            return shift_right_in_place(logits)
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, H] last-layer hidden states (after the final norm: the output head's input)."""
        from dlm_bench.models import output_head
        if output_head.swappable(self):     # without computing the [B, T, vocab] head at all
            with output_head.without_head(self.model):
                return self._forward(input_ids, attention_mask, position_ids=position_ids)
        return self._forward(input_ids, attention_mask, hidden=True, position_ids=position_ids)

    def logits_head(self):
        """The output head as a function hidden [..., H] -> logits [..., V] when scores may gather
        (`gather_logits`), else None (scores then take full logits)."""
        from dlm_bench.models import output_head
        return output_head.head(self) if self.gather_logits and not output_head.sharded(self.model) else None

    def bound_memory(self, checkpointing: bool | None, micro_batch_size: int) -> None:
        """Training memory bounds (docs/memory.md): gradient checkpointing, and for models other than
        the built-in tiny one (whose results stay bit-identical) scoring forwards of at most
        `micro_batch_size` rows, so `prepare`'s no-grad scoring is bounded like the backward chunks."""
        self.set_gradient_checkpointing(checkpointing)
        if self._memory_bounds_default():
            self.score_rows = micro_batch_size

    def _memory_bounds_default(self) -> bool:
        return bool(self.extra.get("model_type")) and self.family.memory_bounds

    def set_gradient_checkpointing(self, on: bool | None = None) -> bool:
        """Checkpoint the transformer blocks in training (models/checkpointing.py). None: on for models
        loaded from a model directory other than the built-in tiny model. Returns whether it is on."""
        from dlm_bench.models import checkpointing
        if on is None:
            on = self._memory_bounds_default()
        if on:
            self.extra["gradient_checkpointing"] = checkpointing.enable(self.model, self.family.checkpointing)
        elif self.extra.pop("gradient_checkpointing", None):
            checkpointing.disable(self.model)
        return bool(on)

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids for one prompt: a string, or chat messages rendered with the chat template."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok("\n".join(m["content"] for m in prompt))["input_ids"]

    def pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def stops(self) -> set[int]:
        return set(self.stop_ids) or ({self.eos_id} | ({self.eot_id} if self.eot_id is not None else set()))

    def completion_length(self, ids) -> int:
        """Tokens before the first stop token (end-of-text or end-of-turn)."""
        stops = self.stops()
        return next((i for i, t in enumerate(ids) if int(t) in stops), len(ids))

    def completion_text(self, ids) -> str:
        """Decode completion tokens, cut at the first stop token (end-of-text or end-of-turn)."""
        return self.decode_completion(ids)[0]

    def decode_completion(self, ids) -> tuple[str, int]:
        """The completion's text, cut at the first stop token, and how many of its ids the tokenizer
        has no token for. Those are left out: a model's vocabulary can be larger than its tokenizer
        (Dream: 152064 rows, 151667 tokens), and some remote tokenizers fail on them."""
        ids = [int(i) for i in ids]
        cut = ids[:self.completion_length(ids)]
        known = [i for i, t in zip(cut, self.tokenizer.convert_ids_to_tokens(cut)) if t is not None]
        return self.tokenizer.decode(known, skip_special_tokens=True), len(cut) - len(known)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)

    def save(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
