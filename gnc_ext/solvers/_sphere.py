"""Riemannian-step utilities on products of unit spheres (S^{d-1})^K.

A point of the product is a (..., K, d) tensor with unit rows. These helpers are shared
by the code solvers (Tammes here; the Softmax Code solver reuses them): random starts,
tangent projection, retraction, per-row tangent bases for linearised (LP) steps, and
pairwise cosines with the diagonal masked.

All functions are pure torch/numpy, work on any leading batch shape, and are written
for float64 (they also run in float32, at float32 accuracy).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch


def normalize(X: torch.Tensor, eps: float = 1e-300) -> torch.Tensor:
    """Rows scaled to unit norm (the retraction onto the product of spheres)."""
    return X / X.norm(dim=-1, keepdim=True).clamp_min(eps)


def random_points(
    batch: int, K: int, d: int, *, generator: Optional[torch.Generator] = None,
    device=None, dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``batch`` independent uniform random configurations: a (batch, K, d) tensor of
    unit rows (normalised Gaussians, drawn on the CPU from ``generator`` so that a seed
    gives the same points on every device, then moved to ``device``)."""
    X = torch.randn(batch, K, d, generator=generator, dtype=torch.float64)
    return normalize(X).to(device=device, dtype=dtype)


def tangent(X: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Project ambient vectors G onto the tangent spaces at the unit rows X:
    ``G - <G, x> x`` row-wise (the Riemannian gradient of a function with ambient
    gradient G)."""
    return G - (G * X).sum(dim=-1, keepdim=True) * X


def retract(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Step along tangent vectors V and map back to the spheres: ``normalize(X + V)``.
    (A second-order retraction: it agrees with the exponential map to O(|V|^2).)"""
    return normalize(X + V)


def pairwise_cos(X: torch.Tensor, fill: float = -2.0) -> torch.Tensor:
    """Cosines ``X X^T`` of a (..., K, d) batch with the diagonal set to ``fill``
    (default -2, below every cosine, so ``.amax`` gives the largest off-diagonal one).
    Memory: a (..., K, K) tensor."""
    C = X @ X.transpose(-1, -2)
    K = X.shape[-2]
    eye = torch.eye(K, dtype=torch.bool, device=X.device)
    return C.masked_fill(eye, fill)


def max_cos(X: torch.Tensor) -> torch.Tensor:
    """Largest pairwise cosine of each configuration (the cosine of its minimal angle)."""
    return pairwise_cos(X).amax(dim=(-1, -2))


def tangent_bases(W: np.ndarray) -> np.ndarray:
    """Orthonormal bases of the tangent spaces at the unit rows of W (K, d), as a
    (K, d, d-1) float64 array: column j of ``B[k]`` is orthogonal to ``W[k]``.

    Built from the Householder reflection that maps ``W[k]`` to ``-sign(W[k,0]) e_1``:
    its columns 2..d span ``W[k]^perp``. Stable for every unit vector (the reflection
    vector ``w + sign(w_0) e_1`` has norm >= 1)."""
    W = np.asarray(W, dtype=np.float64)
    K, d = W.shape
    s = np.where(W[:, 0] >= 0, 1.0, -1.0)
    v = W.copy()
    v[:, 0] += s
    vn2 = (v * v).sum(axis=1)
    H = np.eye(d)[None, :, :] - 2.0 * v[:, :, None] * v[:, None, :] / vn2[:, None, None]
    return H[:, :, 1:]


def pairs_above(C: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose cosine ``C[i, j]`` is >= threshold."""
    iu, ju = np.nonzero(np.triu(C >= threshold, k=1))
    return iu, ju


class small_problem_threads:
    """Context manager: run torch single-threaded on the CPU while the batched tensors
    are small (``numel < limit``), restoring the thread count afterwards.

    The smoothed phases work on (batch, K, K) tensors of a few thousand to a few
    million elements, far below the size where intra-op parallelism pays; on a loaded
    2-core machine the default 2 threads made the Tammes solver several times slower
    (benchmarks/RESULTS.md).
    ``torch.set_num_threads`` is process-wide, so other threads of the process run
    single-threaded for the duration too.
    """

    def __init__(self, device: torch.device, numel: int, limit: int = 1 << 22):
        self.active = device.type == "cpu" and numel < limit
        self.prev = None

    def __enter__(self):
        if self.active:
            self.prev = torch.get_num_threads()
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            torch.set_num_threads(self.prev)
        return False


def initial_codes(init, K: int, d: int, restarts: int, name: str = "init") -> list:
    """Validate user-given starting codes: None, one (K, d) tensor/array, or a sequence of
    them. Returns a list of float64 numpy arrays with unit rows; raises TypeError /
    ValueError naming ``name`` (wrong type or shape, non-finite values, a zero row), and
    ValueError naming ``restarts`` when it is 0 without any code to polish."""
    items = [] if init is None else (list(init) if isinstance(init, (list, tuple)) else [init])
    if restarts == 0 and not items:
        raise ValueError("restarts: expected >= 1 (0 is allowed only with init= codes to polish)")
    out = []
    for i, x in enumerate(items):
        label = name if len(items) == 1 and not isinstance(init, (list, tuple)) else f"{name}[{i}]"
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{label}: expected a (K, d) torch.Tensor or numpy array, got {type(x).__name__}")
        if not (x.is_floating_point()):
            raise TypeError(f"{label}: expected a floating-point tensor, got {str(x.dtype).replace('torch.', '')}")
        if tuple(x.shape) != (K, d):
            raise ValueError(f"{label}: expected shape ({K}, {d}), got {tuple(x.shape)}")
        X = x.detach().to("cpu", torch.float64)
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"{label}: contains NaN or Inf values")
        n = X.norm(dim=1, keepdim=True)
        if bool((n == 0).any()):
            raise ValueError(f"{label}: has a zero row (codewords must be nonzero; they are normalised)")
        out.append((X / n).numpy().copy())
    return out
