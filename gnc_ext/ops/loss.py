"""Spherical cross-entropy and HardMax losses as ``torch.library`` custom ops.

Both run on the similarity-reduce engine (DESIGN.md): the cosine matrix ``S = Ĥ·Ŵᵀ``
(B × K) is produced one tile at a time by a GEMM and consumed at once by a native
epilogue (``csrc/cpu/loss.cpp``, CUDA twin ``csrc/cuda/loss.cu``); the B × K matrix
never exists.

Ops (namespace ``torch.ops.gnc_ext``):

``spherical_ce_rows(Hn, Wn, y, tau, ignore_index, label_smoothing, margin, margin_type, chunk)``
    Per-row losses of unit-norm inputs, **recompute** strategy. Forward streams tiles of
    ``chunk`` classes and keeps O(B) state (running max, running sum of exp over the
    non-target classes, target cosine, sum of logits); it returns ``(loss_rows, stats)`` with ``stats`` (B × 2) the
    row log-sum-exp and the non-target mass ``1 − p_y`` (see :func:`_finish`). Backward
    (``spherical_ce_rows_backward``) recomputes every tile, turns it into
    ``g = dL/dS`` in place and accumulates ``dĤ += g·Ŵ_tile``, ``dŴ_tile = gᵀ·Ĥ``
    (fp32; fp64 for fp64 inputs). Extra memory: one (B × chunk) tile plus the
    gradients. 4 GEMM passes (2 forward-equivalent + 2 backward).

``spherical_ce_fused(H, W, y, ..., normalize, reduction, need_h, need_w, row_chunk)``
    **Gradient-in-forward** strategy for ``reduction`` mean/sum when autograd needs
    gradients: blocks of ``row_chunk`` rows see all K classes in one (rows × K) tile,
    so the row's log-sum-exp is final inside the block and the tile is turned into
    ``g`` right away: 3 GEMM passes instead of 4 (the same flops as the eager recipe).
    It normalises inside: H through the native ``normalize_rows`` kernel; W's
    normalisation is folded into the tile as a column scale by ``1/max(‖w_k‖, eps)``
    (so Ŵ is never stored); both backward passes use the native
    ``normalize_rows_backward`` kernel (in place on dŴ). Returns ``(loss, dH, dW)``,
    the gradients for an upstream gradient of 1; the autograd formula scales them by
    the upstream scalar (no copy when it is 1 in eager mode). Memory beyond the inputs:
    dW (K × d, the gradient itself), one (row_chunk × K) fp32 tile
    (``FUSED_TILE_BYTES``, 256 MiB), O(B·d + K). This is the CPU default.

``spherical_ce_rows_nw(Hn, W, y, ...)`` (and ``spherical_ce_rows_nw_backward``)
    The recompute strategy with the **raw** class weights W, what the public
    ``normalize=True`` path uses (unless an opt-in fused CUDA kernel is selected, see
    :func:`w_blockwise`): every block of classes is normalised when its tile is formed
    (native ``normalize_rows`` on the block: bit-for-bit the rows a whole-W normalisation
    gives), and in the backward each block's dŴ_c goes through the native
    ``normalize_rows_backward`` kernel straight into dW[block]. Ŵ and dŴ never exist as
    K × d tensors: memory beyond the inputs is dW, dH and per block one (B × chunk) fp32
    tile (its 16-bit copy for the tensor-core products) and two (chunk × d) blocks.

``hardmax_rows(Hn, Wn, y, chunk)``
    ``(values, arg)``: ``values_i = max_{k≠y_i} s_ik − s_iy_i`` and ``arg_i`` the
    maximising class (lowest index among ties). Its backward is sparse:
    ``dĤ_i = u_i (ŵ_{arg_i} − ŵ_{y_i})``, ``dŴ`` gets ``±u_i ĥ_i`` at rows arg_i / y_i.
    With labels outside [0, K) nothing is masked and ``arg`` is the plain argmax
    (``nn.SphericalCELoss.predict``). ``hardmax_rows_nw(Hn, W, y, chunk)`` takes the raw
    weights and normalises block by block (the public ``normalize=True`` path); both
    backward through ``hardmax_rows_backward``, which sums repeated classes with a
    deterministic sort-based scatter and, for raw W, takes only the (≤ 2B) touched rows
    through the normalisation.

Strategy switch: :data:`STRATEGY` (``"auto"``: gradient-in-forward on CPU for mean/sum
when gradients are needed, recompute otherwise and always on CUDA; ``"recompute"``;
``"grad_in_forward"``). Determinism: every path is deterministic (no floating-point
atomics: CPU epilogues parallelise over rows; the CUDA epilogues reduce inside one
block per row; the GEMMs are torch's).

CUDA status: the default CUDA path is the chunked one (cuBLAS through torch + the
native epilogue kernels of ``csrc/cuda/loss.cu``), recompute strategy. A fused forward
kernel (``csrc/cuda/loss_fused.cu``, opt-in via :data:`CUDA_FORWARD` = "fused") keeps
each 64 × 64 logits tile in shared memory; a fused backward (same file, opt-in via
:data:`CUDA_BACKWARD` = "fused") recomputes each cosine tile, turns it into
``g = dL/dS`` in shared memory (exactly ``sce_grad``'s formula) and accumulates
``dĤ = g·Ŵ`` (blocks over row tiles × class splits, merged in a fixed order) and
``dŴ = gᵀ·Ĥ`` (blocks over class tiles) in block-private fp32 workspaces: deterministic,
no atomics, the logits never reach global memory. Its second products use bf16 tensor-core
operands for bf16/fp16 inputs (g rounded to bf16: fp32 range, ~2^-9 relative rounding)
and plain fp32 FMA for fp32. On an H200 (2026-11-30) every CUDA test passes for both
paths (the loss tests also ran with the fused kernels as defaults), but the fused
kernels are slower than the chunked path (B=512, d=512, K=1M, bf16: 92.7 ms vs 16.7 ms),
so "chunked" stays the default. With 16-bit inputs the chunked backward's two products
run on the tensor cores (:data:`LOWP_GRAD_GEMM`).
fp32 precision on CUDA: :data:`CUDA_FP32_MODE` picks the chunked (recompute) path's
fp32 GEMMs: "ieee" (default; torch's GEMMs, which follow
``torch.backends.cuda.matmul.allow_tf32``, False by default: full fp32), "tf32" (the
fast mode, ~1e-3 relative error in the cosines) or "3xtf32" (error-compensated TF32:
three tensor-core GEMMs on hi/lo splits, fp32-level accuracy; verified on CPU with
emulated TF32 rounding and on an H200, where it is slower than "ieee": 82 ms vs 60 ms
at B=512, d=512, K=1M; "tf32" took 24.7 ms). The fused forward kernel uses plain
fp32 FMA (full fp32 accuracy, no TF32, no error compensation).
"""
from __future__ import annotations

import math
import os
from typing import Tuple

import torch
from torch import Tensor

from .. import _engine, _validate
from .._native import native, stream_of, view

# "auto" | "recompute" | "grad_in_forward" (see the module docstring)
STRATEGY = "auto"
# CUDA forward of the recompute strategy: "chunked" (cuBLAS tile + native epilogue, the
# default) or "fused" (csrc/cuda/loss_fused.cu: GEMM tile and online log-sum-exp in one
# kernel, logits only in shared memory; bf16/fp16 on tensor cores via WMMA, fp32 by
# plain fp32 FMA). Checked on an H200 against the chunked path
# (python_tests/test_loss.py::test_cuda_fused_forward_matches_chunked passes) but slower
# than it, hence opt-in.
# The initial value comes from the environment variable GNC_LOSS_CUDA_FORWARD (default
# "chunked"), so a whole test run can exercise the fused kernels (scripts/device_check.sh).
CUDA_FORWARD = os.environ.get("GNC_LOSS_CUDA_FORWARD", "chunked")
# CUDA backward of the recompute strategy: "chunked" (per tile: cuBLAS GEMM, sce_grad
# epilogue, two cuBLAS GEMMs; the default) or "fused" (csrc/cuda/loss_fused.cu: each
# 64 x 64 cosine tile is recomputed and turned into dL/ds in shared memory, then
# multiplied into dĤ and dŴ by two deterministic kernels, no atomics; bf16/fp16 on
# tensor cores via WMMA with bf16 operands for the second products, fp32 by plain fp32
# FMA; float64 inputs always take the chunked path). Its tests pass on an H200
# (python_tests/test_loss.py::test_cuda_fused_backward_*), but it is slower than the
# chunked path there, hence opt-in.
# Initial value from the environment variable GNC_LOSS_CUDA_BACKWARD (default "chunked").
CUDA_BACKWARD = os.environ.get("GNC_LOSS_CUDA_BACKWARD", "chunked")


# Precision of the float32 GEMMs of the chunked CUDA path (cosine tiles and both
# gradient products), for float32 inputs on CUDA only:
#   "ieee"   (default) plain fp32 GEMMs as torch runs them (which follow
#            torch.backends.cuda.matmul.allow_tf32, False by default: full fp32);
#   "tf32"   one TF32 tensor-core GEMM per product (inputs rounded to 10 mantissa bits:
#            ~1e-3 relative error in the cosines; the fast mode);
#   "3xtf32" error-compensated TF32: x = hi + lo with hi = x truncated to TF32 (exact in
#            TF32) and lo = x - hi, then a.b ~ hi_a.hi_b + hi_a.lo_b + lo_a.hi_b (the
#            dropped lo.lo term and the TF32 rounding of lo are ~2^-21 relative): fp32-level
#            accuracy from three tensor-core GEMMs. Measured on an H200 (B=512, d=512,
#            K=1M): 82 ms vs 60 ms for "ieee" and 24.7 ms for "tf32" (the hi/lo splits and
#            three GEMM launches per tile cost more than they save), hence not the
#            default; its accuracy is tested on CPU by emulating TF32 rounding.
# Initial value from the environment variable GNC_LOSS_CUDA_FP32 (default "ieee").
CUDA_FP32_MODE = os.environ.get("GNC_LOSS_CUDA_FP32", "ieee")


def _fp32_mode(value: object) -> str:
    if value not in ("ieee", "tf32", "3xtf32"):
        raise ValueError(f"gnc_ext.ops.loss.CUDA_FP32_MODE: expected 'ieee', 'tf32' or '3xtf32', got {value!r}")
    return value


def split_tf32(x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(hi, lo)`` with ``hi`` = float32 ``x`` truncated to TF32 (the low 13 mantissa
    bits cleared, so exactly representable in TF32) and ``lo = x - hi`` (exact in fp32)."""
    hi = (x.contiguous().view(torch.int32) & -8192).view(torch.float32)  # -8192 = 0xFFFFE000
    return hi, x - hi


# TF32 on for fp32 CUDA matmuls inside the op (process-global flag; see _engine.tf32_on)
_tf32_on = _engine.tf32_on


def _mm_tf32(a: Tensor, b: Tensor) -> Tensor:
    """One TF32 GEMM (the place tests patch to emulate TF32 rounding on the CPU)."""
    return a @ b


def mm_fp32(a: Tensor, b: Tensor, mode: str) -> Tensor:
    """``a @ b`` for float32 operands in the given CUDA_FP32_MODE (see above); other
    dtypes and "ieee" are a plain matmul."""
    if mode == "ieee" or a.dtype != torch.float32 or b.dtype != torch.float32:
        return a @ b
    with _tf32_on():
        if mode == "tf32":
            return _mm_tf32(a, b)
        ah, al = split_tf32(a)
        bh, bl = split_tf32(b)
        out = _mm_tf32(al, bh)  # small terms first
        out += _mm_tf32(ah, bl)
        out += _mm_tf32(ah, bh)
        return out


def _gemm_mode(t: Tensor) -> str:
    """The fp32 GEMM mode for tensors on t's device ("ieee" off CUDA)."""
    return _fp32_mode(CUDA_FP32_MODE) if t.is_cuda and t.dtype == torch.float32 else "ieee"


def _cuda_mode(name: str, value: object) -> str:
    """Validates a CUDA path flag ("chunked" | "fused"), raising ValueError naming it."""
    if value not in ("chunked", "fused"):
        raise ValueError(f"gnc_ext.ops.loss.{name}: expected 'chunked' or 'fused', got {value!r}")
    return value


def w_blockwise(H: Tensor) -> bool:
    """Whether the recompute strategy normalises W block by block (``spherical_ce_rows_nw``):
    always, except on CUDA when an opt-in fused kernel (CUDA_FORWARD / CUDA_BACKWARD =
    "fused") takes Ŵ whole."""
    if H.device.type != "cuda" or H.dtype == torch.float64:
        return True
    return (_cuda_mode("CUDA_FORWARD", CUDA_FORWARD) == "chunked"
            and _cuda_mode("CUDA_BACKWARD", CUDA_BACKWARD) == "chunked")


# Memory budget of one fp32 similarity tile (bytes): recompute strategy (B × chunk)
# and gradient-in-forward strategy (rows × K; larger, so B=256, K=100k is one block).
TILE_BYTES = 32 * 2**20
CUDA_TILE_BYTES = 128 * 2**20  # B=512: 65,536 classes per tile (16 tiles at K=1M)
FUSED_TILE_BYTES = 256 * 2**20
# Minimum rows per block of the gradient-in-forward strategy (keeps the rank-r update
# of dŴ compute-bound: each block re-reads and re-writes dŴ once).
MIN_ROW_CHUNK = 32

MARGIN_CODES = {"cosface": 1, "arcface": 2}
NORM_EPS = 1e-12  # normalize_rows' default eps: zero rows map to zero vectors


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def col_chunk(rows: int, K: int, cuda: bool = False, d: int = 0) -> int:
    """Classes per tile of the recompute strategy (fp32 tile ≤ TILE_BYTES, or
    CUDA_TILE_BYTES on CUDA, where larger GEMMs and fewer launches pay). ``d``: the
    feature dimension when blocks of W are normalised on the fly (a block's Ŵ_c and dŴ_c
    are classes × d), so that those blocks stay within the budget as well."""
    budget = CUDA_TILE_BYTES if cuda else TILE_BYTES
    return _engine.chunk_size(max(rows, d), K, budget_bytes=budget, multiple=256)


def row_chunk(rows: int, K: int) -> int:
    """Rows per block of the gradient-in-forward strategy (fp32 rows × K tile)."""
    r = max(MIN_ROW_CHUNK, FUSED_TILE_BYTES // (4 * max(K, 1)))
    return int(min(max(rows, 1), r))


# ---------------------------------------------------------------- native drivers --
_MM_OUT_DTYPE_OK = None  # CUDA: does torch.mm(..., out_dtype=float32) work for 16-bit inputs?


def _mm_out_dtype(a: Tensor, b: Tensor, acc: torch.dtype):
    """``torch.mm(a, b, out_dtype=acc)`` (16-bit CUDA operands, fp32 result from the
    tensor-core GEMM), or None where this torch lacks it (probed once)."""
    global _MM_OUT_DTYPE_OK
    if not a.is_cuda or _MM_OUT_DTYPE_OK is False:
        return None
    try:
        t = torch.mm(a, b, out_dtype=acc)
    except (RuntimeError, TypeError, NotImplementedError):
        _MM_OUT_DTYPE_OK = False
        return None
    _MM_OUT_DTYPE_OK = True
    return t


def _cos_tile(Ha: Tensor, H16: Tensor, Wc: Tensor, acc: torch.dtype) -> Tensor:
    """(rows × c) tile ``H · Wcᵀ`` in ``acc`` dtype. 16-bit CUDA inputs use the tensor-core
    GEMM with fp32 output (``torch.mm(..., out_dtype=)``) when this torch has it (checked
    once, falling back to upcasting the chunk); everything else multiplies in ``acc``."""
    if Wc.dtype != acc:
        t = _mm_out_dtype(H16, Wc.T, acc)
        if t is not None:
            return t
    return mm_fp32(Ha, Wc.to(acc).T, _gemm_mode(Ha))


# 16-bit inputs on CUDA: the backward's two products (dH += G·Ŵ_c, dŴ_c = Gᵀ·Ĥ) run on
# the tensor cores with the gradient tile G rounded to the input dtype (fp32
# accumulation inside the GEMM; dH accumulated over class blocks in fp32 where torch
# has mm(..., out_dtype=float32)), as a bf16 training step does; the cosines and the
# softmax statistics stay fp32/fp64. "auto": on for CUDA 16-bit inputs; "on" forces it
# (tests use it on the CPU); "off" multiplies in fp32 (the upcast path, ~8x slower on an
# H200 at B=512, d=512, K=1M).
LOWP_GRAD_GEMM = os.environ.get("GNC_LOSS_LOWP_GRAD_GEMM", "auto")


def _lowp_grad_gemm(Hn: Tensor, Wn: Tensor) -> bool:
    if LOWP_GRAD_GEMM not in ("auto", "on", "off"):
        raise ValueError(f"gnc_ext.ops.loss.LOWP_GRAD_GEMM: expected 'auto', 'on' or 'off', got {LOWP_GRAD_GEMM!r}")
    lowp = Wn.dtype in (torch.float16, torch.bfloat16) and Hn.dtype == Wn.dtype
    if LOWP_GRAD_GEMM == "on":
        return lowp
    return LOWP_GRAD_GEMM == "auto" and lowp and Wn.is_cuda


def _mm_acc(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``a @ b`` for 16-bit operands with an ``acc`` (fp32) result: torch.mm(out_dtype=)
    where this torch has it on the device, else the 16-bit product upcast."""
    t = _mm_out_dtype(a, b, acc)
    return (a @ b).to(acc) if t is None else t


def _norm_chunk(Wc: Tensor, st) -> Tuple[Tensor, Tensor]:
    """``(Ŵ_c, ‖w‖)`` for a block of class rows, by the native ``normalize_rows`` kernel
    (the same rounding as normalising all of W at once, one block-sized copy)."""
    Wn_c = torch.empty(Wc.shape, dtype=Wc.dtype, device=Wc.device)
    n_c = torch.empty(Wc.shape[0], dtype=_acc(Wc.dtype), device=Wc.device)
    native.normalize_rows_forward(view(Wc), view(Wn_c), view(n_c), NORM_EPS, st)
    return Wn_c, n_c


class _BlockNorms:
    """Finiteness of W checked from the norms its blocks get anyway (no extra pass over
    W): a NaN/Inf entry, or a row whose norm overflows, makes that norm non-finite. The
    flag stays on the device until :meth:`raise_if_bad` (one synchronisation)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and _validate.config.check_finite
        self.bad = None

    def add(self, n: Tensor) -> None:
        if self.enabled:
            b = ~torch.isfinite(n).all()
            self.bad = b if self.bad is None else self.bad | b

    def raise_if_bad(self) -> None:
        if self.bad is not None and bool(self.bad):
            raise ValueError("W: contains NaN or Inf values (or a row whose norm overflows)")


def _fold_state(Hn: Tensor, Wn: Tensor, y: Tensor, tau: float, ignore_index: int, margin: float,
                margin_type: int, chunk: int, norm_w: bool = False, check_w: bool = False) -> Tensor:
    # norm_w: Wn holds the raw class weights W; each block of classes is normalised on
    # the fly (Ŵ never exists as a K × d tensor); check_w: raise ValueError naming W if
    # a block's norms show NaN/Inf (gnc_ext.config.check_finite)
    B, K = Hn.shape[0], Wn.shape[0]
    acc = _acc(Hn.dtype)
    state = torch.empty((B, 4), dtype=torch.float64, device=Hn.device)
    state[:, 0] = -math.inf
    state[:, 1:] = 0.0
    Ha = Hn.to(acc)
    st = stream_of(Hn)
    norms = _BlockNorms(norm_w and check_w)
    for s in range(0, K, chunk):
        if norm_w:
            Wc, n_c = _norm_chunk(Wn[s : s + chunk], st)
            norms.add(n_c)
        else:
            Wc = Wn[s : s + chunk]
        tile = _cos_tile(Ha, Hn, Wc, acc)
        native.sce_fold(view(tile), view(y), s, view(state), tau, margin_type, margin, ignore_index, st)
        tile = Wc = None  # freed before the next block's are allocated (one block at a time)
    norms.raise_if_bad()
    return state


def _finish(state: Tensor, y: Tensor, K: int, tau: float, ignore_index: int, label_smoothing: float,
            margin: float, margin_type: int) -> Tuple[Tensor, Tensor]:
    """(loss_rows, stats) in float64 from the folded state; ignored rows give 0.

    ``stats`` (B × 2): column 0 the row log-sum-exp ``lse``, column 1 the non-target mass
    ``q = 1 − p_y``, both what the backward epilogue (``sce_grad``) needs.
    The state's sum (column 1) leaves out the target's term ``e_t = exp(z_t − max)``
    (cpu/loss.h), which is added here in float64. The cross-entropy part is then
    ``log(1 + Σ_{k≠y} exp(z_k − z_t)) = log1p(T / e_t)`` and ``q = T / (T + e_t)``: both keep
    full relative accuracy when ``p_y`` rounds to 1 (a loss of 1e-30 at small τ is not lost
    to the cancellation of ``lse − z_t``; the target's gradient is not rounded to 0).
    """
    M, T, ct = state[:, 0], state[:, 1], state[:, 2]
    if margin_type == 1 and margin > 0:
        phi = ct - margin
    elif margin_type == 2 and margin > 0:
        sin = torch.sqrt(torch.clamp(1 - ct * ct, min=1e-12))
        phi = torch.where(ct > math.cos(math.pi - margin), ct * math.cos(margin) - sin * math.sin(margin),
                          ct - margin * math.sin(margin))
    else:
        phi = ct
    zt = phi / tau
    valid = y != ignore_index
    # ignored rows hold M = -inf, T = 0: give them harmless values, zeroed below
    M = torch.where(valid, M, torch.zeros_like(M))
    zt = torch.where(valid, zt, torch.zeros_like(zt))
    et = torch.exp(zt - M)  # the fold's max includes z_t, so zt - M <= 0 up to rounding
    # T = 0 means no non-target term reached the fold's max M (the max non-target term
    # contributes exp(0) = 1 to T), so the target is the max: e_t = 1 up to the rounding of
    # z_t, which at tiny τ (|z| ~ 1/τ) can push exp(z_t − M) to 0 and give lse = −inf
    et = torch.where(T == 0, torch.ones_like(et), et)
    S = T + et
    lse = M + torch.log(S)
    ratio = T / et  # sum_{k != y} exp(z_k - z_t); inf if e_t underflows
    ce = torch.where(torch.isfinite(ratio), torch.log1p(ratio), lse - zt)
    loss = ce if label_smoothing == 0 else (1.0 - label_smoothing) * ce + label_smoothing * (lse - state[:, 3] / K)
    q = T / S
    zero = torch.zeros_like(loss)
    stats = torch.stack([torch.where(valid, lse, zero), torch.where(valid, q, zero)], 1)
    return torch.where(valid, loss, zero), stats


def _grad_tiles(Hn: Tensor, Wn: Tensor, y: Tensor, stats: Tensor, scale: Tensor, tau: float, ignore_index: int,
                label_smoothing: float, margin: float, margin_type: int, chunk: int, need_h: bool,
                need_w: bool, num_classes: int = 0, norm_w: bool = False) -> Tuple[Tensor, Tensor]:
    # num_classes: the K of the label-smoothing term eps/K when Wn is one shard of a
    # larger classifier (the sharded loss); 0 means Wn holds all classes.
    # norm_w: Wn holds the raw weights W; each block is normalised again (Ŵ_c, ‖w‖_c) and
    # its gradient dŴ_c goes through the native normalize_rows_backward kernel straight
    # into dW[block] (the returned dW is then the gradient w.r.t. W): no K × d Ŵ or dŴ.
    B, K = Hn.shape[0], (num_classes or Wn.shape[0])
    acc = _acc(Hn.dtype)
    lse, q = stats[:, 0], stats[:, 1]
    Ha = Hn.to(acc)
    dH = torch.zeros((B, Hn.shape[1]), dtype=acc, device=Hn.device) if need_h else Hn.new_empty(0)
    dW = torch.empty(Wn.shape, dtype=Wn.dtype, device=Wn.device) if need_w else Wn.new_empty(0)
    st = stream_of(Hn)
    mode = _gemm_mode(Ha)
    lowp = _lowp_grad_gemm(Hn, Wn)
    buf = None  # norm_w: the block's dŴ before the normalisation backward
    for s in range(0, Wn.shape[0], chunk):
        e = min(Wn.shape[0], s + chunk)
        if norm_w:
            Wraw = Wn[s:e]
            Wb, nb = _norm_chunk(Wraw, st)
            if need_w:
                if buf is None:
                    buf = torch.empty((e - s, Wn.shape[1]), dtype=Wn.dtype, device=Wn.device)
                out = buf[: e - s]
        else:
            Wb = Wn[s:e]
            out = dW[s:e] if need_w else None
        tile = _cos_tile(Ha, Hn, Wb, acc)
        native.sce_grad(view(tile), view(y), s, K, view(lse), view(q), view(scale), tau, margin_type, margin,
                        label_smoothing, ignore_index, st)
        if lowp:  # 16-bit CUDA inputs: both products on the tensor cores (fp32 accumulation)
            g16 = tile.to(Wn.dtype)
            if need_h:
                dH += _mm_acc(g16, Wb, acc)
            if need_w:
                torch.mm(g16.T, Hn, out=out)
        else:
            Wc = Wb.to(acc)
            if mode != "ieee":  # error-compensated / TF32 products (CUDA fp32 only)
                if need_h:
                    dH += mm_fp32(tile, Wc, mode)
                if need_w:
                    out.copy_(mm_fp32(tile.T, Ha, mode))
            else:
                if need_h:
                    dH.addmm_(tile, Wc)
                if need_w:
                    if out.dtype == acc:
                        torch.mm(tile.T, Ha, out=out)
                    else:
                        out.copy_(tile.T @ Ha)
        if need_w and norm_w:  # dW[block] = (dŴ_c − ŵ⟨ŵ, dŴ_c⟩)/‖w‖ (dŴ_c/eps for rows with ‖w‖ ≤ eps)
            native.normalize_rows_backward(view(Wraw), view(nb), view(out), view(dW[s:e]), NORM_EPS, st)
        tile = g16 = Wb = Wc = None  # freed before the next block's are allocated
    return (dH.to(Hn.dtype) if need_h else dH), dW


def _fused_backward_cuda(Hn: Tensor, Wn: Tensor, y: Tensor, stats: Tensor, scale: Tensor, tau: float,
                         ignore_index: int, label_smoothing: float, margin: float, margin_type: int, need_h: bool,
                         need_w: bool, num_classes: int = 0) -> Tuple[Tensor, Tensor]:
    """CUDA backward of the recompute strategy through the fused kernels
    (``native.sce_fused_backward``, csrc/cuda/loss_fused.cu): same outputs, dtypes and
    semantics as :func:`_grad_tiles` (dĤ in Hn's dtype, dŴ in Wn's dtype; an empty tensor
    for a gradient that is not needed). The kernels need contiguous rows: Hn/Wn are made
    contiguous here (a no-op for the normalised inputs the public API passes).
    Extra memory (fp32, from torch's allocator): a dH workspace of splits × B × d
    (≤ FUSED_BWD_DH_WORKSPACE = 256 MiB unless one split needs more) and a dW workspace of
    K × d (B, K, d rounded up to 64), besides the gradients themselves."""
    Hc, Wc = Hn.contiguous(), Wn.contiguous()
    (B, d), K = Hc.shape, Wc.shape[0]
    dev = Hc.device
    T = _FUSED_TILE  # the kernels' row / class / feature-chunk tile (checked natively)
    Bp, Kp, dp = -(-B // T) * T, -(-K // T) * T, -(-d // T) * T
    dH = torch.empty((B, d), dtype=Hc.dtype, device=dev) if need_h else Hn.new_empty(0)
    dW = torch.empty((K, d), dtype=Wc.dtype, device=dev) if need_w else Wn.new_empty(0)
    f32 = dict(dtype=torch.float32, device=dev)
    ws_h = torch.empty((_fused_bwd_splits(B, K, d, dev), Bp, dp), **f32) if need_h else Hn.new_empty(0, **f32)
    ws_w = torch.empty((Kp, dp), **f32) if need_w else Wn.new_empty(0, **f32)
    lse, q = stats[:, 0].contiguous(), stats[:, 1].contiguous()
    native.sce_fused_backward(view(Hc), view(Wc), view(y), view(lse), view(q), view(scale),
                              view(dH), view(dW), view(ws_h), view(ws_w), num_classes or K, tau, margin_type,
                              margin, label_smoothing, ignore_index, stream_of(Hn))
    return dH, dW


_FUSED_TILE = 64
# fp32 bytes the fused backward's dH workspace (splits × B × d) may take for parallelism
FUSED_BWD_DH_WORKSPACE = 256 * 2**20


def _fused_bwd_splits(B: int, K: int, d: int, device: torch.device) -> int:
    """How many class ranges the fused dH kernel splits K into: about 4 blocks per SM
    over (row tiles × splits), capped by FUSED_BWD_DH_WORKSPACE and by the class tiles;
    normalised so that every split gets at least one class tile."""
    T = _FUSED_TILE
    row_tiles, n_tiles = -(-B // T), -(-K // T)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    splits = -(-4 * sms // row_tiles)
    splits = min(splits, FUSED_BWD_DH_WORKSPACE // (row_tiles * T * (-(-d // T) * T) * 4), n_tiles, 65535)
    splits = max(splits, 1)
    per = -(-n_tiles // splits)
    return -(-n_tiles // per)


# ------------------------------------------------------ op 1: recompute strategy --
@torch.library.custom_op("gnc_ext::spherical_ce_rows", mutates_args=(), device_types=("cpu", "cuda"))
def _sce_rows(Hn: Tensor, Wn: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
              margin: float, margin_type: int, chunk: int) -> Tuple[Tensor, Tensor]:
    K = Wn.shape[0]
    check_labels(y, K, True, ignore_index)
    if Hn.device.type == "cuda" and _cuda_mode("CUDA_FORWARD", CUDA_FORWARD) == "fused" and Hn.dtype != torch.float64:
        state = torch.empty((Hn.shape[0], 4), dtype=torch.float64, device=Hn.device)
        state[:, 0] = -math.inf
        state[:, 1:] = 0.0
        Hc, Wc = Hn.contiguous(), Wn.contiguous()
        native.sce_fused_forward(view(Hc), view(Wc), view(y), view(state), tau, margin_type, margin, ignore_index,
                                 stream_of(Hn))
    else:
        state = _fold_state(Hn, Wn, y, tau, ignore_index, margin, margin_type, chunk or col_chunk(Hn.shape[0], K, Hn.is_cuda))
    loss, stats = _finish(state, y, K, tau, ignore_index, label_smoothing, margin, margin_type)
    return loss.to(_acc(Hn.dtype)), stats


@_sce_rows.register_fake
def _rows_fake(Hn, Wn, y, tau, ignore_index, label_smoothing, margin, margin_type, chunk):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=_acc(Hn.dtype)), Hn.new_empty((B, 2), dtype=torch.float64)


@torch.library.custom_op("gnc_ext::spherical_ce_rows_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _sce_rows_bwd(grad_rows: Tensor, Hn: Tensor, Wn: Tensor, y: Tensor, stats: Tensor, tau: float,
                  ignore_index: int, label_smoothing: float, margin: float, margin_type: int, chunk: int,
                  need_h: bool, need_w: bool) -> Tuple[Tensor, Tensor]:
    scale = grad_rows.to(torch.float64).contiguous()
    if (Hn.device.type == "cuda" and _cuda_mode("CUDA_BACKWARD", CUDA_BACKWARD) == "fused"
            and Hn.dtype != torch.float64):
        return _fused_backward_cuda(Hn, Wn, y, stats, scale, tau, ignore_index, label_smoothing, margin, margin_type,
                                    need_h, need_w)
    return _grad_tiles(Hn, Wn, y, stats, scale, tau, ignore_index, label_smoothing, margin, margin_type,
                       chunk or col_chunk(Hn.shape[0], Wn.shape[0], Hn.is_cuda), need_h, need_w)


@_sce_rows_bwd.register_fake
def _rows_bwd_fake(grad_rows, Hn, Wn, y, stats, tau, ignore_index, label_smoothing, margin, margin_type, chunk,
                   need_h, need_w):
    dH = torch.empty_like(Hn, memory_format=torch.contiguous_format) if need_h else Hn.new_empty(0)
    dW = torch.empty_like(Wn, memory_format=torch.contiguous_format) if need_w else Wn.new_empty(0)
    return dH, dW


def _sce_rows_setup(ctx, inputs, output):
    Hn, Wn, y, tau, ignore_index, ls, margin, mt, chunk = inputs
    _, stats = output
    ctx.save_for_backward(Hn, Wn, y, stats)
    ctx.args = (tau, ignore_index, ls, margin, mt, chunk)
    ctx.mark_non_differentiable(stats)


def _rows_autograd(backward_op):
    """The autograd formula of a per-row CE op: its backward custom op on the saved inputs."""
    def backward(ctx, grad_rows, grad_stats):
        Hn, Wn, y, stats = ctx.saved_tensors
        need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        if grad_rows is None or not (need_h or need_w):
            return None, None, None, None, None, None, None, None, None
        dH, dW = backward_op(grad_rows, Hn, Wn, y, stats, *ctx.args, need_h, need_w)
        return (dH if need_h else None), (dW if need_w else None), None, None, None, None, None, None, None
    return backward


torch.library.register_autograd("gnc_ext::spherical_ce_rows", _rows_autograd(_sce_rows_bwd),
                                setup_context=_sce_rows_setup)


# ---------------------------- op 1b: recompute strategy, W normalised block by block --
@torch.library.custom_op("gnc_ext::spherical_ce_rows_nw", mutates_args=(), device_types=("cpu", "cuda"))
def _sce_rows_nw(Hn: Tensor, W: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
                 margin: float, margin_type: int, chunk: int) -> Tuple[Tensor, Tensor]:
    K = W.shape[0]
    check_labels(y, K, True, ignore_index)
    c = chunk or col_chunk(Hn.shape[0], K, Hn.is_cuda, W.shape[1])
    state = _fold_state(Hn, W, y, tau, ignore_index, margin, margin_type, c, norm_w=True, check_w=True)
    loss, stats = _finish(state, y, K, tau, ignore_index, label_smoothing, margin, margin_type)
    return loss.to(_acc(Hn.dtype)), stats


_sce_rows_nw.register_fake(_rows_fake)


@torch.library.custom_op("gnc_ext::spherical_ce_rows_nw_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _sce_rows_nw_bwd(grad_rows: Tensor, Hn: Tensor, W: Tensor, y: Tensor, stats: Tensor, tau: float,
                     ignore_index: int, label_smoothing: float, margin: float, margin_type: int, chunk: int,
                     need_h: bool, need_w: bool) -> Tuple[Tensor, Tensor]:
    scale = grad_rows.to(torch.float64).contiguous()
    return _grad_tiles(Hn, W, y, stats, scale, tau, ignore_index, label_smoothing, margin, margin_type,
                       chunk or col_chunk(Hn.shape[0], W.shape[0], Hn.is_cuda, W.shape[1]), need_h, need_w,
                       norm_w=True)


_sce_rows_nw_bwd.register_fake(_rows_bwd_fake)
torch.library.register_autograd("gnc_ext::spherical_ce_rows_nw", _rows_autograd(_sce_rows_nw_bwd),
                                setup_context=_sce_rows_setup)


# ----------------------------------------------- op 2: gradient-in-forward strategy --
@torch.library.custom_op("gnc_ext::spherical_ce_fused", mutates_args=(), device_types=("cpu", "cuda"))
def _sce_fused(H: Tensor, W: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
               margin: float, margin_type: int, normalize: bool, reduction: int, need_h: bool, need_w: bool,
               row_chunk_: int) -> Tuple[Tensor, Tensor, Tensor]:
    B, d = H.shape
    K = W.shape[0]
    check_labels(y, K, True, ignore_index)
    acc = _acc(H.dtype)
    st = stream_of(H)
    dev = H.device
    if normalize:
        # H (B × d, small): the native normalize_rows kernel. W (K × d): its normalisation is
        # folded into the tile (a column scale by 1/max(‖w_k‖, eps)), so Ŵ is never stored;
        # the backward goes through the native normalize_rows_backward kernel.
        Hn = torch.empty_like(H, memory_format=torch.contiguous_format)
        nH = torch.empty(B, dtype=acc, device=dev)
        native.normalize_rows_forward(view(H), view(Hn), view(nH), NORM_EPS, st)
        nW = torch.linalg.vector_norm(W, dim=1, dtype=acc)
        if _validate.config.check_finite and not bool(torch.isfinite(nH).all()):
            raise ValueError("H: contains NaN or Inf values (or a row whose norm overflows)")
        if _validate.config.check_finite and not bool(torch.isfinite(nW).all()):
            raise ValueError("W: contains NaN or Inf values (or a row whose norm overflows)")
        invW = 1.0 / nW.clamp_min(NORM_EPS)
    else:
        Hn, nH, nW, invW = H, None, None, None
    Ha = Hn.to(acc)
    full = W.dtype == acc  # fp32/fp64 W: one (rows × K) tile, no copy; 16-bit: column chunks
    valid = y != ignore_index
    n_valid = int(valid.sum())
    row_scale = (1.0 / max(n_valid, 1)) if reduction == 0 else 1.0
    scale_all = valid.to(torch.float64) * row_scale
    dHn = torch.empty((B, d), dtype=acc, device=dev) if need_h else None
    dWn = None
    loss_rows = torch.empty(B, dtype=torch.float64, device=dev)
    rc = row_chunk_ or row_chunk(B, K)
    cc = K if full else col_chunk(rc, K)

    def cos_tile(Hr: Tensor, s: int, e: int) -> Tuple[Tensor, Tensor]:
        Wc = W[s:e] if full else W[s:e].to(acc)
        t = Hr @ Wc.T
        if invW is not None:
            t.mul_(invW[s:e])
        return t, Wc

    for r0 in range(0, B, rc):
        r1 = min(B, r0 + rc)
        Hr, yr = Ha[r0:r1], y[r0:r1]
        state = torch.empty((r1 - r0, 4), dtype=torch.float64, device=dev)
        state[:, 0] = -math.inf
        state[:, 1:] = 0.0
        tile = None
        for s in range(0, K, cc):
            tile, _ = cos_tile(Hr, s, min(K, s + cc))
            native.sce_fold(view(tile), view(yr), s, view(state), tau, margin_type, margin, ignore_index, st)
        lr, stats = _finish(state, yr, K, tau, ignore_index, label_smoothing, margin, margin_type)
        lse, q = stats[:, 0], stats[:, 1]
        loss_rows[r0:r1] = lr
        if not (need_h or need_w):
            continue
        sc = scale_all[r0:r1].contiguous()
        for s in range(0, K, cc):
            e = min(K, s + cc)
            if not full:
                tile, _ = cos_tile(Hr, s, e)
            Wc = W[s:e] if full else W[s:e].to(acc)
            native.sce_grad(view(tile), view(yr), s, K, view(lse), view(q), view(sc), tau, margin_type, margin,
                            label_smoothing, ignore_index, st)
            if need_w:  # dŴ[s:e] += gᵀ·Ĥ_r (the first full-width block writes, later ones add in place)
                if dWn is None and full:
                    dWn = tile.T @ Hr
                else:
                    if dWn is None:
                        dWn = torch.zeros((K, d), dtype=acc, device=dev)
                    dWn[s:e].addmm_(tile.T, Hr)
            if need_h:  # dĤ_r += g·Ŵ = (g · diag(1/‖w‖))·W
                if invW is not None:
                    tile.mul_(invW[s:e])
                if s == 0:
                    torch.mm(tile, Wc, out=dHn[r0:r1])
                else:
                    dHn[r0:r1].addmm_(tile, Wc)
        del tile
    total = loss_rows.sum()
    loss = ((total / max(n_valid, 1)) if reduction == 0 else total).to(acc)

    def through_norm(x: Tensor, n, g: Tensor) -> Tensor:
        g = g.to(x.dtype)  # no copy for fp32/fp64
        if normalize:  # in place: the native kernel reads g[i, j] before writing dx[i, j]
            native.normalize_rows_backward(view(x), view(n), view(g), view(g), NORM_EPS, st)
        return g

    dH = through_norm(H, nH, dHn) if need_h else H.new_empty(0)
    dW = through_norm(W, nW, dWn) if need_w else W.new_empty(0)
    return loss, dH, dW


@_sce_fused.register_fake
def _(H, W, y, tau, ignore_index, label_smoothing, margin, margin_type, normalize, reduction, need_h, need_w,
      row_chunk_):
    loss = H.new_empty((), dtype=_acc(H.dtype))
    dH = torch.empty_like(H, memory_format=torch.contiguous_format) if need_h else H.new_empty(0)
    dW = torch.empty_like(W, memory_format=torch.contiguous_format) if need_w else W.new_empty(0)
    return loss, dH, dW


def _fused_setup(ctx, inputs, output):
    _, dH, dW = output
    ctx.save_for_backward(dH, dW)
    ctx.mark_non_differentiable(dH, dW)


def _scaled(t: Tensor, g: Tensor) -> Tensor:
    # Eager mode with the usual upstream gradient 1 (loss.backward()): hand the stored
    # gradient over without a K × d copy (autograd frees its saved copy right after this
    # node, so AccumulateGrad can adopt it). Otherwise, or while compiling, scale.
    plain = (type(g) is torch.Tensor and not torch.compiler.is_compiling()
             and torch._C._len_torch_dispatch_stack() == 0)  # not traced (dynamo, make_fx, fake)
    if plain and g.device.type == "cpu" and g.numel() == 1 and float(g) == 1.0:
        return t
    return t * g.to(t.dtype)


def _fused_backward(ctx, g, g_dH, g_dW):
    dH, dW = ctx.saved_tensors
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gh = gw = None
    if g is not None:
        if need_h:
            if dH.numel() == 0:
                raise RuntimeError("spherical_ce_fused: the gradient w.r.t. H was not computed in forward")
            gh = _scaled(dH, g)
        if need_w:
            if dW.numel() == 0:
                raise RuntimeError("spherical_ce_fused: the gradient w.r.t. W was not computed in forward")
            gw = _scaled(dW, g)
    return gh, gw, None, None, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("gnc_ext::spherical_ce_fused", _fused_backward, setup_context=_fused_setup)


# ------------------------------------------------------------ op 3: HardMax rows --
@torch.library.custom_op("gnc_ext::hardmax_rows", mutates_args=(), device_types=("cpu", "cuda"))
def _hardmax_rows(Hn: Tensor, Wn: Tensor, y: Tensor, chunk: int) -> Tuple[Tensor, Tensor]:
    B, K = Hn.shape[0], Wn.shape[0]
    check_labels(y, K, False)
    acc = _acc(Hn.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=Hn.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=Hn.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=Hn.device)
    c = chunk or col_chunk(B, K, Hn.is_cuda)
    if _hardmax_screened(Hn, Wn):
        # TF32 tiles screened, candidates re-scored exactly (float64): the same max and
        # argmax as the fp32 path up to float64 rounding (see _engine.certified_argmax)
        A, Wc = Hn.contiguous(), Wn.contiguous()
        best, arg, _ = _engine.certified_argmax(A, Wc, None, y, chunk=c)
        tgt = (A.double() * Wc[y].double()).sum(1)
        return (best - tgt).to(acc), arg
    Ha = Hn.to(acc)
    st = stream_of(Hn)
    for s in range(0, K, c):
        tile = _cos_tile(Ha, Hn, Wn[s : s + c], acc)
        native.masked_argmax_fold(view(tile), view(y), s, view(best), view(arg), view(tgt), st)
        tile = None
    return (best - tgt).to(acc), arg


# HardMax forward (and predict) for float32 inputs: "auto" (default) screens the class
# tiles with TF32 tensor-core GEMMs on CUDA when the batch has at least
# _engine.SCREEN_MIN_ROWS rows, and re-scores the candidates exactly (the same result
# as fp32 tiles); "on" forces the screened path (tests use it on the CPU with TF32
# rounding emulated); "off" uses plain fp32 tiles everywhere.
HARDMAX_SCREEN = os.environ.get("GNC_HARDMAX_SCREEN", "auto")


def _hardmax_screened(Hn: Tensor, Wn: Tensor) -> bool:
    if HARDMAX_SCREEN not in ("auto", "on", "off"):
        raise ValueError(f"gnc_ext.ops.loss.HARDMAX_SCREEN: expected 'auto', 'on' or 'off', got {HARDMAX_SCREEN!r}")
    fp32 = Hn.dtype == torch.float32 and Wn.dtype == torch.float32
    if HARDMAX_SCREEN == "on":
        return fp32
    return HARDMAX_SCREEN == "auto" and fp32 and Hn.is_cuda and Hn.shape[0] >= _engine.SCREEN_MIN_ROWS


@_hardmax_rows.register_fake
def _(Hn, Wn, y, chunk):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=_acc(Hn.dtype)), Hn.new_empty((B,), dtype=torch.int64)


def _hm_setup(ctx, inputs, output):
    Hn, Wn, y, _ = inputs
    _, arg = output
    ctx.save_for_backward(Hn, Wn, y, arg)
    ctx.mark_non_differentiable(arg)


def _hm_autograd(normalize_w: bool):
    """The HardMax ops' autograd formula: the shared sparse backward op (defined below)."""
    def backward(ctx, g, g_arg):
        Hn, W, y, arg = ctx.saved_tensors
        if g is None:
            return None, None, None, None
        need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        dH, dW = _hm_rows_bwd(g, Hn, W, y, arg, normalize_w, need_h, need_w)
        return (dH if need_h else None), (dW if need_w else None), None, None
    return backward


torch.library.register_autograd("gnc_ext::hardmax_rows", _hm_autograd(False), setup_context=_hm_setup)


# ---------------------------------------- op 3b: HardMax rows, W normalised block by block --
@torch.library.custom_op("gnc_ext::hardmax_rows_nw", mutates_args=(), device_types=("cpu", "cuda"))
def _hardmax_rows_nw(Hn: Tensor, W: Tensor, y: Tensor, chunk: int) -> Tuple[Tensor, Tensor]:
    """:func:`_hardmax_rows` with the raw weights W: each block of classes is normalised on
    the fly (the screened path, which re-scores candidates from whole rows, normalises
    all of W into a temporary instead)."""
    B, K = Hn.shape[0], W.shape[0]
    check_labels(y, K, False)
    st = stream_of(Hn)
    if _hardmax_screened(Hn, W):
        Wn, n = _norm_chunk(W, st)
        norms = _BlockNorms(True)
        norms.add(n)
        norms.raise_if_bad()
        return _hardmax_rows(Hn, Wn, y, chunk)
    acc = _acc(Hn.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=Hn.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=Hn.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=Hn.device)
    c = chunk or col_chunk(B, K, Hn.is_cuda, W.shape[1])
    Ha = Hn.to(acc)
    norms = _BlockNorms(True)
    for s in range(0, K, c):
        Wb, n_c = _norm_chunk(W[s : s + c], st)
        norms.add(n_c)
        tile = _cos_tile(Ha, Hn, Wb, acc)
        native.masked_argmax_fold(view(tile), view(y), s, view(best), view(arg), view(tgt), st)
        tile = Wb = None
    norms.raise_if_bad()
    return (best - tgt).to(acc), arg


@_hardmax_rows_nw.register_fake
def _(Hn, W, y, chunk):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=_acc(Hn.dtype)), Hn.new_empty((B,), dtype=torch.int64)


def _rows_sum_by_index(idx: Tensor, G: Tensor) -> Tuple[Tensor, Tensor]:
    """``(u, S)``: the distinct values u of ``idx`` (sorted) and ``S[j] = Σ_{idx_i = u_j} G_i``,
    deterministic: index_add_ on the CPU (sequential per index), index_put_ with
    accumulate=True on CUDA (sort-based there; index_add_ would use float atomics)."""
    u, inv = torch.unique(idx, sorted=True, return_inverse=True)
    S = torch.zeros((u.shape[0], G.shape[1]), dtype=G.dtype, device=G.device)
    if G.is_cuda:
        S.index_put_((inv,), G, accumulate=True)
    else:
        S.index_add_(0, inv, G)
    return u, S


@torch.library.custom_op("gnc_ext::hardmax_rows_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _hm_rows_bwd(g: Tensor, Hn: Tensor, W: Tensor, y: Tensor, arg: Tensor, normalize_w: bool, need_h: bool,
                 need_w: bool) -> Tuple[Tensor, Tensor]:
    """Sparse HardMax backward for ``dL/dv = g``: ``dĤ_i = g_i (ŵ_{arg_i} − ŵ_{y_i})`` and
    ``dŴ`` holding ``±g_i ĥ_i`` at rows arg_i / y_i (summed per class deterministically).
    With ``normalize_w`` W holds raw weights: the touched rows (at most 2B) are normalised
    again and dŴ goes through the normalisation there, ``dW_k = (dŵ_k − ŵ_k⟨ŵ_k, dŵ_k⟩)/‖w_k‖``
    (dŵ_k/eps where ‖w_k‖ ≤ eps), 0 elsewhere."""
    acc = _acc(Hn.dtype)
    st = stream_of(Hn)
    ga = g.to(acc).unsqueeze(1)
    dH, dW = Hn.new_empty(0), W.new_empty(0)
    if need_h:
        Wa, Wy = W[arg], W[y]
        if normalize_w:
            Wa, Wy = _norm_chunk(Wa, st)[0], _norm_chunk(Wy, st)[0]
        dH = (ga * (Wa.to(acc) - Wy.to(acc))).to(Hn.dtype)
    if need_w:
        gh = ga * Hn.to(acc)
        u, S = _rows_sum_by_index(torch.cat([arg, y]), torch.cat([gh, -gh]))
        Su = S.to(W.dtype)  # dŴ rows in W's dtype (as a normalize_rows backward would see them)
        if normalize_w:
            Wu = W[u]
            _, nu = _norm_chunk(Wu, st)
            native.normalize_rows_backward(view(Wu), view(nu), view(Su), view(Su), NORM_EPS, st)  # in place
        dW = torch.zeros(W.shape, dtype=W.dtype, device=W.device)
        dW[u] = Su
    return dH, dW


@_hm_rows_bwd.register_fake
def _(g, Hn, W, y, arg, normalize_w, need_h, need_w):
    dH = torch.empty_like(Hn, memory_format=torch.contiguous_format) if need_h else Hn.new_empty(0)
    dW = torch.empty_like(W, memory_format=torch.contiguous_format) if need_w else W.new_empty(0)
    return dH, dW


torch.library.register_autograd("gnc_ext::hardmax_rows_nw", _hm_autograd(True), setup_context=_hm_setup)


# --------------------------------------------------------------- argmax (predict) --
def _argmax_blocks(H: Tensor, W: Tensor, chunk: int, normalize_w: bool) -> Tensor:
    """argmax_k <H_i, w_k> over tiles of ``chunk`` classes and the masked-argmax epilogue
    (no class excluded); ``normalize_w``: each block of W is normalised (and cast to H's
    dtype) when its tile is formed."""
    B, K = H.shape[0], W.shape[0]
    acc = _acc(H.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=H.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=H.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=H.device)
    none = torch.full((B,), -1, dtype=torch.int64, device=H.device)
    Ha = H.to(acc)
    st = stream_of(H)
    for s in range(0, K, chunk):
        Wb = _norm_chunk(W[s : s + chunk], st)[0].to(H.dtype) if normalize_w else W[s : s + chunk]
        tile = _cos_tile(Ha, H, Wb, acc)
        native.masked_argmax_fold(view(tile), view(none), s, view(best), view(arg), view(tgt), st)
        tile = Wb = None
    return arg


@torch.library.custom_op("gnc_ext::argmax_cosine", mutates_args=(), device_types=("cpu", "cuda"))
def _argmax_cosine(H: Tensor, Wn: Tensor, chunk: int) -> Tensor:
    """argmax_k <H_i, Wn_k> (lowest index among ties) via the masked-argmax epilogue."""
    c = chunk or col_chunk(H.shape[0], Wn.shape[0], H.is_cuda)
    if _hardmax_screened(H, Wn):  # fp32 on CUDA: TF32 screening, exact re-scoring
        return _engine.certified_argmax(H.contiguous(), Wn.contiguous(), None, None, chunk=c)[1]
    return _argmax_blocks(H, Wn, c, False)


@_argmax_cosine.register_fake
def _argmax_fake(H, Wn, chunk):
    return H.new_empty((H.shape[0],), dtype=torch.int64)


@torch.library.custom_op("gnc_ext::argmax_cosine_nw", mutates_args=(), device_types=("cpu", "cuda"))
def _argmax_cosine_nw(H: Tensor, W: Tensor, chunk: int) -> Tensor:
    """:func:`_argmax_cosine` with raw weights W (any floating dtype): each block of classes
    is normalised and cast to H's dtype when its tile is formed, so no K × d copy exists
    (the TF32-screened path, which re-scores from whole rows, normalises W whole)."""
    if _hardmax_screened(H, H):
        return _argmax_cosine(H, _norm_chunk(W, stream_of(H))[0].to(H.dtype), chunk)
    return _argmax_blocks(H, W, chunk or col_chunk(H.shape[0], W.shape[0], H.is_cuda, W.shape[1]), True)


_argmax_cosine_nw.register_fake(_argmax_fake)


# ------------------------------------------------------------------- validation --
def validate_inputs(H, W, y, *, allow_ignore: bool, ignore_index: int = -100, check_W: bool = True) -> None:
    _validate.tensor(H, "H", ndim=2)
    _validate.tensor(W, "W", ndim=2)
    _validate.tensor(y, "y", ndim=1, dtypes=(torch.int64,), allow_empty=True)
    _validate.same_device(("H", H), ("W", W), ("y", y))
    if H.shape[0] == 0:
        raise ValueError("H: expected at least one row (B >= 1), got shape " + str(tuple(H.shape)))
    if W.shape[0] < 2:
        raise ValueError(f"W: expected at least 2 classes (K >= 2), got shape {tuple(W.shape)}")
    if H.shape[1] != W.shape[1]:
        raise ValueError(f"W: expected {H.shape[1]} columns (the feature dimension of H), got shape {tuple(W.shape)}")
    if H.dtype != W.dtype:
        raise TypeError(f"W: expected dtype {H.dtype} (the dtype of H), got {W.dtype}")
    if y.shape[0] != H.shape[0]:
        raise ValueError(f"y: expected shape ({H.shape[0]},) (one label per row of H), got {tuple(y.shape)}")
    if torch.compiler.is_compiling():
        return  # data-dependent checks: labels are re-checked inside the ops at run time
    check_finite_rows(H, "H")
    if check_W:
        check_finite_rows(W, "W")
    check_labels(y, W.shape[0], allow_ignore, ignore_index)


def check_finite_rows(x: Tensor, name: str) -> None:
    """Raise ValueError naming ``x`` if it holds NaN/Inf (``gnc_ext.config.check_finite``).

    One pass and an O(rows) temporary: a row sum is non-finite iff the row holds a NaN
    or an Inf, or its finite values overflow the fp32 sum (> 3e38; also rejected).
    (``torch.isfinite(x).all()`` makes several full-size temporaries: ~10x slower.)
    """
    if _validate.config.check_finite and x.numel() > 0:
        acc = _acc(x.dtype)
        if not bool(torch.isfinite(x.sum(dim=1, dtype=acc)).all()):
            raise ValueError(f"{name}: contains NaN or Inf values (or rows whose sum overflows)")


def check_labels(y: Tensor, K: int, allow_ignore: bool, ignore_index: int = -100) -> None:
    """Raise ValueError naming ``y`` if a label is outside [0, K) (and not ignore_index)."""
    bad = (y < 0) | (y >= K)
    if allow_ignore:
        bad = bad & (y != ignore_index)
    if bool(bad.any()):
        v = int(y[bad][0])
        extra = f" or ignore_index={ignore_index}" if allow_ignore else ""
        raise ValueError(f"y: labels must lie in [0, {K - 1}]{extra}; got {v}")
