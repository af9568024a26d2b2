"""The unbiased Pass@k estimator, the one number every table and test of this package is built on."""
from __future__ import annotations

import numpy as np

from dlm_bench.errors import UserError


def pass_at_k(n, c, k):
    """Unbiased Pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), per problem.

    `n`, `c`: per-problem sample and correct counts (scalars or arrays); `k`: an int or a sequence.
    Uses the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a binomial
    coefficient. Returns a float for scalar input, shape (P,) for an int k, (P, K) for a sequence.
    """
    scalar = np.ndim(n) == 0 and np.ndim(c) == 0 and np.ndim(k) == 0
    n_arr = np.atleast_1d(np.asarray(n)).astype(np.int64)
    c_arr = np.atleast_1d(np.asarray(c)).astype(np.int64)
    ks = np.atleast_1d(np.asarray(k)).astype(np.int64)
    if n_arr.shape != c_arr.shape:
        raise ValueError(f"n and c have different shapes {n_arr.shape} and {c_arr.shape}")
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError("each count c must satisfy 0 <= c <= n")
    if ks.size == 0 or np.any(ks < 1):
        raise ValueError(f"k must be >= 1, got {ks.tolist()}")
    if n_arr.size and ks.max() > n_arr.min():
        raise UserError(f"Pass@{ks.max()} needs at least {ks.max()} samples per problem, "
                        f"but some problem has only {n_arr.min()}")
    out = np.empty((n_arr.size, ks.size))
    # Few distinct (n, c) pairs (at most n+1 for a fixed n): compute each once for all k.
    pairs, inverse = np.unique(np.stack([n_arr, c_arr], axis=1), axis=0, return_inverse=True)
    for j, (nn, cc) in enumerate(pairs):
        i = np.arange(nn - cc + 1, nn + 1, dtype=float)  # empty when c = 0 -> Pass@k = 0
        val = 1.0 - np.prod(1.0 - ks[:, None] / i[None, :], axis=1)
        val[nn - cc < ks] = 1.0  # every k-subset holds a correct sample
        out[inverse.reshape(-1) == j] = val
    if scalar:
        return float(out[0, 0])
    return out[:, 0] if np.ndim(k) == 0 else out
