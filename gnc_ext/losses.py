"""Public loss functions: spherical cross-entropy (with CosFace/ArcFace margins and label
smoothing) and the HardMax loss, fused so that the B × K logits never exist.

See :mod:`gnc_ext.ops.sce` and :mod:`gnc_ext.ops.hardmax` for the ops, strategies and
memory model; :func:`sce_strategy` says which strategy a call takes.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from . import _validate
from .ops import sce as _sce_ops
from .ops import sce_stored as _sce_stored
from .ops.normalize import normalize_rows
from .ops.tiles import compute_dtype, validate_inputs
from . import resources

_SCE_REDUCTIONS = ("mean", "sum", "none")
HARDMAX_REDUCTIONS = ("max", "mean", "sum", "none")


def _choice(v, name, options):
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
    return v


MARGIN_GRADS = ("exact", "straight_through")


def check_recognition_options(interclass_filtering_threshold=0.0, num_subcenters=1) -> tuple:
    """``(threshold, k)`` validated: the interclass filtering threshold in [-1, 1] (0 = off)
    and the number of sub-centres per class, an int ≥ 1 (ValueError/TypeError naming them).
    Used by :class:`SCEOptions` and the sub-centre helpers."""
    t = _validate.real(interclass_filtering_threshold, "interclass_filtering_threshold")
    if not (math.isfinite(t) and -1.0 <= t <= 1.0):
        raise ValueError(f"interclass_filtering_threshold: expected a value in [-1, 1] (0 = off), got {t}")
    k = _validate.integer(num_subcenters, "num_subcenters")
    if k < 1:
        raise ValueError(f"num_subcenters: expected an integer >= 1, got {k}")
    return t, k


def check_subcenter_rows(W: Tensor, num_subcenters: int, name: str = "W") -> int:
    """K for a classifier of K·k sub-centre rows (ValueError naming ``name`` otherwise)."""
    rows = W.shape[0]
    if rows % num_subcenters != 0 or rows // num_subcenters < 2:
        raise ValueError(f"{name}: expected K * num_subcenters rows with K >= 2 and num_subcenters="
                         f"{num_subcenters}, got {rows} rows")
    return rows // num_subcenters


@dataclasses.dataclass(frozen=True)
class SCEOptions:
    """The options of the spherical cross-entropy, validated once (in ``__post_init__``;
    TypeError/ValueError naming the field) and shared by :func:`spherical_cross_entropy`,
    :class:`gnc_ext.nn.SphericalCELoss` and :class:`gnc_ext.nn.ShardedSphericalCELoss`.
    Field meanings: :func:`spherical_cross_entropy`. Numbers are stored as Python
    floats/ints (numpy scalars are converted); :meth:`replace` gives a validated copy
    with some fields changed."""

    tau: float = 0.05
    reduction: str = "mean"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    margin: float = 0.0
    margin_type: str = "cosface"
    normalize: bool = True
    margin_grad: str = "exact"
    interclass_filtering_threshold: float = 0.0
    num_subcenters: int = 1

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: set the validated values)
        put("tau", _validate.temperature(self.tau, "tau"))
        put("reduction", _choice(self.reduction, "reduction", _SCE_REDUCTIONS))
        put("ignore_index", _validate.integer(self.ignore_index, "ignore_index"))
        ls = _validate.real(self.label_smoothing, "label_smoothing")
        if not 0.0 <= ls <= 1.0:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {ls}")
        put("label_smoothing", ls)
        put("margin_type", _choice(self.margin_type, "margin_type", tuple(_sce_ops.MARGIN_CODES)))
        put("margin_grad", _choice(self.margin_grad, "margin_grad", MARGIN_GRADS))
        m = _validate.real(self.margin, "margin")
        hi = 1.0 if self.margin_type == "cosface" else math.pi / 2
        if not (math.isfinite(m) and 0.0 <= m <= hi):
            raise ValueError(f"margin: expected 0 <= margin <= {hi:g} for margin_type={self.margin_type!r}, got {m}")
        put("margin", m)
        put("normalize", _validate.boolean(self.normalize, "normalize"))
        t, k = check_recognition_options(self.interclass_filtering_threshold, self.num_subcenters)
        put("interclass_filtering_threshold", t)
        put("num_subcenters", k)

    @property
    def margin_code(self) -> int:
        """The native epilogue's margin code (0: none; :data:`gnc_ext.ops.sce.MARGIN_CODES`,
        :data:`gnc_ext.ops.sce.ARCFACE_STRAIGHT_THROUGH`)."""
        if self.margin == 0:
            return 0
        if self.margin_type == "arcface" and self.margin_grad == "straight_through":
            return _sce_ops.ARCFACE_STRAIGHT_THROUGH
        return _sce_ops.MARGIN_CODES[self.margin_type]

    @property
    def plain_epilogue(self) -> bool:
        """No straight-through ArcFace, no interclass filtering, no sub-centres: the
        options the stored-exponents strategy covers."""
        return (self.margin_code != _sce_ops.ARCFACE_STRAIGHT_THROUGH and self.interclass_filtering_threshold == 0.0
                and self.num_subcenters == 1)

    def replace(self, **changes) -> "SCEOptions":
        return dataclasses.replace(self, **changes)


def _grad_bytes(H: Tensor, W: Tensor) -> int:
    """Bytes of the gradients a loss call will allocate (H's and W's, where they need one)."""
    return sum(t.numel() * t.element_size() for t in (H, W) if t.requires_grad)


def _needs(t) -> bool:
    return torch.is_grad_enabled() and bool(getattr(t, "requires_grad", False))


SCE_STRATEGIES = ("recompute", "grad_in_forward", "stored")


def sce_strategy(H: Tensor, W: Tensor, *, reduction: str = "mean", margin: float = 0.0,
                 margin_type: str = "cosface", margin_grad: str = "exact", interclass_filtering_threshold: float = 0.0,
                 num_subcenters: int = 1) -> str:
    """The strategy :func:`spherical_cross_entropy` takes for these inputs and options
    now, from ``gnc_ext.config.sce_strategy``, for the dtype the GEMMs run in (inside
    ``torch.autocast`` or with mixed input dtypes that is the 16-bit dtype,
    :func:`gnc_ext.ops.tiles.compute_dtype`):

    * "stored" where it applies: autograd needs a gradient of H or W, the inputs are
      float32, float64 or bfloat16, and none of straight-through ArcFace, interclass
      filtering or sub-centres is asked for (:mod:`gnc_ext.ops.sce_stored`: the shifted
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
    _validate.tensor(H, "H", ndim=2)
    _validate.tensor(W, "W", ndim=2)
    opts = SCEOptions(reduction=reduction, margin=margin, margin_type=margin_type, margin_grad=margin_grad,
                      interclass_filtering_threshold=interclass_filtering_threshold, num_subcenters=num_subcenters)
    return _strategy(H, W, compute_dtype(H, W), opts)


def _strategy(H: Tensor, W: Tensor, dtype: torch.dtype, opts: SCEOptions) -> str:
    choice = _validate.config.sce_strategy
    need = _needs(H) or _needs(W)
    gif = opts.reduction != "none" and need and dtype in (torch.float32, torch.float64)
    stored = need and opts.plain_epilogue and _sce_stored.storage_dtype(dtype) is not None
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
    fits = _sce_stored.stored_bytes(H.shape[0], W.shape[0], dtype) <= _validate.config.sce_stored_budget_bytes
    measured = dtype in (torch.float32, torch.bfloat16)  # where it beat "recompute" (benchmarks/RESULTS.md)
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
    margin_grad: str = "exact",
    interclass_filtering_threshold: float = 0.0,
    num_subcenters: int = 1,
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

    ``margin_grad`` picks the ArcFace convention (CosFace is the same under both):

    =====================  ===================================  ==========================
    margin_grad            target logit value                   target gradient dφ/dc
    =====================  ===================================  ==========================
    ``"exact"`` (default)  cos(θ + m), fallback c − m·sin m     the exact derivative above
                           where θ + m > π
    ``"straight_through"`` cos(θ + m) for every θ, with          1 (the margin is added
                           θ = arccos(clamp(c, −1, 1))          under no_grad, as in
                                                                InsightFace's ArcFace)
    =====================  ===================================  ==========================

    ``interclass_filtering_threshold`` t ∈ [−1, 1] (0 = off; InsightFace's
    ``interclass_filtering_threshold``): in rows with a label, every non-target cosine
    above t is replaced by 0 before the margin and the softmax, with no gradient
    through it.

    ``num_subcenters`` k ≥ 1 (sub-center ArcFace, Deng et al. 2020): W has K·k rows,
    class-major (rows c·k … c·k + k − 1 belong to class c); the class cosine is the max
    over its sub-centres and its gradient goes to the arg-max sub-centre. The max is
    taken per tile, so nothing of size B × K·k exists beyond one tile (both strategies).
    These three options are epilogue features of the recompute and gradient-in-forward
    strategies: a call with ``margin_grad="straight_through"`` (ArcFace), a non-zero
    threshold or k > 1 does not take the stored-exponents strategy.

    Label smoothing ε as in ``F.cross_entropy``: ``loss_i = (1−ε)(−log p_iy) +
    (ε/K) Σ_k (−log p_ik)`` (the smoothing term uses the margin-adjusted logits).
    Rows with ``y_i == ignore_index`` contribute 0 and are excluded from the mean's
    denominator; if every row is ignored, ``"mean"`` returns 0 (F.cross_entropy
    returns NaN there).

    Args:
        H: (B, d) features, float32/float64/bfloat16/float16, B ≥ 1.
        W: (K, d) class weights on H's device, K ≥ 2; the same dtype as H, or float32
            master weights against 16-bit H (see "Mixed precision").
        y: (B,) int64 or int32 labels in [0, K) or ``ignore_index``.
        tau: temperature, >= 1e-6 (``gnc_ext._validate.MIN_TAU``; the τ → 0 limit is
            :func:`hardmax_loss`).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per-row losses, 0 for ignored rows).
        normalize: ``False`` when the caller passes rows that are already unit vectors
            (then no normalisation and no gradient through it).

    Returns:
        The loss in float32 (float64 for float64 inputs) regardless of the input dtype:
        a scalar, or (B,) for ``reduction="none"``.

    Mixed precision: inside ``torch.autocast`` (CPU bfloat16/float16; CUDA float16 and
    bfloat16) H and W are cast to the autocast dtype (float64 stays float64), and outside
    it a 16-bit H against float32 W (or the reverse) is cast to the 16-bit dtype
    (:func:`gnc_ext.ops.tiles.compute_dtype`); autograd returns each gradient in its
    input's dtype (the float32 master weights get a float32 gradient). Per step: the
    normalisation of H and of each block of W in that dtype with fp32 norms; the cosine
    GEMMs on 16-bit operands with fp32 accumulation and an fp32 tile (on the CPU the
    operands are upcast per tile, on CUDA tensor cores write fp32); margins, softmax and
    log-sum-exp in fp32/fp64 (below); the backward products on 16-bit operands with fp32
    accumulation (CUDA) or upcast per tile (CPU); the loss is float32. The ops run
    with autocast off inside (their own precision choices hold, also for a backward
    called inside the region), and ``torch.compile(fullgraph=True)`` traces through the
    casts. Non-finite upstream gradients (``torch.amp.GradScaler``'s overflow) pass
    through the backward to the gradients without an error, so the scaler skips the step.

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
        outside [0, K) other than ignore_index, τ < 1e-6, ε ∉ [0, 1], margin out of range,
        an unknown margin_grad, a threshold outside [−1, 1], num_subcenters < 1, W whose
        row count is not K·num_subcenters.
    """
    opts = SCEOptions(tau, reduction, ignore_index, label_smoothing, margin, margin_type, normalize, margin_grad,
                      interclass_filtering_threshold, num_subcenters)
    return sce_with_options(H, W, y, opts)


def sce_with_options(H: Tensor, W: Tensor, y: Tensor, options: SCEOptions) -> Tensor:
    """:func:`spherical_cross_entropy` with its options in one validated
    :class:`SCEOptions` (what the loss modules call)."""
    if not isinstance(options, SCEOptions):
        raise TypeError(f"options: expected a gnc_ext.losses.SCEOptions, got {type(options).__name__}")
    o = options
    if o.num_subcenters > 1:
        _validate.tensor(W, "W", ndim=2)
        check_subcenter_rows(W, o.num_subcenters)
    # with normalize=True every path computes ‖w_k‖ anyway (the fused op for all of W, the
    # recompute op block by block) and rejects non-finite W from those norms
    y = validate_inputs(H, W, y, allow_ignore=True, ignore_index=o.ignore_index, check_W=not o.normalize)
    resources.ensure_fits(_grad_bytes(H, W), what=f"spherical_cross_entropy gradients (B={H.shape[0]}, K={W.shape[0]})",
                          device=W.device)
    dtype = compute_dtype(H, W)
    H, W = H.to(dtype), W.to(dtype)  # autocast / mixed dtypes; autograd casts each gradient back
    strategy = _strategy(H, W, dtype, o)
    args = (o.tau, o.ignore_index, o.label_smoothing, o.margin, o.margin_code)
    ops = torch.ops.gnc_ext
    if strategy == "grad_in_forward":
        return ops.spherical_ce_fused(H, W, y, *args, o.normalize, 0 if o.reduction == "mean" else 1, _needs(H),
                                      _needs(W), 0, o.interclass_filtering_threshold, o.num_subcenters)[0]
    Hn = normalize_rows(H) if o.normalize else H
    if strategy == "stored":  # shifted exponentials stored once, backward = two GEMMs on them
        rows = ops.spherical_ce_stored(Hn, W, y, *args, o.normalize, 0)[0]
    else:  # normalize: Ŵ is formed one block of classes at a time, never stored
        op = ops.spherical_ce_rows_nw if o.normalize else ops.spherical_ce_rows
        rows = op(Hn, W, y, *args, 0, o.interclass_filtering_threshold, o.num_subcenters)[0]
    if o.reduction == "none":
        return rows
    total = rows.sum()
    if o.reduction == "sum":
        return total
    return total / (y != o.ignore_index).sum().clamp_min(1).to(rows.dtype)


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
        H: (B, d), W: (K, d) with K ≥ 2, same floating dtype and device (mixed
        precision and ``torch.autocast`` as in :func:`spherical_cross_entropy`);
        y: (B,) int64 or int32 in [0, K) (no ignore_index).

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
    reduction = _choice(reduction, "reduction", HARDMAX_REDUCTIONS)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    # normalize=True: the op rejects non-finite W from the norms of its blocks
    y = validate_inputs(H, W, y, allow_ignore=False, check_W=not normalize)
    resources.ensure_fits(_grad_bytes(H, W), what=f"hardmax_loss gradients (B={H.shape[0]}, K={W.shape[0]})",
                          device=W.device)
    dtype = compute_dtype(H, W)
    H, W = H.to(dtype), W.to(dtype)  # autocast / mixed dtypes; autograd casts each gradient back
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
