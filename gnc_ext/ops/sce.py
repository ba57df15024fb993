"""Spherical cross-entropy as ``torch.library`` custom ops (namespace ``torch.ops.gnc_ext``).

The cosine matrix ``S = Ĥ·Ŵᵀ`` (B × K) is produced one tile at a time by a GEMM and
consumed at once by a native epilogue (``csrc/cpu/loss.cpp``, CUDA twin
``csrc/cuda/loss.cu``); the B × K matrix never exists. Tile helpers: :mod:`.tiles`.

``spherical_ce_rows(Hn, Wn, y, tau, ignore_index, label_smoothing, margin, margin_type, chunk,
interclass_threshold, subcenters)``
    Per-row losses of unit-norm inputs, **recompute** strategy. Forward streams tiles of
    ``chunk`` classes and keeps O(B) state (running max, running sum of exp over the
    non-target classes, target cosine, sum of logits); it returns ``(loss_rows, stats)``
    with ``stats`` (B × 2) the row log-sum-exp and the non-target mass ``1 − p_y`` (see
    :func:`finish_state`). Backward (``spherical_ce_rows_backward``) recomputes every
    tile, turns it into ``g = dL/dS`` in place and accumulates ``dĤ += g·Ŵ_tile``,
    ``dŴ_tile = gᵀ·Ĥ`` (fp32; fp64 for fp64 inputs). Extra memory: one (B × chunk) tile
    plus the gradients. 4 GEMM passes (2 forward-equivalent + 2 backward).
    ``interclass_threshold`` (0 = off) and ``margin_type`` 3 (ArcFace straight-through)
    are options of the native epilogues (cpu/loss.h). ``subcenters`` = k: Wn has K·k
    rows, class-major; each tile's k columns per class are reduced to their max before
    the epilogue, and the backward scatters the class gradient to the arg-max column
    (one tile at a time: nothing of size B × K·k beyond a tile).

``spherical_ce_rows_nw(Hn, W, y, ...)`` (and ``spherical_ce_rows_nw_backward``)
    The recompute strategy with the **raw** class weights W, what the public
    ``normalize=True`` path uses: every block of classes is normalised when its tile is
    formed (native ``normalize_rows`` on the block: bit-for-bit the rows a whole-W
    normalisation gives), and in the backward each block's dŴ_c goes through the native
    ``normalize_rows_backward`` kernel straight into dW[block]. Ŵ and dŴ never exist as
    K × d tensors: memory beyond the inputs is dW, dH and per block one (B × chunk) fp32
    tile (its 16-bit copy for the tensor-core products) and two (chunk × d) blocks.

``spherical_ce_fused(H, W, y, ..., normalize, reduction, need_h, need_w, row_chunk, interclass_threshold,
subcenters)``
    **Gradient-in-forward** strategy for ``reduction`` mean/sum when autograd needs
    gradients: blocks of ``row_chunk`` rows see all K classes in one (rows × K) tile
    (fp32/fp64 W; 16-bit W in column chunks), so the row's log-sum-exp is final inside
    the block and the tile is turned into ``g`` right away: 3 GEMM passes instead of 4.
    It normalises inside: H through the native ``normalize_rows`` kernel; W's
    normalisation is folded into the tile as a column scale by ``1/max(‖w_k‖, eps)`` (so
    Ŵ is never stored); dŴ accumulates in place in the returned gradient (16-bit W: one
    class block at a time in fp32, then rounded into it) and both backward passes use
    the native ``normalize_rows_backward`` kernel (in place). Returns ``(loss, dH, dW)``,
    the gradients for an upstream gradient of 1; the autograd formula scales them by the
    upstream scalar (no copy when it is 1 in eager mode). Memory beyond the inputs: dW
    (K × d, the gradient itself), one (row_chunk × K) fp32 tile (``FUSED_TILE_BYTES``,
    256 MiB), O(B·d + K).

Strategy (``gnc_ext.config.sce_strategy``; ``gnc_ext.losses.sce_strategy`` says which a
call takes): these two, and "stored" (:mod:`.sce_stored`, the shifted exponentials kept
for a GEMM-only backward). Determinism: every path is deterministic (no floating-point
atomics: CPU epilogues parallelise over rows; the CUDA epilogues reduce inside one
block per row; the GEMMs are torch's).

CUDA: cuBLAS through torch + the native epilogue kernels of ``csrc/cuda/loss.cu``. With
16-bit inputs the backward's two products run on the tensor cores
(``config.lowp_grad_gemm``); float32 GEMMs follow ``config.cuda_fp32_mode`` ("ieee" or
"tf32").

Entry points for other modules (``gnc_ext.nn.sharded`` runs the recompute strategy on
one shard of the classes and merges the row states across ranks): :func:`fold_state`,
:func:`finish_state`, :func:`grad_tiles`.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import _validate
from .._native import native, stream_of, view
from .tiles import (NORM_EPS, BlockNorms, acc_dtype, autocast_off, check_labels, col_chunk, cos_tile, gemm_mode,
                    lowp_grad_gemm, mm_acc, mm_fp32, norm_block)

MARGIN_CODES = {"cosface": 1, "arcface": 2}
# ArcFace with InsightFace's straight-through gradient (cpu/loss.h, margin_type 3)
ARCFACE_STRAIGHT_THROUGH = 3
# Gradient-in-forward strategy: memory budget of one fp32 (rows × K) tile, and the
# minimum rows per block (keeps the rank-r update of dŴ compute-bound: each block
# re-reads and re-writes dŴ once).
FUSED_TILE_BYTES = 256 * 2**20
MIN_ROW_CHUNK = 32


def row_chunk(rows: int, K: int) -> int:
    """Rows per block of the gradient-in-forward strategy (fp32 rows × K tile)."""
    r = max(MIN_ROW_CHUNK, FUSED_TILE_BYTES // (4 * max(K, 1)))
    return int(min(max(rows, 1), r))


def subcenter_chunk(chunk: int, subcenters: int) -> int:
    """``chunk`` rows of W rounded down to whole classes of ``subcenters`` rows (at least one)."""
    return max(subcenters, chunk // subcenters * subcenters)


def class_tile(tile: Tensor, subcenters: int) -> Tensor:
    """The (rows × c) class cosines of a (rows × c·k) tile of sub-centre cosines: the max
    over each class's ``subcenters`` consecutive columns (the tile itself when k = 1)."""
    if subcenters == 1:
        return tile
    return tile.view(tile.shape[0], -1, subcenters).amax(2)


def fold_state(Hn: Tensor, Wn: Tensor, y: Tensor, tau: float, ignore_index: int, margin: float,
               margin_type: int, chunk: int, norm_w: bool = False, check_w: bool = False,
               interclass_threshold: float = 0.0, subcenters: int = 1) -> Tensor:
    """Forward of the recompute strategy: the (B × 4) float64 row state of the online
    log-sum-exp over the classes of ``Wn`` (tiles of ``chunk`` classes; layout of the
    native ``sce_fold``: running max of z, sum of exp(z − max) over the non-target
    classes, target cosine, sum of z). Labels outside [0, K) leave the target columns
    empty, so the state of a shard of classes can be merged with the other shards'.

    ``norm_w``: Wn holds the raw class weights; each block is normalised on the fly (Ŵ
    never exists as a K × d tensor). ``check_w``: raise ValueError naming W if a block's
    norms show NaN/Inf (when ``gnc_ext.config.check_finite``).

    ``interclass_threshold``: InsightFace's interclass filtering in the native epilogue
    (0 = off). ``subcenters`` = k: Wn holds K·k rows, class-major; each tile of
    sub-centre cosines is reduced to class cosines (max over the k columns of a class,
    :func:`class_tile`) before the fold, so ``chunk`` is rounded to whole classes."""
    B, K = Hn.shape[0], Wn.shape[0]
    chunk = subcenter_chunk(chunk, subcenters)
    acc = acc_dtype(Hn.dtype)
    state = torch.empty((B, 4), dtype=torch.float64, device=Hn.device)
    state[:, 0] = -math.inf
    state[:, 1:] = 0.0
    Ha = Hn.to(acc)
    st = stream_of(Hn)
    norms = BlockNorms(norm_w and check_w)
    for s in range(0, K, chunk):
        if norm_w:
            Wc, n_c = norm_block(Wn[s : s + chunk], st)
            norms.add(n_c)
        else:
            Wc = Wn[s : s + chunk]
        tile = class_tile(cos_tile(Ha, Hn, Wc, acc), subcenters)
        native.sce_fold(view(tile), view(y), s // subcenters, view(state), tau, margin_type, margin, ignore_index,
                        st, interclass_threshold=interclass_threshold)
        tile = Wc = None  # freed before the next block's are allocated (one block at a time)
    norms.raise_if_bad()
    return state


def finish_state(state: Tensor, y: Tensor, K: int, tau: float, ignore_index: int, label_smoothing: float,
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
    elif margin_type == ARCFACE_STRAIGHT_THROUGH and margin > 0:  # cos(θ + m) for every θ
        c = ct.clamp(-1.0, 1.0)
        phi = c * math.cos(margin) - torch.sqrt(torch.clamp(1 - c * c, min=0.0)) * math.sin(margin)
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


def grad_tiles(Hn: Tensor, Wn: Tensor, y: Tensor, stats: Tensor, scale: Tensor, tau: float, ignore_index: int,
               label_smoothing: float, margin: float, margin_type: int, chunk: int, need_h: bool,
               need_w: bool, num_classes: int = 0, norm_w: bool = False, interclass_threshold: float = 0.0,
               subcenters: int = 1) -> Tuple[Tensor, Tensor]:
    """Backward of the recompute strategy: ``(dĤ, dW)`` for per-row upstream gradients
    ``scale`` (B,) float64, from ``stats`` of :func:`finish_state`. Every tile of
    ``chunk`` classes is recomputed, turned into g = dL/dS by the native ``sce_grad`` and
    multiplied into dĤ (accumulated in fp32/fp64, returned in Hn's dtype) and the rows of
    dW (Wn's dtype); a gradient that is not needed comes back empty.

    ``num_classes``: the K of the label-smoothing term ε/K when Wn is one shard of a
    larger classifier (the sharded loss); 0 means Wn holds all classes. ``norm_w``: Wn
    holds the raw weights; each block is normalised again and its dŴ_c goes through the
    native ``normalize_rows_backward`` straight into dW[block] (then dW is the gradient
    w.r.t. the raw weights): no K × d Ŵ or dŴ. ``interclass_threshold``, ``subcenters``:
    as in :func:`fold_state`; with k > 1 sub-centres each class's gradient goes to the
    column of its arg-max sub-centre (``torch.max``'s pick among exact ties) inside the
    tile, the other sub-centres of the class get 0."""
    B, K = Hn.shape[0], (num_classes or Wn.shape[0] // subcenters)
    chunk = subcenter_chunk(chunk, subcenters)
    acc = acc_dtype(Hn.dtype)
    lse, q = stats[:, 0], stats[:, 1]
    Ha = Hn.to(acc)
    dH = torch.zeros((B, Hn.shape[1]), dtype=acc, device=Hn.device) if need_h else Hn.new_empty(0)
    dW = torch.empty(Wn.shape, dtype=Wn.dtype, device=Wn.device) if need_w else Wn.new_empty(0)
    st = stream_of(Hn)
    mode = gemm_mode(Ha)
    lowp = lowp_grad_gemm(Hn, Wn)
    buf = None  # norm_w: the block's dŴ before the normalisation backward
    for s in range(0, Wn.shape[0], chunk):
        e = min(Wn.shape[0], s + chunk)
        if norm_w:
            Wraw = Wn[s:e]
            Wb, nb = norm_block(Wraw, st)
            if need_w:
                if buf is None:
                    buf = torch.empty((e - s, Wn.shape[1]), dtype=Wn.dtype, device=Wn.device)
                out = buf[: e - s]
        else:
            Wb = Wn[s:e]
            out = dW[s:e] if need_w else None
        tile = cos_tile(Ha, Hn, Wb, acc)
        if subcenters == 1:
            native.sce_grad(view(tile), view(y), s, K, view(lse), view(q), view(scale), tau, margin_type, margin,
                            label_smoothing, ignore_index, st, interclass_threshold=interclass_threshold)
        else:  # g of the class cosines, scattered to each class's arg-max sub-centre
            t3 = tile.view(B, -1, subcenters)
            cls, arg = t3.max(2)
            native.sce_grad(view(cls), view(y), s // subcenters, K, view(lse), view(q), view(scale), tau,
                            margin_type, margin, label_smoothing, ignore_index, st,
                            interclass_threshold=interclass_threshold)
            t3.zero_().scatter_(2, arg.unsqueeze(2), cls.unsqueeze(2))
            cls = arg = t3 = None
        if lowp:  # 16-bit CUDA inputs: both products on the tensor cores (fp32 accumulation)
            g16 = tile.to(Wn.dtype)
            if need_h:
                dH += mm_acc(g16, Wb, acc)
            if need_w:
                torch.mm(g16.T, Hn, out=out)
        else:
            Wc = Wb.to(acc)
            if mode != "ieee":  # TF32 products (CUDA fp32 only)
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


# ------------------------------------------------------ op 1: recompute strategy --
@torch.library.custom_op("gnc_ext::spherical_ce_rows", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_rows(Hn: Tensor, Wn: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
              margin: float, margin_type: int, chunk: int, interclass_threshold: float = 0.0,
              subcenters: int = 1) -> Tuple[Tensor, Tensor]:
    K = Wn.shape[0] // subcenters
    check_labels(y, K, True, ignore_index)
    state = fold_state(Hn, Wn, y, tau, ignore_index, margin, margin_type,
                       chunk or col_chunk(Hn.shape[0], Wn.shape[0], Hn.is_cuda),
                       interclass_threshold=interclass_threshold, subcenters=subcenters)
    loss, stats = finish_state(state, y, K, tau, ignore_index, label_smoothing, margin, margin_type)
    return loss.to(acc_dtype(Hn.dtype)), stats


@_sce_rows.register_fake
def _rows_fake(Hn, Wn, y, tau, ignore_index, label_smoothing, margin, margin_type, chunk, interclass_threshold=0.0,
               subcenters=1):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=acc_dtype(Hn.dtype)), Hn.new_empty((B, 2), dtype=torch.float64)


@torch.library.custom_op("gnc_ext::spherical_ce_rows_backward", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_rows_bwd(grad_rows: Tensor, Hn: Tensor, Wn: Tensor, y: Tensor, stats: Tensor, tau: float,
                  ignore_index: int, label_smoothing: float, margin: float, margin_type: int, chunk: int,
                  need_h: bool, need_w: bool, interclass_threshold: float = 0.0,
                  subcenters: int = 1) -> Tuple[Tensor, Tensor]:
    scale = grad_rows.to(torch.float64).contiguous()
    return grad_tiles(Hn, Wn, y, stats, scale, tau, ignore_index, label_smoothing, margin, margin_type,
                      chunk or col_chunk(Hn.shape[0], Wn.shape[0], Hn.is_cuda), need_h, need_w,
                      interclass_threshold=interclass_threshold, subcenters=subcenters)


@_sce_rows_bwd.register_fake
def _rows_bwd_fake(grad_rows, Hn, Wn, y, stats, tau, ignore_index, label_smoothing, margin, margin_type, chunk,
                   need_h, need_w, interclass_threshold=0.0, subcenters=1):
    dH = torch.empty_like(Hn, memory_format=torch.contiguous_format) if need_h else Hn.new_empty(0)
    dW = torch.empty_like(Wn, memory_format=torch.contiguous_format) if need_w else Wn.new_empty(0)
    return dH, dW


def _sce_rows_setup(ctx, inputs, output):
    Hn, Wn, y, tau, ignore_index, ls, margin, mt, chunk, *opt = inputs
    thr, k = (tuple(opt) + (0.0, 1)[len(opt):])  # the two options have defaults
    _, stats = output
    ctx.save_for_backward(Hn, Wn, y, stats)
    ctx.args = (tau, ignore_index, ls, margin, mt, chunk, thr, k)
    ctx.mark_non_differentiable(stats)


def _rows_autograd(backward_op):
    """The autograd formula of a per-row CE op: its backward custom op on the saved inputs."""
    def backward(ctx, grad_rows, grad_stats):
        Hn, Wn, y, stats = ctx.saved_tensors
        need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        rest = (None,) * (len(ctx.needs_input_grad) - 2)  # y and the non-tensor arguments
        if grad_rows is None or not (need_h or need_w):
            return (None, None) + rest
        dH, dW = backward_op(grad_rows, Hn, Wn, y, stats, *ctx.args[:6], need_h, need_w, *ctx.args[6:])
        return ((dH if need_h else None), (dW if need_w else None)) + rest
    return backward


torch.library.register_autograd("gnc_ext::spherical_ce_rows", _rows_autograd(_sce_rows_bwd),
                                setup_context=_sce_rows_setup)


# ---------------------------- op 1b: recompute strategy, W normalised block by block --
@torch.library.custom_op("gnc_ext::spherical_ce_rows_nw", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_rows_nw(Hn: Tensor, W: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
                 margin: float, margin_type: int, chunk: int, interclass_threshold: float = 0.0,
                 subcenters: int = 1) -> Tuple[Tensor, Tensor]:
    K = W.shape[0] // subcenters
    check_labels(y, K, True, ignore_index)
    c = chunk or col_chunk(Hn.shape[0], W.shape[0], Hn.is_cuda, W.shape[1])
    state = fold_state(Hn, W, y, tau, ignore_index, margin, margin_type, c, norm_w=True, check_w=True,
                       interclass_threshold=interclass_threshold, subcenters=subcenters)
    loss, stats = finish_state(state, y, K, tau, ignore_index, label_smoothing, margin, margin_type)
    return loss.to(acc_dtype(Hn.dtype)), stats


_sce_rows_nw.register_fake(_rows_fake)


@torch.library.custom_op("gnc_ext::spherical_ce_rows_nw_backward", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_rows_nw_bwd(grad_rows: Tensor, Hn: Tensor, W: Tensor, y: Tensor, stats: Tensor, tau: float,
                     ignore_index: int, label_smoothing: float, margin: float, margin_type: int, chunk: int,
                     need_h: bool, need_w: bool, interclass_threshold: float = 0.0,
                     subcenters: int = 1) -> Tuple[Tensor, Tensor]:
    scale = grad_rows.to(torch.float64).contiguous()
    return grad_tiles(Hn, W, y, stats, scale, tau, ignore_index, label_smoothing, margin, margin_type,
                      chunk or col_chunk(Hn.shape[0], W.shape[0], Hn.is_cuda, W.shape[1]), need_h, need_w,
                      norm_w=True, interclass_threshold=interclass_threshold, subcenters=subcenters)


_sce_rows_nw_bwd.register_fake(_rows_bwd_fake)
torch.library.register_autograd("gnc_ext::spherical_ce_rows_nw", _rows_autograd(_sce_rows_nw_bwd),
                                setup_context=_sce_rows_setup)


# ----------------------------------------------- op 2: gradient-in-forward strategy --
@torch.library.custom_op("gnc_ext::spherical_ce_fused", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _sce_fused(H: Tensor, W: Tensor, y: Tensor, tau: float, ignore_index: int, label_smoothing: float,
               margin: float, margin_type: int, normalize: bool, reduction: int, need_h: bool, need_w: bool,
               row_chunk_: int, interclass_threshold: float = 0.0,
               subcenters: int = 1) -> Tuple[Tensor, Tensor, Tensor]:
    B, d = H.shape
    K = W.shape[0] // subcenters
    check_labels(y, K, True, ignore_index)
    acc = acc_dtype(H.dtype)
    if W.dtype != acc:
        raise TypeError(f"W: the gradient-in-forward strategy takes float32/float64 inputs, got {W.dtype} "
                        "(16-bit inputs use the recompute strategy)")
    st = stream_of(H)
    dev = H.device
    if normalize:
        # H (B × d, small): the native normalize_rows kernel. W (K × d): its normalisation is
        # folded into the tile (a column scale by 1/max(‖w_k‖, eps)), so Ŵ is never stored;
        # the backward goes through the native normalize_rows_backward kernel.
        Hn = torch.empty_like(H, memory_format=torch.contiguous_format)
        nH = torch.empty(B, dtype=acc, device=dev)
        native.normalize_rows_forward(view(H), view(Hn), view(nH), NORM_EPS, st)
        nW = torch.linalg.vector_norm(W, dim=1)  # W's dtype is acc: a reduction, no K × d temporary
        if _validate.config.check_finite and not bool(torch.isfinite(nH).all()):
            raise ValueError("H: contains NaN or Inf values (or a row whose norm overflows)")
        if _validate.config.check_finite and not bool(torch.isfinite(nW).all()):
            raise ValueError("W: contains NaN or Inf values (or a row whose norm overflows)")
        invW = 1.0 / nW.clamp_min(NORM_EPS)
    else:
        Hn, nH, nW, invW = H, None, None, None
    valid = y != ignore_index
    n_valid = int(valid.sum())
    row_scale = (1.0 / max(n_valid, 1)) if reduction == 0 else 1.0
    scale_all = valid.to(torch.float64) * row_scale
    dHn = torch.empty((B, d), dtype=acc, device=dev) if need_h else None
    dWn = None  # dŴ (K × d): the first row block writes it, later ones add in place
    loss_rows = torch.empty(B, dtype=torch.float64, device=dev)
    rc = row_chunk_ or row_chunk(B, W.shape[0])
    for r0 in range(0, B, rc):
        r1 = min(B, r0 + rc)
        Hr, yr = Hn[r0:r1], y[r0:r1]
        state = torch.empty((r1 - r0, 4), dtype=torch.float64, device=dev)
        state[:, 0] = -math.inf
        state[:, 1:] = 0.0
        tile = Hr @ W.T  # (rows × K·k), every class of these rows
        if invW is not None:
            tile.mul_(invW)
        ctile = tile
        if subcenters > 1:  # class cosines: the max over each class's sub-centres
            t3 = tile.view(tile.shape[0], K, subcenters)
            ctile, arg = t3.max(2)
        native.sce_fold(view(ctile), view(yr), 0, view(state), tau, margin_type, margin, ignore_index, st,
                        interclass_threshold=interclass_threshold)
        lr, stats = finish_state(state, yr, K, tau, ignore_index, label_smoothing, margin, margin_type)
        lse, q = stats[:, 0], stats[:, 1]
        loss_rows[r0:r1] = lr
        if not (need_h or need_w):
            continue
        sc = scale_all[r0:r1].contiguous()
        native.sce_grad(view(ctile), view(yr), 0, K, view(lse), view(q), view(sc), tau, margin_type, margin,
                        label_smoothing, ignore_index, st, interclass_threshold=interclass_threshold)
        if subcenters > 1:  # each class's gradient to its arg-max sub-centre
            t3.zero_().scatter_(2, arg.unsqueeze(2), ctile.unsqueeze(2))
            ctile = arg = t3 = None
        if need_w:  # dŴ += gᵀ·Ĥ_r
            if dWn is None:
                dWn = tile.T @ Hr
            else:
                dWn.addmm_(tile.T, Hr)
        if need_h:  # dĤ_r = g·Ŵ = (g · diag(1/‖w‖))·W
            if invW is not None:
                tile.mul_(invW)
            torch.mm(tile, W, out=dHn[r0:r1])
        del tile
    total = loss_rows.sum()
    loss = ((total / max(n_valid, 1)) if reduction == 0 else total).to(acc)

    def through_norm(x: Tensor, n, g: Tensor) -> Tensor:
        if normalize:  # in place: the native kernel reads g[i, j] before writing dx[i, j]
            native.normalize_rows_backward(view(x), view(n), view(g), view(g), NORM_EPS, st)
        return g

    dH = through_norm(H, nH, dHn) if need_h else H.new_empty(0)
    dW = through_norm(W, nW, dWn) if need_w else W.new_empty(0)
    return loss, dH, dW


@_sce_fused.register_fake
def _(H, W, y, tau, ignore_index, label_smoothing, margin, margin_type, normalize, reduction, need_h, need_w,
      row_chunk_, interclass_threshold=0.0, subcenters=1):
    loss = H.new_empty((), dtype=acc_dtype(H.dtype))
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
    return (gh, gw) + (None,) * (len(ctx.needs_input_grad) - 2)


torch.library.register_autograd("gnc_ext::spherical_ce_fused", _fused_backward, setup_context=_fused_setup)


