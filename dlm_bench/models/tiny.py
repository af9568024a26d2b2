"""The built-in tiny masked diffusion LM: a LLaDA-style bidirectional transformer.

It is an ordinary Hugging Face model (config + weights + tokenizer in one directory), so the CPU demo
and an 8B run share every code path. Architecture as LLaDA: pre-norm RMSNorm, rotary position
embeddings, SwiGLU MLP, no causal mask, a dedicated mask token. Positions come from the attention
mask, so a left-padded row sees exactly the positions it would see unpadded.

Block KV caching (`dlm_bench.models.kv_cache`) is built in: `past_key_values` takes an object whose
`update(k, v, layer)` returns the keys and values to attend to (after rotary embedding). For a pass
over a window of the sequence, `attention_mask` then covers every key (it is longer than the input)
and `position_ids` give the window's positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import MaskedLMOutput

MODEL_TYPE = "dlm-bench-tiny"

# Named sizes; parameter counts are for the 100-symbol character vocabulary.
PRESETS = {
    "1m": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=352),
    "2m": dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "8m": dict(hidden_size=320, num_hidden_layers=6, num_attention_heads=5, intermediate_size=864),
    "50m": dict(hidden_size=640, num_hidden_layers=10, num_attention_heads=10, intermediate_size=1728),
}


class TinyDLMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(self, vocab_size=128, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=352, max_position_embeddings=1024, rope_theta=10000.0,
                 rms_norm_eps=1e-5, mask_token_id=None, pad_token_id=None, eos_token_id=None,
                 bos_token_id=None, tie_word_embeddings=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                         bos_token_id=bos_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: TinyDLMConfig):
        super().__init__()
        d, h = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads, self.head_dim = h, d // h
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.gate_up = nn.Linear(d, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, d, bias=False)

    def forward(self, x, cos, sin, attn_bias, cache=None, layer_idx=0):
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # b h n hd
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:  # store these keys, or attend to the stored ones with these spliced in
            k, v = cache.update(k, v, layer_idx)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # bidirectional
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class TinyDLMPreTrainedModel(PreTrainedModel):
    config_class = TinyDLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = 0.02
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class TinyDLMModel(TinyDLMPreTrainedModel):
    """Backbone: embeddings -> blocks -> final norm. Returns hidden states."""

    def __init__(self, config: TinyDLMConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **_):
        b, n = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(torch.bool)
        window = attention_mask.shape[1] != n   # a cached pass: the mask covers all keys, not the input
        if window and (past_key_values is None or position_ids is None):
            raise ValueError("an attention mask longer than the input needs past_key_values and position_ids")
        if position_ids is None:  # left padding must not shift positions
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = self.embed(input_ids)
        # Rotary frequencies are recomputed (cheap) rather than buffered: Hugging Face's meta-device
        # loading leaves non-persistent buffers uninitialised.
        hd = self.config.hidden_size // self.config.num_attention_heads
        inv_freq = 1.0 / (self.config.rope_theta
                          ** (torch.arange(0, hd, 2, dtype=torch.float32, device=x.device) / hd))
        freqs = position_ids[:, None, :, None].float() * inv_freq  # b 1 n hd/2
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        # Keys that are padding are never attended; padded queries still attend somewhere (all keys
        # of a fully padded row would give NaN), so they attend to themselves only.
        # (A cached window holds no padding: its queries are answer tokens, so the key mask suffices.)
        keep = attention_mask[:, None, None, :]
        if not window:
            keep = keep | torch.eye(n, dtype=torch.bool, device=x.device)
        attn_bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, cos, sin, attn_bias)
            else:
                x = layer(x, cos, sin, attn_bias, past_key_values, i)
        return self.norm(x)


class TinyDLMForMaskedLM(TinyDLMPreTrainedModel):
    """Backbone + LM head. `logits[:, i]` predicts token i (no shift), as LLaDA."""

    def __init__(self, config: TinyDLMConfig):
        super().__init__(config)
        self.model = TinyDLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False,
                past_key_values=None, **_):
        h = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=past_key_values)
        return MaskedLMOutput(logits=self.head(h), hidden_states=(h,) if output_hidden_states else None)

    def head(self, h):
        """Logits from last hidden states [..., H] (any leading shape)."""
        logits = self.lm_head(h)
        # The mask and pad tokens are never valid outputs.
        banned = [t for t in (self.config.mask_token_id, self.config.pad_token_id) if t is not None]
        if banned:
            logits = logits.clone()
            logits[..., banned] = torch.finfo(logits.dtype).min
        return logits


AutoConfig.register(MODEL_TYPE, TinyDLMConfig)
AutoModel.register(TinyDLMConfig, TinyDLMModel)
AutoModelForMaskedLM.register(TinyDLMConfig, TinyDLMForMaskedLM)


def build_tiny(tokenizer, size: str = "1m", **overrides) -> TinyDLMForMaskedLM:
    """A randomly initialised tiny DLM for `tokenizer` (see `dlm_bench.models.chartok`)."""
    if size not in PRESETS:
        raise ValueError(f"unknown tiny size {size!r}; choose from {', '.join(PRESETS)}")
    cfg = TinyDLMConfig(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id, **{**PRESETS[size], **overrides})
    return TinyDLMForMaskedLM(cfg)
