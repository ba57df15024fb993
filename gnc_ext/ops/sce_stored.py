"""Spherical cross-entropy, **stored-exponent** strategy (``config.sce_strategy = "stored"``).

Every logit is a cosine, or a margin-adjusted cosine, over τ, so none exceeds 1/τ and the
softmax can be shifted by that constant instead of a running max:
``E_ik = exp((s_ik − 1)/τ) ∈ (0, 1]``. The forward writes E once (B × K) together with
per-row sums: the non-target sum ``N_i = Σ_{k≠y} E_ik`` (the target column is left out and
stored as 0), the target term ``T_i = exp((φ(s_iy) − 1)/τ)`` (added in float64), and
``Σ_{k≠y} s_ik`` for label smoothing. Then ``loss_i = log1p(N_i/T_i)`` (``log(N+T) − log T``
if the ratio overflows) and ``lse_i = 1/τ + log(N_i + T_i)``.

The backward needs no recompute and no gradient tile. With upstream ``g_i``,
``a_i = g_i/(τ Z_i)`` (``Z = N + T``), ``r_i = g_i ε/(Kτ)`` (label smoothing) and the target
entry ``c_i = g_i (ε − ε/K − N_i/Z_i) φ'(s_iy)/τ``::

    dL/dS = diag(a)·E − r·1ᵀ + Σ_i (c_i + r_i) e_i e_{y_i}ᵀ

so ``dĤ = diag(a)·(E·Ŵ) − r·(1ᵀŴ) + (c + r)∘Ŵ[y]`` and ``dŴ = Eᵀ·(diag(a)·Ĥ) − 1·(rᵀĤ) +``
(sparse target rows): two plain GEMMs on E. E is stored with ``1/max(‖w_k‖, eps)`` folded
into its columns, ``E' = E·diag(1/n)``, so ``E'·W = E·Ŵ`` and ``E'ᵀ·X = dŴ/n``: no K × d Ŵ
exists, and the normalisation backward reduces to its radial part, one row-wise pass
(native ``sce_stored_dw``: ``dW_k = X_k − ŵ_k⟨ŵ_k, X_k⟩``).

Underflow: a row whose shifted logits are all below −60 (float32/bfloat16 storage; −600
for float64; possible only when τ < 2/60) would lose its sums to underflow. Such rows
are detected from the row maximum the forward keeps and recomputed with the exact
online-max shift σ_i = that maximum (one more GEMM pass over those rows only):
``E_ik = exp((s_ik − 1)/τ − σ_i)``, ``lse_i = 1/τ + σ_i + log Z_i``.

Storage dtype (:func:`storage_dtype`): bfloat16 for bfloat16 inputs (its relative error
2^-9 per entry is below that of the bf16 cosines), float32 / float64 for float32 /
float64 inputs (so that the gradient keeps their precision), or bfloat16 for float32
inputs too with ``config.sce_stored_dtype = "bfloat16"``; float16 inputs use the
recompute strategy (1/‖w‖ can exceed float16's range). Memory beyond the inputs: E (B·K elements), dW, O(B·d + K),
one fp32 (B × chunk) tile in the forward and per class block one (chunk × d) block in the
backward. Deterministic (native epilogues reduce each row in a fixed order; class
repeats of the target rows are summed by a sorted, deterministic scatter).

Ops: ``spherical_ce_stored(Hn, W, y, tau, ignore_index, label_smoothing, margin,
margin_type, normalize_w, chunk) -> (loss_rows, E, stats, inv_n)`` (Hn: unit rows, W: raw
weights, normalised inside when ``normalize_w``) and its backward
``spherical_ce_stored_backward``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import _validate
from .._native import native, stream_of, view
from .tiles import (NORM_EPS, BlockNorms, acc_dtype, autocast_off, check_labels, col_chunk, cos_tile, mm_acc,
                    rows_sum_by_index)

# Rows whose largest shifted logit (s − 1)/τ lies below this are recomputed with their
# own shift (float32 exp underflows below −87; −60 leaves every term within e^-27 of the
# row's largest one representable, far below fp32's relative precision).
UNDERFLOW_LIMIT = {torch.float32: -60.0, torch.bfloat16: -60.0, torch.float64: -600.0}


def storage_dtype(dtype: torch.dtype):
    """The dtype E is stored in for inputs of ``dtype`` (None: not supported, float16):
    ``config.sce_stored_dtype`` "auto" keeps the input precision (bfloat16 / float32 /
    float64); "bfloat16" stores float32 inputs' E in bfloat16 as well (half the memory,
    gradients to ~2^-9 relative per entry instead of float32's)."""
    if dtype == torch.float32 and _validate.config.sce_stored_dtype == "bfloat16":
        return torch.bfloat16
    return {torch.bfloat16: torch.bfloat16, torch.float32: torch.float32, torch.float64: torch.float64}.get(dtype)


def stored_bytes(B: int, K: int, dtype: torch.dtype) -> int:
    """Bytes of the B × K store for inputs of ``dtype`` (0 when not supported)."""
    sd = storage_dtype(dtype)
    return 0 if sd is None else B * K * torch.empty(0, dtype=sd).element_size()


def _phi(ct: Tensor, margin: float, margin_type: int) -> Tensor:
    if margin_type == 1 and margin > 0:
        return ct - margin
    if margin_type == 2 and margin > 0:
        sin = torch.sqrt(torch.clamp(1 - ct * ct, min=1e-12))
        return torch.where(ct > math.cos(math.pi - margin), ct * math.cos(margin) - sin * math.sin(margin),
                           ct - margin * math.sin(margin))
    return ct


def _dphi(ct: Tensor, margin: float, margin_type: int) -> Tensor:
    if margin_type == 2 and margin > 0:
        s2 = 1 - ct * ct
        d = torch.where(s2 > 1e-12, math.cos(margin) + math.sin(margin) * ct / torch.sqrt(s2.clamp_min(1e-12)),
                        torch.full_like(ct, math.cos(margin)))
        return torch.where(ct > math.cos(math.pi - margin), d, torch.ones_like(ct))
    return torch.ones_like(ct)


def _inv_norms(W: Tensor, normalize_w: bool, chunk: int) -> Tensor:
    """1/max(‖w_k‖, eps) (K,) in the accumulation dtype, one block of classes at a time
    (no K × d temporary); NaN/Inf in W raise ValueError."""
    acc = acc_dtype(W.dtype)
    K = W.shape[0]
    if not normalize_w:
        return torch.ones(K, dtype=acc, device=W.device)
    n = torch.empty(K, dtype=acc, device=W.device)
    norms = BlockNorms(True)
    for s in range(0, K, chunk):
        Wc = W[s:s + chunk]
        n_c = torch.linalg.vector_norm(Wc if Wc.dtype == acc else Wc.to(acc), dim=1)
        norms.add(n_c)
        n[s:s + chunk] = n_c
    norms.raise_if_bad()
    return 1.0 / n.clamp_min(NORM_EPS)


def exp_workspace(rows: int, cols: int, device) -> Tensor:
    """The float64 workspace of the native ``sce_stored_exp`` epilogue for tiles of at most
    ``rows`` × ``cols``, allocated by torch (its caching allocator) on ``device``: the CUDA
    kernels' per-block partial row sums; empty on the CPU, which needs none. One workspace
    serves every tile of a pass (the launches reuse it in stream order)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.empty(0, dtype=torch.float64)
    return torch.empty(native.sce_stored_exp_workspace_doubles(int(rows), int(cols)), dtype=torch.float64,
                       device=device)


def _exp_pass(Hn: Tensor, Ha: Tensor, W: Tensor, y: Tensor, inv_n: Tensor, shift: Tensor, E: Tensor,
              state: Tensor, tau: float, ignore_index: int, chunk: int, st) -> None:
    """One GEMM pass over the classes: tiles Ĥ·W_cᵀ (fp32/fp64; Hn the unit rows in the
    input dtype, Ha the same in the accumulation dtype) handed to the native
    ``sce_stored_exp`` epilogue, which writes E[:, c] and adds to the row state."""
    ws = exp_workspace(Hn.shape[0], min(chunk, W.shape[0]), Hn.device)
    for s in range(0, W.shape[0], chunk):
        Wc = W[s:s + chunk]
        tile = cos_tile(Ha, Hn, Wc, Ha.dtype)
        native.sce_stored_exp(view(tile), view(inv_n[s:s + chunk]), view(y), s, view(shift), view(E[:, s:s + chunk]),
                              view(state), tau, ignore_index, view(ws), st)
        tile = Wc = None


@torch.library.custom_op("gnc_ext::spherical_ce_stored", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_stored(Hn: Tensor, W: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
                margin: float, margin_type: int, normalize_w: bool, chunk: int
                ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    B, K = Hn.shape[0], W.shape[0]
    check_labels(y, K, True, ignore_index)
    sd = storage_dtype(W.dtype)
    if sd is None or Hn.dtype != W.dtype:
        raise TypeError(f"W: the stored strategy takes float32/float64/bfloat16 inputs, got {W.dtype}")
    acc = acc_dtype(Hn.dtype)
    st = stream_of(Hn)
    c = chunk or col_chunk(B, K, Hn.is_cuda, W.shape[1])
    inv_n = _inv_norms(W, normalize_w, c)
    Ha = Hn.to(acc).contiguous()
    E = torch.empty((B, K), dtype=sd, device=Hn.device)
    state = torch.zeros((B, 4), dtype=torch.float64, device=Hn.device)
    state[:, 3] = -math.inf
    shift = torch.zeros(B, dtype=torch.float64, device=Hn.device)
    _exp_pass(Hn, Ha, W, y, inv_n, shift, E, state, tau, ignore_index, c, st)
    valid = y != ignore_index
    ct = torch.where(valid, state[:, 2], torch.zeros_like(state[:, 2]))
    zt = (_phi(ct, margin, margin_type) - 1.0) / tau  # the target's shifted logit
    rowmax = torch.maximum(state[:, 3], zt)
    low = valid & (rowmax < UNDERFLOW_LIMIT[sd])
    u = low.nonzero().squeeze(1)
    if u.numel() > 0:  # exact online-max path for the rows whose sums would underflow
        Hu, Hau, yu = Hn[u].contiguous(), Ha[u].contiguous(), y[u].contiguous()
        st_u = torch.zeros((u.numel(), 4), dtype=torch.float64, device=Hn.device)
        st_u[:, 3] = -math.inf
        Eu = torch.empty((u.numel(), K), dtype=sd, device=Hn.device)
        _exp_pass(Hu, Hau, W, yu, inv_n, rowmax[u].contiguous(), Eu, st_u, tau, ignore_index, c, st)
        E[u] = Eu
        state[u] = st_u
        shift[u] = rowmax[u]
        Eu = None
    N, sum_s = state[:, 0], state[:, 1]
    T = torch.exp(zt - shift)
    Z = N + T
    ratio = N / T
    ce = torch.where(torch.isfinite(ratio), torch.log1p(ratio), torch.log(Z) - (zt - shift))
    if label_smoothing > 0:
        lse = 1.0 / tau + shift + torch.log(Z)
        mean_z = (sum_s + _phi(ct, margin, margin_type)) / (tau * K)
        loss = (1.0 - label_smoothing) * ce + label_smoothing * (lse - mean_z)
    else:
        loss = ce
    zero = torch.zeros_like(loss)
    loss = torch.where(valid, loss, zero)
    stats = torch.stack([torch.where(valid, Z, torch.ones_like(Z)), torch.where(valid, N / Z, zero), ct], 1)
    return loss.to(acc), E, stats, inv_n


@_sce_stored.register_fake
def _(Hn, W, y, tau, ignore_index, label_smoothing, margin, margin_type, normalize_w, chunk):
    B, K = Hn.shape[0], W.shape[0]
    acc = acc_dtype(Hn.dtype)
    sd = storage_dtype(W.dtype) or W.dtype
    return (Hn.new_empty((B,), dtype=acc), Hn.new_empty((B, K), dtype=sd), Hn.new_empty((B, 3), dtype=torch.float64),
            Hn.new_empty((K,), dtype=acc))


@torch.library.custom_op("gnc_ext::spherical_ce_stored_backward", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_stored_bwd(grad_rows: Tensor, Hn: Tensor, W: Tensor, y: Tensor, E: Tensor, stats: Tensor, inv_n: Tensor,
                    tau: float, ignore_index: int, label_smoothing: float, margin: float, margin_type: int,
                    normalize_w: bool, chunk: int, need_h: bool, need_w: bool) -> Tuple[Tensor, Tensor]:
    B, K = Hn.shape[0], W.shape[0]
    acc = acc_dtype(Hn.dtype)
    st = stream_of(Hn)
    valid = y != ignore_index
    g = torch.where(valid, grad_rows.to(torch.float64), torch.zeros_like(grad_rows, dtype=torch.float64))
    Z, q, ct = stats[:, 0], stats[:, 1], stats[:, 2]
    eps = label_smoothing
    a = g / (tau * Z)                                   # dense scale of E's row i
    r = g * (eps / (K * tau))                           # rank-one (label smoothing) per row
    corr = g * (eps - eps / K - q) * _dphi(ct, margin, margin_type) / tau + r  # target entry (+ r: E is 0 there)
    corr = torch.where(valid, corr, torch.zeros_like(corr))
    Ha = Hn.to(acc)
    c = chunk or col_chunk(B, K, Hn.is_cuda, W.shape[1])
    ysafe = torch.where(valid, y, torch.zeros_like(y))
    dH, dW = Hn.new_empty(0), W.new_empty(0)
    d = W.shape[1]
    ad, rd = a.to(acc), r.to(acc)
    if need_h:
        EW = torch.zeros((B, d), dtype=acc, device=W.device)  # E·Ŵ (E carries 1/‖w‖)
        u = torch.zeros(d, dtype=acc, device=W.device)        # 1ᵀŴ = (1/n)ᵀ W
    if need_w:
        v = (rd[:, None] * Ha).sum(0)                          # Σ_i r_i ĥ_i (d,)
        aH = ad[:, None] * Ha                                  # diag(a)·Ĥ
        aH16 = aH.to(E.dtype) if E.dtype == W.dtype else aH    # 16-bit GEMM operand for a 16-bit store
        cls, S = rows_sum_by_index(y[valid], corr.to(acc)[valid][:, None] * Ha[valid])
        S = S * inv_n[cls][:, None]                            # the sparse target rows, divided by n like E'ᵀ·X
        dW = torch.empty(W.shape, dtype=W.dtype, device=W.device)
    for s in range(0, K, c):  # one pass over E and W, a block of classes at a time
        e = min(K, s + c)
        Ec, Wc = E[:, s:e], W[s:e]
        if Ec.dtype != Wc.dtype:  # a 16-bit store of wider inputs: the block upcast
            Ec = Ec.to(acc)
        if need_h:
            if Ec.dtype == acc:
                EW.addmm_(Ec, Wc.to(acc))
            else:
                EW += mm_acc(Ec, Wc, acc)
            if eps > 0:
                u += inv_n[s:e] @ Wc.to(acc)
        if need_w:
            X = Ec.T @ aH if Ec.dtype == acc else mm_acc(Ec.T, aH16, acc)  # = dŴ_c / n_c (dense part)
            lo, hi = int(torch.searchsorted(cls, s)), int(torch.searchsorted(cls, e))  # cls: sorted, distinct
            if hi > lo:
                X[cls[lo:hi] - s] += S[lo:hi]
            native.sce_stored_dw(view(X), view(Wc), view(inv_n[s:e]), view(v), view(dW[s:e]), NORM_EPS,
                                 normalize_w, st)
            X = None
        Ec = Wc = None
    if need_h:
        Wy = W[ysafe].to(acc) * inv_n[ysafe][:, None]  # Ŵ[y] as folded into E
        dH = (ad[:, None] * EW - rd[:, None] * u[None, :] + corr.to(acc)[:, None] * Wy).to(Hn.dtype)
    return dH, dW


@_sce_stored_bwd.register_fake
def _(grad_rows, Hn, W, y, E, stats, inv_n, tau, ignore_index, label_smoothing, margin, margin_type, normalize_w,
      chunk, need_h, need_w):
    dH = torch.empty_like(Hn, memory_format=torch.contiguous_format) if need_h else Hn.new_empty(0)
    dW = torch.empty_like(W, memory_format=torch.contiguous_format) if need_w else W.new_empty(0)
    return dH, dW


def _setup(ctx, inputs, output):
    Hn, W, y, tau, ignore_index, ls, margin, mt, normalize_w, chunk = inputs
    _, E, stats, inv_n = output
    ctx.save_for_backward(Hn, W, y, E, stats, inv_n)
    ctx.args = (tau, ignore_index, ls, margin, mt, normalize_w, chunk)
    ctx.mark_non_differentiable(E, stats, inv_n)


def _backward(ctx, grad_rows, g_E, g_stats, g_inv):
    Hn, W, y, E, stats, inv_n = ctx.saved_tensors
    need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    none = (None,) * 8
    if grad_rows is None or not (need_h or need_w):
        return (None, None) + none
    dH, dW = _sce_stored_bwd(grad_rows, Hn, W, y, E, stats, inv_n, *ctx.args, need_h, need_w)
    return (dH if need_h else None), (dW if need_w else None), *none


torch.library.register_autograd("gnc_ext::spherical_ce_stored", _backward, setup_context=_setup)
