"""Fused row normalisation: the pattern every op in gnc_ext follows.

1. A ``torch.library.custom_op`` whose real kernel allocates outputs with torch and
   calls the native core (CPU or CUDA, chosen by the native dispatcher).
2. ``register_fake`` describing output shapes/dtypes, so torch.compile traces it
   without a graph break.
3. ``register_autograd`` whose backward is itself a custom op (native kernel).
4. A public Python function that validates its inputs and calls the op.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _validate
from .._native import native, stream_of, view


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("gnc_ext::normalize_rows", mutates_args=(), device_types=("cpu", "cuda"))
def _normalize_rows_op(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    norm = torch.empty(x.shape[0], dtype=_acc_dtype(x.dtype), device=x.device)
    native.normalize_rows_forward(view(x), view(y), view(norm), float(eps), stream_of(x))
    # the kernel writes NaN as the norm of a row holding NaN/Inf: an O(rows) check
    if _validate.config.check_finite and x.shape[0] > 0 and not bool(torch.isfinite(norm).all()):
        raise ValueError("X: contains NaN or Inf values (or a row whose norm overflows)")
    if eps == 0.0 and x.shape[0] > 0 and bool((norm == 0).any()):
        raise ValueError("X: contains an all-zero row; with eps=0 it cannot be normalised (use eps > 0)")
    lim = 1.0 / torch.finfo(norm.dtype).max  # 1/floor overflows below this (fp32: 2.9e-39)
    if eps < lim and x.shape[0] > 0:  # never with the default eps: no extra pass
        small = norm.clamp_min(eps) < lim
        if bool(small.any()):
            i = int(small.nonzero()[0, 0])
            raise ValueError(f"X: row {i} has norm {float(norm[i]):.3g}, too small to normalise in "
                             f"{str(norm.dtype).replace('torch.', '')} (its reciprocal overflows); "
                             f"use eps >= {lim:.2g} or float64 input")
    return y, norm


@_normalize_rows_op.register_fake
def _(x: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        (x.shape[0],), dtype=_acc_dtype(x.dtype)
    )


@torch.library.custom_op(
    "gnc_ext::normalize_rows_backward", mutates_args=(), device_types=("cpu", "cuda")
)
def _normalize_rows_backward_op(grad: Tensor, x: Tensor, norm: Tensor, eps: float) -> Tensor:
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    native.normalize_rows_backward(view(x), view(norm), view(grad), view(dx), float(eps), stream_of(x))
    return dx


@_normalize_rows_backward_op.register_fake
def _(grad: Tensor, x: Tensor, norm: Tensor, eps: float) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, eps = inputs
    _, norm = output
    ctx.save_for_backward(x, norm)
    ctx.eps = eps


def _backward(ctx, grad_y, grad_norm):
    x, norm = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        if grad_y is None:
            grad_y = torch.zeros_like(x)
        dx = _normalize_rows_backward_op(grad_y.to(x.dtype), x, norm, ctx.eps)
        if grad_norm is not None:
            # d||x|| / dx = x / ||x|| (0 for a zero row, the subgradient of choice)
            safe = torch.where(norm > 0, norm, torch.ones_like(norm))
            dx = dx + (grad_norm / safe).unsqueeze(1).to(x.dtype) * x
    return dx, None


torch.library.register_autograd(
    "gnc_ext::normalize_rows", _backward, setup_context=_setup_context
)


def normalize_rows(X: Tensor, eps: float = 1e-12) -> Tensor:
    """Return ``X`` with each row divided by ``max(‖row‖₂, eps)`` (like ``F.normalize(X, dim=1)``).

    One fused native pass (C++/OpenMP on CPU, a warp per row on CUDA); the square sum is
    accumulated in fp64 on both devices. Differentiable:
    the backward is ``(dY − Y⟨Y, dY⟩)/‖x‖`` for rows with ``‖x‖ > eps`` and ``dY/eps``
    otherwise, exactly the gradient of the clamped formula.

    Args:
        X: (N, d) float32/float64/float16/bfloat16 tensor on CPU or CUDA; any strides.
        eps: floor on the norm, ``>= 0``. With ``eps = 0`` an all-zero row is an error, and
            so is a row whose ``max(norm, eps)`` is below ``1/finfo.max`` of the accumulation
            type (fp32: 2.9e-39; its reciprocal would overflow).

    Returns:
        A contiguous (N, d) tensor of X's dtype and device.

    Raises:
        TypeError: X is not a floating tensor; ValueError: X is not 2-D, empty, or has
        NaN/Inf, or eps is negative.
    """
    _validate.tensor(X, "X", ndim=2)
    eps = _validate.positive_float(eps, "eps", allow_zero=True)
    return torch.ops.gnc_ext.normalize_rows(X, eps)[0]


def normalize_rows_named(X: Tensor, name: str) -> Tensor:
    """:func:`normalize_rows` with its errors naming the caller's argument ``name``
    (normalize_rows calls its input ``X``)."""
    try:
        return normalize_rows(X)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if msg.startswith("X:"):
            raise type(e)(name + msg[1:]) from None
        raise


def unit_rows_f64(X: Tensor, name: str) -> Tensor:
    """Float64 copy of a finite (K, d) tensor (on X's device, detached) with unit rows,
    robust to rows whose plain norm would overflow or underflow: each row is first
    divided by its largest magnitude. An all-zero row is a ValueError naming ``name``.
    For the small float64 post-processing of the metrics and solvers (not a training op)."""
    A = X.detach().to(torch.float64)
    m = A.abs().amax(dim=1, keepdim=True)
    if bool((m == 0).any()):
        raise ValueError(f"{name}: row {int(torch.nonzero(m.flatten() == 0)[0])} is zero (it has no direction)")
    A = A / m
    return A / A.norm(dim=1, keepdim=True)
