"""Public loss functions: spherical cross-entropy (with CosFace/ArcFace margins and label
smoothing) and the HardMax loss, fused so that the B × K logits never exist.

See :mod:`gnc_ext.ops.sce` and :mod:`gnc_ext.ops.hardmax` for the ops, strategies and
memory model; :func:`sce_strategy` says which strategy a call takes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _validate
from .ops import sce as _sce_ops
from .ops import sce_stored as _sce_stored
from .ops.normalize import normalize_rows
from .ops.tiles import validate_inputs

_SCE_REDUCTIONS = ("mean", "sum", "none")
_HM_REDUCTIONS = ("max", "mean", "sum", "none")


def _choice(v, name, options):
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
    return v


def _check_label_smoothing(v) -> float:
    v = _validate.real(v, "label_smoothing")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {v}")
    return v


def _check_margin(margin, margin_type) -> tuple:
    margin_type = _choice(margin_type, "margin_type", tuple(_sce_ops.MARGIN_CODES))
    margin = _validate.real(margin, "margin")
    hi = 1.0 if margin_type == "cosface" else math.pi / 2
    if not (math.isfinite(margin) and 0.0 <= margin <= hi):
        raise ValueError(f"margin: expected 0 <= margin <= {hi:g} for margin_type={margin_type!r}, got {margin}")
    return margin, (_sce_ops.MARGIN_CODES[margin_type] if margin > 0 else 0)


def _needs(t) -> bool:
    return torch.is_grad_enabled() and bool(getattr(t, "requires_grad", False))


SCE_STRATEGIES = ("recompute", "grad_in_forward", "stored")


def sce_strategy(H: Tensor, W: Tensor, *, reduction: str = "mean") -> str:
    """The strategy :func:`spherical_cross_entropy` takes for these inputs now, from
    ``gnc_ext.config.sce_strategy``:

    * "stored" where it applies: autograd needs a gradient of H or W, and the inputs are
      float32, float64 or bfloat16 (:mod:`gnc_ext.ops.sce_stored`: the shifted
      exponentials are stored in the forward, the backward is two GEMMs on them);
      "recompute" elsewhere. The budget does not limit an explicit "stored".
    * "grad_in_forward" where it applies: reduction mean/sum, autograd needs a gradient of
      H or W, float32/float64 inputs (3 GEMM passes: each row block's tile is turned into
      its gradient in the forward); "recompute" elsewhere.
    * "recompute": always (4 GEMM passes, the backward recomputes the tiles).
    * "auto": on the CPU, "grad_in_forward" where it applies, else "stored" for
      float32/bfloat16 inputs with gradients whose B × K store fits
      ``gnc_ext.config.sce_stored_budget_bytes`` (measured faster than "recompute"
      there), else "recompute"; on CUDA "recompute" (the stored strategy's CUDA kernels
      have not run on a GPU yet).
    """
    reduction = _choice(reduction, "reduction", _SCE_REDUCTIONS)
    _validate.tensor(H, "H", ndim=2)
    _validate.tensor(W, "W", ndim=2)
    choice = _validate.config.sce_strategy
    need = _needs(H) or _needs(W)
    same = W.dtype == H.dtype
    gif = reduction != "none" and need and same and H.dtype in (torch.float32, torch.float64)
    stored = need and same and _sce_stored.storage_dtype(H.dtype) is not None
    if choice == "recompute":
        return "recompute"
    if choice == "stored":
        return "stored" if stored else "recompute"
    if choice == "grad_in_forward":
        return "grad_in_forward" if gif else "recompute"
    if H.device.type != "cpu":
        return "recompute"
    if gif:
        return "grad_in_forward"
    fits = _sce_stored.stored_bytes(H.shape[0], W.shape[0], H.dtype) <= _validate.config.sce_stored_budget_bytes
    measured = H.dtype in (torch.float32, torch.bfloat16)  # where it beat "recompute" (benchmarks/RESULTS.md)
    return "stored" if stored and fits and measured else "recompute"


def spherical_cross_entropy(
    H: Tensor,
    W: Tensor,
    y: Tensor,
    *,
    tau: float = 0.05,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    margin: float = 0.0,
    margin_type: str = "cosface",
    normalize: bool = True,
) -> Tensor:
    r"""Spherical (cosine) softmax cross-entropy, fused: the B × K logits never exist.

    ``loss_i = −log softmax(z_i)_{y_i}`` with logits ``z_ik = s_ik/τ`` for ``k ≠ y_i`` and
    ``z_iy = φ(s_iy)/τ`` for the target, where ``s_ik = ⟨ĥ_i, ŵ_k⟩`` and ĥ, ŵ are the rows
    of H and W divided by ``max(‖·‖₂, 1e-12)`` (``normalize=True``: done inside by the
    native ``normalize_rows`` kernel, gradients flow through it; a zero row becomes the
    zero vector, cosines 0, never NaN). Margins:

    * ``"cosface"``: ``φ(c) = c − m`` (0 ≤ m ≤ 1).
    * ``"arcface"``: ``φ(c) = cos(θ + m) = c·cos m − sinθ·sin m`` with
      ``sinθ = sqrt(max(1 − c², 1e-12))`` while ``θ + m ≤ π`` (i.e. ``c > cos(π − m)``), and
      the usual fallback ``φ(c) = c − m·sin m`` beyond (InsightFace's ``easy_margin=False``
      rule; note it is discontinuous at ``c = cos(π − m)``). 0 ≤ m ≤ π/2. The gradient
      is the exact derivative of this piecewise function (``φ'(c) = cos m +
      sin m·c/sinθ``, ``cos m`` where the 1e-12 floor is active, 1 in the fallback).

    Label smoothing ε as in ``F.cross_entropy``: ``loss_i = (1−ε)(−log p_iy) +
    (ε/K) Σ_k (−log p_ik)`` (the smoothing term uses the margin-adjusted logits).
    Rows with ``y_i == ignore_index`` contribute 0 and are excluded from the mean's
    denominator; if every row is ignored, ``"mean"`` returns 0 (F.cross_entropy
    returns NaN there).

    Args:
        H: (B, d) features, float32/float64/bfloat16/float16, B ≥ 1.
        W: (K, d) class weights, same dtype and device, K ≥ 2.
        y: (B,) int64 labels in [0, K) or ``ignore_index``.
        tau: temperature, >= 1e-6 (``gnc_ext._validate.MIN_TAU``; the τ → 0 limit is
            :func:`hardmax_loss`).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per-row losses, 0 for ignored rows).
        normalize: ``False`` when the caller passes rows that are already unit vectors
            (then no normalisation and no gradient through it).

    Returns:
        The loss in float32 (float64 for float64 inputs) regardless of the input dtype:
        a scalar, or (B,) for ``reduction="none"``.

    Numerics: cosines are fp32 GEMM tiles (16-bit inputs are upcast per tile, or on
    CUDA multiplied on tensor cores with fp32 output; fp64 inputs stay fp64); online
    log-sum-exp with per-row state in fp64 that keeps the non-target sum apart from the
    target term, so the loss is formed as ``log1p(Σ_{k≠y} exp(z_k − z_y))`` and the
    target's gradient as ``p_y − 1 = −Σ_{k≠y} p_k``: small losses keep full relative
    accuracy (at τ = 0.01 a loss of 1e-19 is exact to 1e-14 in fp64, where
    ``F.cross_entropy`` returns 0 and a zero target gradient); fp32 accumulation
    of dĤ and dŴ. Complexity (:func:`sce_strategy` says which strategy a call takes;
    ``gnc_ext.config.sce_strategy`` sets it): 3 GEMM passes (6·B·K·d flops) with
    "grad_in_forward" (the CPU default for float32/float64 mean/sum with gradients: row
    blocks that see all K classes turn their tile into the gradient in the forward) and
    with "stored" (the CPU default for the other float32/bfloat16 cases with gradients
    while B × K values fit ``gnc_ext.config.sce_stored_budget_bytes``: the shifted exponentials
    exp((s − 1)/τ) are stored in the forward and the backward is two GEMMs on them,
    :mod:`gnc_ext.ops.sce_stored`), 4 with "recompute" (the backward recomputes tiles;
    the default otherwise, and on CUDA). Memory: O(B) state plus one fp32 tile (recompute:
    ``gnc_ext.ops.tiles.TILE_BYTES`` = 32 MiB of B × chunk, 128 MiB on CUDA;
    gradient-in-forward: ``gnc_ext.ops.sce.FUSED_TILE_BYTES`` = 256 MiB of rows × K;
    stored: the B × K store, in the input precision or bfloat16) plus the gradients; no K × d copy of Ŵ or dŴ on any path (W is normalised one block
    of classes at a time, or its normalisation is folded into the tile as a column
    scale), and never a B × K tensor (unless B × K fits one tile). Deterministic (no
    floating-point atomics). On CUDA: cuBLAS GEMMs and the native epilogue kernels; with
    16-bit inputs the backward's products run on the tensor cores
    (``gnc_ext.config.lowp_grad_gemm``); float32 GEMMs follow
    ``gnc_ext.config.cuda_fp32_mode`` ("ieee" default, "tf32" fast with ~1e-3 error in
    the cosines). Timings: benchmarks/RESULTS.md.

    Raises:
        TypeError/ValueError naming the argument: wrong types/dtypes, shapes or devices,
        B = 0, K < 2, NaN/Inf in H or W (when ``gnc_ext.config.check_finite``), labels
        outside [0, K) other than ignore_index, τ < 1e-6, ε ∉ [0, 1], margin out of range.
    """
    tau = _validate.temperature(tau, "tau")
    reduction = _choice(reduction, "reduction", _SCE_REDUCTIONS)
    ignore_index = _validate.integer(ignore_index, "ignore_index")
    label_smoothing = _check_label_smoothing(label_smoothing)
    margin, mcode = _check_margin(margin, margin_type)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    need_h, need_w = _needs(H), _needs(W)
    # with normalize=True every path computes ‖w_k‖ anyway (the fused op for all of W, the
    # recompute op block by block) and rejects non-finite W from those norms
    validate_inputs(H, W, y, allow_ignore=True, ignore_index=ignore_index, check_W=not normalize)
    strategy = sce_strategy(H, W, reduction=reduction)
    if strategy == "grad_in_forward":
        loss, _, _ = torch.ops.gnc_ext.spherical_ce_fused(
            H, W, y, tau, ignore_index, label_smoothing, margin, mcode, normalize,
            0 if reduction == "mean" else 1, need_h, need_w, 0)
        return loss
    Hn = normalize_rows(H) if normalize else H
    if strategy == "stored":  # shifted exponentials stored once, backward = two GEMMs on them
        rows = torch.ops.gnc_ext.spherical_ce_stored(Hn, W, y, tau, ignore_index, label_smoothing, margin, mcode,
                                                      normalize, 0)[0]
    elif normalize:  # Ŵ is formed one block of classes at a time, never stored
        rows, _ = torch.ops.gnc_ext.spherical_ce_rows_nw(Hn, W, y, tau, ignore_index, label_smoothing, margin,
                                                          mcode, 0)
    else:
        rows, _ = torch.ops.gnc_ext.spherical_ce_rows(Hn, W, y, tau, ignore_index, label_smoothing, margin,
                                                       mcode, 0)
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    n_valid = (y != ignore_index).sum().clamp_min(1).to(rows.dtype)
    return total / n_valid


def hardmax_loss(H: Tensor, W: Tensor, y: Tensor, *, reduction: str = "max", normalize: bool = True) -> Tensor:
    r"""HardMax loss (paper Eq. 5) per sample: ``v_i = max_{k≠y_i} ⟨ŵ_k − ŵ_{y_i}, ĥ_i⟩``.

    Reductions: ``"max"`` (the paper's ``max_i v_i``), ``"mean"``, ``"sum"``, ``"none"``
    ((B,) values). Normalisation as in :func:`spherical_cross_entropy` (eps 1e-12, the
    native ``normalize_rows`` kernel; zero rows give cosines 0).

    Subgradient and ties: the inner max picks ``k* = `` the **lowest class index**
    attaining the maximum; the ``"max"`` reduction picks the **lowest row index**
    attaining the maximum (``torch.argmax``'s rule). The gradient is then that of
    ``⟨ŵ_{k*} − ŵ_y, ĥ_i⟩`` (through the normalisation), i.e. a subgradient of the loss.

    Args:
        H: (B, d), W: (K, d) with K ≥ 2, same floating dtype and device;
        y: (B,) int64 in [0, K) (no ignore_index).

    Returns:
        float32 (float64 for float64 inputs) scalar, or (B,) for ``"none"``.

    Complexity: one GEMM pass with a masked max/argmax epilogue (2·B·K·d flops); the
    backward is sparse (O(B·d)), plus the normalisation backward (O((B+K)·d)).
    Memory: O(B) state plus one fp32 tile and one normalised block of W (no K × d copy Ŵ,
    also on the TF32-screened float32 path, ``gnc_ext.config.hardmax_screen``), plus the
    gradients. The backward sums repeated classes deterministically.

    Raises:
        TypeError/ValueError naming the argument (as spherical_cross_entropy).
    """
    reduction = _choice(reduction, "reduction", _HM_REDUCTIONS)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    # normalize=True: the op rejects non-finite W from the norms of its blocks
    validate_inputs(H, W, y, allow_ignore=False, check_W=not normalize)
    Hn = normalize_rows(H) if normalize else H
    if normalize:  # Ŵ formed one block of classes at a time; a sparse backward through it
        v, _ = torch.ops.gnc_ext.hardmax_rows_nw(Hn, W, y, 0)
    else:
        v, _ = torch.ops.gnc_ext.hardmax_rows(Hn, W, y, 0)
    if reduction == "none":
        return v
    if reduction == "sum":
        return v.sum()
    if reduction == "mean":
        return v.mean()
    return v.gather(0, torch.argmax(v).reshape(1)).reshape(())  # first maximal row carries the gradient
