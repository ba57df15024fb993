"""HardMax loss and cosine argmax (``predict``) as ``torch.library`` custom ops.

``hardmax_rows(Hn, Wn, y, chunk)``
    ``(values, arg)``: ``values_i = max_{k≠y_i} s_ik − s_iy_i`` and ``arg_i`` the
    maximising class (lowest index among ties), from class tiles folded by the native
    masked-argmax epilogue. Its backward is sparse: ``dĤ_i = u_i (ŵ_{arg_i} − ŵ_{y_i})``,
    ``dŴ`` gets ``±u_i ĥ_i`` at rows arg_i / y_i. ``hardmax_rows_nw(Hn, W, y, chunk)``
    takes the raw weights and normalises block by block (the public ``normalize=True``
    path); both backward through ``hardmax_rows_backward``, which sums repeated classes
    with a deterministic sort-based scatter and, for raw W, takes only the (≤ 2B) touched
    rows through the normalisation.

``argmax_cosine(H, Wn, chunk)`` / ``argmax_cosine_nw(H, W, chunk)``
    ``argmax_k ⟨h_i, ŵ_k⟩`` (lowest index among ties), what ``nn.SphericalCELoss.predict``
    uses; the ``_nw`` form normalises W block by block.

float32 screening (``gnc_ext.config.hardmax_screen``): tiles formed with TF32 GEMMs and
every candidate within the TF32 error bound re-scored exactly in float64
(``gnc_ext._engine.certified_argmax``): the same maxima and argmax as fp32 tiles, each
block of W normalised when its tile is formed (no K × d copy). "auto" screens on CUDA
with at least ``_engine.SCREEN_MIN_ROWS`` rows. Tile helpers: :mod:`.tiles`.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from .. import _engine, _validate
from .._native import native, stream_of, view
from .tiles import (NORM_EPS, BlockNorms, acc_dtype, autocast_off, check_labels, col_chunk, cos_tile, norm_block,
                    rows_sum_by_index)


def screened(Hn: Tensor, Wn: Tensor) -> bool:
    """Whether HardMax / argmax of these inputs take the TF32-screened path
    (``config.hardmax_screen``; float32 inputs only)."""
    mode = _validate.config.hardmax_screen
    fp32 = Hn.dtype == torch.float32 and Wn.dtype == torch.float32
    if mode == "on":
        return fp32
    return mode == "auto" and fp32 and Hn.is_cuda and Hn.shape[0] >= _engine.SCREEN_MIN_ROWS


# ------------------------------------------------------------ op 3: HardMax rows --
@torch.library.custom_op("gnc_ext::hardmax_rows", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _hardmax_rows(Hn: Tensor, Wn: Tensor, y: Tensor, chunk: int) -> Tuple[Tensor, Tensor]:
    B, K = Hn.shape[0], Wn.shape[0]
    check_labels(y, K, False)
    acc = acc_dtype(Hn.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=Hn.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=Hn.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=Hn.device)
    c = chunk or col_chunk(B, K, Hn.is_cuda)
    if screened(Hn, Wn):
        # TF32 tiles screened, candidates re-scored exactly (float64): the same max and
        # argmax as the fp32 path up to float64 rounding (see _engine.certified_argmax)
        A, Wc = Hn.contiguous(), Wn.contiguous()
        best, arg, _ = _engine.certified_argmax(A, Wc, None, y, chunk=c)
        tgt = (A.double() * Wc[y].double()).sum(1)
        return (best - tgt).to(acc), arg
    Ha = Hn.to(acc)
    st = stream_of(Hn)
    for s in range(0, K, c):
        tile = cos_tile(Ha, Hn, Wn[s : s + c], acc)
        native.masked_argmax_fold(view(tile), view(y), s, view(best), view(arg), view(tgt), st)
        tile = None
    return (best - tgt).to(acc), arg


@_hardmax_rows.register_fake
def _(Hn, Wn, y, chunk):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=acc_dtype(Hn.dtype)), Hn.new_empty((B,), dtype=torch.int64)


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
@autocast_off
def _hardmax_rows_nw(Hn: Tensor, W: Tensor, y: Tensor, chunk: int) -> Tuple[Tensor, Tensor]:
    """:func:`_hardmax_rows` with the raw weights W: each block of classes is normalised on
    the fly (also on the screened path, which re-scores candidates from the block)."""
    B, K = Hn.shape[0], W.shape[0]
    check_labels(y, K, False)
    st = stream_of(Hn)
    if screened(Hn, W):  # TF32 tiles, exact re-scoring, W normalised block by block
        norms = BlockNorms(True)
        A = Hn.contiguous()
        c = chunk or col_chunk(B, K, Hn.is_cuda, W.shape[1])
        best, arg, _ = _engine.certified_argmax(A, W.contiguous(), None, y, chunk=c, normalize_b=True,
                                                on_block_norms=norms.add)
        norms.raise_if_bad()
        Wy = norm_block(W[y], st)[0]  # the B target rows, normalised as in their blocks
        tgt = (A.double() * Wy.double()).sum(1)
        return (best - tgt).to(acc_dtype(Hn.dtype)), arg
    acc = acc_dtype(Hn.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=Hn.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=Hn.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=Hn.device)
    c = chunk or col_chunk(B, K, Hn.is_cuda, W.shape[1])
    Ha = Hn.to(acc)
    norms = BlockNorms(True)
    for s in range(0, K, c):
        Wb, n_c = norm_block(W[s : s + c], st)
        norms.add(n_c)
        tile = cos_tile(Ha, Hn, Wb, acc)
        native.masked_argmax_fold(view(tile), view(y), s, view(best), view(arg), view(tgt), st)
        tile = Wb = None
    norms.raise_if_bad()
    return (best - tgt).to(acc), arg


@_hardmax_rows_nw.register_fake
def _(Hn, W, y, chunk):
    B = Hn.shape[0]
    return Hn.new_empty((B,), dtype=acc_dtype(Hn.dtype)), Hn.new_empty((B,), dtype=torch.int64)


@torch.library.custom_op("gnc_ext::hardmax_rows_backward", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _hm_rows_bwd(g: Tensor, Hn: Tensor, W: Tensor, y: Tensor, arg: Tensor, normalize_w: bool, need_h: bool,
                 need_w: bool) -> Tuple[Tensor, Tensor]:
    """Sparse HardMax backward for ``dL/dv = g``: ``dĤ_i = g_i (ŵ_{arg_i} − ŵ_{y_i})`` and
    ``dŴ`` holding ``±g_i ĥ_i`` at rows arg_i / y_i (summed per class deterministically).
    With ``normalize_w`` W holds raw weights: the touched rows (at most 2B) are normalised
    again and dŴ goes through the normalisation there, ``dW_k = (dŵ_k − ŵ_k⟨ŵ_k, dŵ_k⟩)/‖w_k‖``
    (dŵ_k/eps where ‖w_k‖ ≤ eps), 0 elsewhere."""
    acc = acc_dtype(Hn.dtype)
    st = stream_of(Hn)
    ga = g.to(acc).unsqueeze(1)
    dH, dW = Hn.new_empty(0), W.new_empty(0)
    if need_h:
        Wa, Wy = W[arg], W[y]
        if normalize_w:
            Wa, Wy = norm_block(Wa, st)[0], norm_block(Wy, st)[0]
        dH = (ga * (Wa.to(acc) - Wy.to(acc))).to(Hn.dtype)
    if need_w:
        gh = ga * Hn.to(acc)
        u, S = rows_sum_by_index(torch.cat([arg, y]), torch.cat([gh, -gh]))
        Su = S.to(W.dtype)  # dŴ rows in W's dtype (as a normalize_rows backward would see them)
        if normalize_w:
            Wu = W[u]
            _, nu = norm_block(Wu, st)
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
    acc = acc_dtype(H.dtype)
    best = torch.full((B,), -math.inf, dtype=torch.float64, device=H.device)
    arg = torch.full((B,), -1, dtype=torch.int64, device=H.device)
    tgt = torch.zeros(B, dtype=torch.float64, device=H.device)
    none = torch.full((B,), -1, dtype=torch.int64, device=H.device)
    Ha = H.to(acc)
    st = stream_of(H)
    for s in range(0, K, chunk):
        Wb = norm_block(W[s : s + chunk], st)[0].to(H.dtype) if normalize_w else W[s : s + chunk]
        tile = cos_tile(Ha, H, Wb, acc)
        native.masked_argmax_fold(view(tile), view(none), s, view(best), view(arg), view(tgt), st)
        tile = Wb = None
    return arg


@torch.library.custom_op("gnc_ext::argmax_cosine", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _argmax_cosine(H: Tensor, Wn: Tensor, chunk: int) -> Tensor:
    """argmax_k <H_i, Wn_k> (lowest index among ties) via the masked-argmax epilogue."""
    c = chunk or col_chunk(H.shape[0], Wn.shape[0], H.is_cuda)
    if screened(H, Wn):  # fp32 on CUDA: TF32 screening, exact re-scoring
        return _engine.certified_argmax(H.contiguous(), Wn.contiguous(), None, None, chunk=c)[1]
    return _argmax_blocks(H, Wn, c, False)


@_argmax_cosine.register_fake
def _argmax_fake(H, Wn, chunk):
    return H.new_empty((H.shape[0],), dtype=torch.int64)


@torch.library.custom_op("gnc_ext::argmax_cosine_nw", mutates_args=(), device_types=("cpu", "cuda"))
@autocast_off
def _argmax_cosine_nw(H: Tensor, W: Tensor, chunk: int) -> Tensor:
    """:func:`_argmax_cosine` with raw weights W (any floating dtype): each block of classes
    is normalised and cast to H's dtype when its tile is formed, so no K × d copy exists."""
    if screened(H, H):  # float32 H: TF32 screening, exact re-scoring from each normalised block
        c = chunk or col_chunk(H.shape[0], W.shape[0], H.is_cuda, W.shape[1])
        return _engine.certified_argmax(H.contiguous(), W.contiguous(), None, None, chunk=c, normalize_b=True)[1]
    return _argmax_blocks(H, W, chunk or col_chunk(H.shape[0], W.shape[0], H.is_cuda, W.shape[1]), True)


_argmax_cosine_nw.register_fake(_argmax_fake)


