"""Block-wise approximate KV cache for decoding, after Fast-dLLM (NVlabs; its LLaDA `generate.py`).

The first step of every block runs one full forward pass: its logits are exactly those of
`cache="none"`, and every layer's keys and values are stored. The block's remaining steps run the
model over a window of columns only, attending to the stored keys outside it:

- `prefix`: the window is the current block and everything after it; stored keys before the block.
- `dual`:   the window is the current block; stored keys before and after it.

Stored keys go stale as the block is decoded (in a bidirectional model every key depends on every
token): that is the approximation, and `bench/decoding.py` measures what it costs. A model with
shifted logits (Dream: column i predicts token i + 1) runs the window from one column earlier, so
each block position still gets its prediction from a freshly computed column.

How each architecture takes the cache (its family's `kv_cache` protocol, `models/families.py`), with
the user's model files untouched:
- `native`: the built-in tiny model implements it (`past_key_values` with `update()`, `models/tiny.py`);
  Dream's attention already calls `past_key_value.update(k, v, layer)` after rotary embedding, so the
  store is passed as `past_key_values`, with explicit `position_ids` (and its 4-D mask form);
- `llada_hooks`: LLaDA's forward refuses `past_key_values`, so each block's `attention` method is
  wrapped on the instance (`_LladaHooks`); outside a cached pass the wrapper calls the original unchanged.
Any other architecture is refused with a one-line error.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from dlm_bench.errors import UserError
from dlm_bench.models import families

# config.json model_type values of the families this approximate cache applies to
SUPPORTED = tuple(t for f in families.FAMILIES if f.approximate_cache for t in f.model_types)


class KVStore:
    """One block-start pass's keys and values per layer, outside the window [qlo, qhi) that later
    passes recompute. Follows the `update(k, v, layer)` protocol of transformers' Cache (Dream)."""

    def __init__(self, qlo: int, qhi: int):
        self.qlo, self.qhi = qlo, qhi
        self.rows = None            # None: recording a full pass; else which recorded rows run now
        self.key_mask = None        # for the LLaDA wrapper: [n, 1, 1, T] bool, None when nothing is padded
        self.before: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.after: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0                    # Dream asks when no cache_position is given; positions are explicit

    def update(self, k, v, layer_idx, *_, **__):
        """k, v: [n, heads, columns, dim] after rotary embedding. Recording: keep them, return them.
        Window pass: return the stored keys with these spliced in at [qlo, qhi)."""
        if self.rows is None:
            self.before[layer_idx] = (k[:, :, :self.qlo], v[:, :, :self.qlo])
            self.after[layer_idx] = (k[:, :, self.qhi:], v[:, :, self.qhi:])
            return k, v
        (kb, vb), (ka, va) = self.before[layer_idx], self.after[layer_idx]
        r = self.rows
        return torch.cat([kb[r], k, ka[r]], dim=2), torch.cat([vb[r], v, va[r]], dim=2)


def positions(att: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch, as `DLM` derives them (padding does not shift positions)."""
    return (att.long().cumsum(-1) - 1).clamp(min=0)


class BlockCache:
    """The sampler's handle: `start()` at a block's first step, `block_logits()` at the others."""

    def __init__(self, dlm, mode: str):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"unknown cache mode {mode!r}")
        self.dlm, self.mode = dlm, mode
        self.arch = architecture(dlm, mode)
        self.store: KVStore | None = None
        self.lo = self.hi = 0
        self.recorded = 0

    def start(self, x, att, lo: int, hi: int) -> torch.Tensor:
        """Full-width logits of rows x (exactly `dlm.logits(x, att)`); stores their keys and values."""
        shift = 1 if self.dlm.shift_logits else 0
        if lo - shift < 0:
            raise ValueError("a shifted-logits model needs at least one token before the block")
        self.lo, self.hi, self.recorded = lo, hi, x.shape[0]
        self.store = KVStore(lo - shift, hi if self.mode == "dual" else x.shape[1])
        with self.arch.recording(self.store) as kw:
            return self.dlm.logits(x, att, **kw)

    def block_logits(self, x, att, idx: torch.Tensor) -> torch.Tensor:
        """[n, hi - lo, V] logits of the block for rows `idx` of the start pass (x, att: those rows)."""
        st = self.store
        st.rows = slice(None) if idx.numel() == self.recorded else idx   # idx is sorted and unique
        raw = self.arch.window(self.dlm, x[:, st.qlo:st.qhi], att, positions(att)[:, st.qlo:st.qhi], st)
        # window column j is sequence column qlo + j; block position lo + j reads column lo + j - shift
        return raw[:, :self.hi - self.lo]


# --------------------------------------------------------------------------- architectures

class _Native:
    """Models that take the store as `past_key_values` (built-in tiny; Dream)."""

    def __init__(self, four_d: bool):
        self.four_d = four_d

    @contextlib.contextmanager
    def recording(self, store):
        yield {"past_key_values": store}

    def window(self, dlm, ids, att, pos, store):
        mask = att.bool()
        if self.four_d:     # Dream: [n, 1, queries, keys]; no mask at all when nothing is padded
            mask = mask[:, None, None, :].expand(-1, 1, ids.shape[1], -1) if not bool(mask.all()) else None
        return dlm.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=store).logits


class _LladaHooks:
    """LLaDA: each block's `attention(q, k, v, attention_bias, layer_past, use_cache)` is wrapped.
    Recording: the original runs (asked for its keys, which it returns before rotary embedding).
    Window: the same steps as the original, at the window's positions, over the stored keys."""

    ATTR = "_dlm_bench_kv"

    def __init__(self, model):
        self.store = None
        self.blocks = [m for m in model.modules() if callable(getattr(m, "attention", None))
                       and hasattr(m, "attn_out") and hasattr(m, "layer_id")]
        if not self.blocks:
            raise UserError("this LLaDA model has no attention blocks the harness knows how to cache")
        for block in self.blocks:
            if not hasattr(block, self.ATTR):       # once per model; the wrappers read `self.store`
                setattr(block, self.ATTR, block.attention)
            block.attention = self._wrap(block, getattr(block, self.ATTR))

    @contextlib.contextmanager
    def recording(self, store):
        self.store = store
        try:
            yield {}
        finally:
            self.store = None

    def window(self, dlm, ids, att, pos, store):
        padded = not bool(att.bool().all())
        if padded and not dlm.honours_padding:
            raise ValueError("cached passes over padding need a model that honours the attention mask")
        store.key_mask = att.bool()[:, None, None, :] if padded else None
        self.store = store
        try:
            return dlm.model(input_ids=ids).logits
        finally:
            self.store = None

    def _wrap(self, block, original):
        def attention(q, k, v, attention_bias=None, layer_past=None, use_cache=False):
            store = self.store
            if store is None:
                return original(q, k, v, attention_bias, layer_past=layer_past, use_cache=use_cache)
            if store.rows is None:
                out, present = original(q, k, v, attention_bias, layer_past=layer_past, use_cache=True)
                keys, values = present
                store.update(_llada_rope(block, keys, 0, keys.shape[-2]), values, block.layer_id)
                return out, (present if use_cache else None)
            return _llada_window_attention(block, q, k, v, store), None
        return attention


def _llada_rope(block, t, lo: int, hi: int):
    """LLaDA's rotary embedding for columns [lo, hi) (its own forward only does the last columns)."""
    if not block.config.rope:
        return t
    rot = block.rotary_emb
    t_ = t.float() if block.config.rope_full_precision else t
    with torch.autocast(t.device.type, enabled=False):
        sin, cos = rot.get_rotary_embedding(hi, t.device)
        out = rot.apply_rotary_pos_emb(sin.type_as(t_)[:, :, lo:hi], cos.type_as(t_)[:, :, lo:hi], t_)
    return out.type_as(t)


def _llada_window_attention(block, q, k, v, store):
    cfg = block.config
    n, w, c = q.shape
    if block.q_norm is not None and block.k_norm is not None:
        q, k = block.q_norm(q).to(dtype=k.dtype), block.k_norm(k).to(dtype=k.dtype)
    hs = c // cfg.n_heads
    q = q.view(n, w, cfg.n_heads, hs).transpose(1, 2)
    k = k.view(n, w, cfg.effective_n_kv_heads, hs).transpose(1, 2)
    v = v.view(n, w, cfg.effective_n_kv_heads, hs).transpose(1, 2)
    lo, hi = store.qlo, store.qlo + w
    q, k = _llada_rope(block, q, lo, hi), _llada_rope(block, k, lo, hi)
    keys, values = store.update(k, v, block.layer_id)
    att = block._scaled_dot_product_attention(q, keys, values, attn_mask=store.key_mask, dropout_p=0.0,
                                              is_causal=False)
    return block.attn_out(att.transpose(1, 2).contiguous().view(n, w, c))


def _model_type(dlm) -> str:
    base = getattr(dlm.model, "get_base_model", lambda: dlm.model)()
    return str(dlm.extra.get("model_type") or getattr(getattr(base, "config", None), "model_type", "")).lower()


def architecture(dlm, mode: str):
    """How this model takes the cache; a UserError for one the harness cannot cache."""
    kind = _model_type(dlm)
    family = families.by_model_type(kind)
    base = getattr(dlm.model, "get_base_model", lambda: dlm.model)()
    if not family.approximate_cache:
        raise UserError(refusal(mode, kind or type(base).__name__))
    if family.kv_cache == "native":
        return _Native(four_d=family.padding == "4d_bool")
    hooks = getattr(base, "_dlm_bench_llada_hooks", None)
    if hooks is None:
        hooks = _LladaHooks(base)
        base._dlm_bench_llada_hooks = hooks
    return hooks


def refusal(mode: str, kind: str) -> str:
    """The one line that refuses `--cache MODE` on a model type the cache does not apply to."""
    if families.by_model_type(kind).block_causal:
        return (f"cache={mode}: {kind!r} is a block-diffusion model, whose finished blocks are always cached "
                f"exactly; Fast-dLLM's approximate cache is for full attention: use --cache none")
    return (f"cache={mode}: the harness cannot cache model type {kind!r} "
            f"(supported: {', '.join(SUPPORTED)}); use --cache none")


def check_model_dir(path: str, mode: str) -> None:
    """Refuse, before loading, a model directory whose architecture cannot be cached."""
    if mode == "none":
        return
    from dlm_bench.models.hf import ADAPTER_CONFIG, adapter_base
    p = Path(path)
    for _ in range(8):              # a LoRA folder: follow its base (adapters can chain)
        if (p / "config.json").is_file() or not (p / ADAPTER_CONFIG).is_file():
            break
        p = adapter_base(p, json.loads((p / ADAPTER_CONFIG).read_text()))
    try:
        kind = str(json.loads((p / "config.json").read_text()).get("model_type", "")).lower()
    except (OSError, json.JSONDecodeError):
        return                      # the loader reports a broken model directory in its own words
    if kind not in SUPPORTED:
        raise UserError(refusal(mode, kind))
