"""Tile helpers shared by the loss ops (``gnc_ext.ops.sce``, ``gnc_ext.ops.hardmax``).

The similarity-reduce engine (docs/ARCHITECTURE.md) forms the cosine matrix S = Ĥ·Ŵᵀ one tile of
classes at a time; these helpers size the tiles, multiply them (in the precision the
settings ask for), normalise a block of class weights on the fly, and validate the
inputs the loss functions share. Settings read here (``gnc_ext.config``):
``cuda_fp32_mode`` and ``lowp_grad_gemm`` (see :mod:`gnc_ext.settings`).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _engine, _validate
from .._native import native, view

# Memory budget of one fp32 similarity tile (bytes) of the recompute strategy
# (B × chunk); CUDA takes larger tiles (fewer launches, larger GEMMs).
TILE_BYTES = 32 * 2**20
CUDA_TILE_BYTES = 128 * 2**20  # B=512: 65,536 classes per tile (16 tiles at K=1M)
NORM_EPS = 1e-12  # normalize_rows' default eps: zero rows map to zero vectors


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype of the loss ops: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def col_chunk(rows: int, K: int, cuda: bool = False, d: int = 0) -> int:
    """Classes per tile of the recompute strategy (fp32 tile ≤ TILE_BYTES, or
    CUDA_TILE_BYTES on CUDA, where larger GEMMs and fewer launches pay). ``d``: the
    feature dimension when blocks of W are normalised on the fly (a block's Ŵ_c and dŴ_c
    are classes × d), so that those blocks stay within the budget as well."""
    budget = CUDA_TILE_BYTES if cuda else TILE_BYTES
    return _engine.chunk_size(max(rows, d), K, budget_bytes=budget, multiple=256)


def tf32_mm(a: Tensor, b: Tensor) -> Tensor:
    """One float32 GEMM with TF32 tensor cores allowed (callers hold ``_engine.tf32_on``);
    tests patch this function to emulate TF32 rounding on the CPU."""
    return a @ b


def gemm_mode(t: Tensor) -> str:
    """The float32 GEMM mode for tensors like ``t``: ``config.cuda_fp32_mode`` for
    float32 CUDA tensors, "ieee" otherwise."""
    if t.is_cuda and t.dtype == torch.float32:
        return _validate.config.cuda_fp32_mode
    return "ieee"


def mm_fp32(a: Tensor, b: Tensor, mode: str) -> Tensor:
    """``a @ b``; with ``mode`` "tf32" and float32 operands one TF32 tensor-core GEMM
    (inputs rounded to 10 mantissa bits: ~1e-3 relative error)."""
    if mode == "ieee" or a.dtype != torch.float32 or b.dtype != torch.float32:
        return a @ b
    with _engine.tf32_on():
        return tf32_mm(a, b)


_MM_OUT_DTYPE_OK = None  # CUDA: does torch.mm(..., out_dtype=float32) work for 16-bit inputs?


def mm_out_dtype(a: Tensor, b: Tensor, acc: torch.dtype):
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


def cos_tile(Ha: Tensor, H16: Tensor, Wc: Tensor, acc: torch.dtype) -> Tensor:
    """(rows × c) tile ``H · Wcᵀ`` in ``acc`` dtype. 16-bit CUDA inputs use the tensor-core
    GEMM with fp32 output (``torch.mm(..., out_dtype=)``) when this torch has it (checked
    once, falling back to upcasting the chunk); everything else multiplies in ``acc``."""
    if Wc.dtype != acc:
        t = mm_out_dtype(H16, Wc.T, acc)
        if t is not None:
            return t
    return mm_fp32(Ha, Wc.to(acc).T, gemm_mode(Ha))


def lowp_grad_gemm(Hn: Tensor, Wn: Tensor) -> bool:
    """Whether the recompute backward multiplies the gradient tile in the 16-bit input
    dtype on the tensor cores (``config.lowp_grad_gemm``: "auto" = 16-bit CUDA inputs,
    "on" = any 16-bit inputs, "off" = never; fp32 accumulation inside the GEMM)."""
    mode = _validate.config.lowp_grad_gemm
    lowp = Wn.dtype in (torch.float16, torch.bfloat16) and Hn.dtype == Wn.dtype
    if mode == "on":
        return lowp
    return mode == "auto" and lowp and Wn.is_cuda


def mm_acc(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """``a @ b`` for 16-bit operands with an ``acc`` (fp32) result: torch.mm(out_dtype=)
    where this torch has it on the device, else the 16-bit product upcast."""
    t = mm_out_dtype(a, b, acc)
    return (a @ b).to(acc) if t is None else t


def norm_block(Wc: Tensor, st) -> Tuple[Tensor, Tensor]:
    """``(Ŵ_c, ‖w‖)`` for a block of class rows, by the native ``normalize_rows`` kernel
    (the same rounding as normalising all of W at once, one block-sized copy)."""
    Wn_c = torch.empty(Wc.shape, dtype=Wc.dtype, device=Wc.device)
    n_c = torch.empty(Wc.shape[0], dtype=acc_dtype(Wc.dtype), device=Wc.device)
    native.normalize_rows_forward(view(Wc), view(Wn_c), view(n_c), NORM_EPS, st)
    return Wn_c, n_c


class BlockNorms:
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


def rows_sum_by_index(idx: Tensor, G: Tensor) -> Tuple[Tensor, Tensor]:
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


# ------------------------------------------------------------ mixed precision --
LOWP_DTYPES = (torch.float16, torch.bfloat16)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype of the enclosing ``torch.autocast`` region on ``device_type``, or None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def compute_dtype(H: Tensor, W: Tensor) -> torch.dtype:
    """The dtype the loss ops run their GEMMs in for features H and weights W:

    * inside ``torch.autocast`` on H's device: the autocast dtype (float64 inputs are
      left alone, as autocast does);
    * otherwise H's dtype when both agree, and with one 16-bit input against float32
      (16-bit features against float32 master weights, or the reverse) the 16-bit dtype.

    The loss functions cast both inputs to it (autograd returns each gradient in its
    input's dtype); the GEMMs accumulate in float32 and the softmax/margin arithmetic
    runs in float32/float64 whatever it is. Raises TypeError naming W for other
    combinations (float64 against anything else, float16 against bfloat16 outside
    autocast)."""
    a, b = H.dtype, W.dtype
    if torch.float64 in (a, b):
        if a != b:
            raise TypeError(f"W: expected dtype {a} (the dtype of H), got {b}")
        return a
    ac = autocast_dtype(H.device.type)
    if ac is not None:
        return ac
    if a == b:
        return a
    low = [t for t in (a, b) if t in LOWP_DTYPES]
    if len(low) == 1:
        return low[0]
    raise TypeError(f"W: expected dtype {a} (the dtype of H) or float32, got {b}")


def autocast_off(fn):
    """Decorator for the implementation of a loss custom op: the body runs with autocast
    disabled on its tensors' device, so its GEMMs and epilogues see the dtypes the
    caller chose (:func:`compute_dtype`) even when the op, or its backward, is called
    inside ``torch.autocast`` (autocast would otherwise turn the fp32 tiles into 16-bit
    ones). The body is opaque to torch.compile (the op's fake kernel is traced), so this
    does not affect ``fullgraph=True``."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        dev = next(a for a in args if isinstance(a, Tensor)).device.type
        if torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return run


# ------------------------------------------------------------------- validation --
def validate_inputs(H, W, y, *, allow_ignore: bool, ignore_index: int = -100, check_W: bool = True,
                    label_name: str = "y") -> Tensor:
    """The checks every loss function makes at the door: H (B, d) and W (K, d) floating
    on one device, dtypes that :func:`compute_dtype` accepts, B ≥ 1, K ≥ 2; y (B,) int32
    or int64 labels in [0, K) (or ``ignore_index`` when ``allow_ignore``); NaN/Inf in H
    (and in W when ``check_W``) rejected when ``config.check_finite``. Returns the labels
    as int64 (what the ops take). Raises TypeError/ValueError naming the argument
    (``label_name`` for y)."""
    _validate.tensor(H, "H", ndim=2)
    _validate.tensor(W, "W", ndim=2)
    _validate.tensor(y, label_name, ndim=1, dtypes=(torch.int64, torch.int32), allow_empty=True)
    _validate.same_device(("H", H), ("W", W), ("y", y))
    if H.shape[0] == 0:
        raise ValueError("H: expected at least one row (B >= 1), got shape " + str(tuple(H.shape)))
    if W.shape[0] < 2:
        raise ValueError(f"W: expected at least 2 classes (K >= 2), got shape {tuple(W.shape)}")
    if H.shape[1] != W.shape[1]:
        raise ValueError(f"W: expected {H.shape[1]} columns (the feature dimension of H), got shape {tuple(W.shape)}")
    compute_dtype(H, W)
    if y.shape[0] != H.shape[0]:
        raise ValueError(f"{label_name}: expected shape ({H.shape[0]},) (one label per row of H), got {tuple(y.shape)}")
    y = y.to(torch.int64)
    if torch.compiler.is_compiling():
        return y  # data-dependent checks: labels are re-checked inside the ops at run time
    check_finite_rows(H, "H")
    if check_W:
        check_finite_rows(W, "W")
    check_labels(y, W.shape[0], allow_ignore, ignore_index, label_name)
    return y


def check_finite_rows(x: Tensor, name: str) -> None:
    """Raise ValueError naming ``x`` if it holds NaN/Inf (``gnc_ext.config.check_finite``).

    One pass and an O(rows) temporary: a row sum is non-finite iff the row holds a NaN
    or an Inf, or its finite values overflow the fp32 sum (> 3e38; also rejected).
    (``torch.isfinite(x).all()`` makes several full-size temporaries: ~10x slower.)
    """
    if _validate.config.check_finite and x.numel() > 0:
        acc = acc_dtype(x.dtype)
        if not bool(torch.isfinite(x.sum(dim=1, dtype=acc)).all()):
            raise ValueError(f"{name}: contains NaN or Inf values (or rows whose sum overflows)")


def check_labels(y: Tensor, K: int, allow_ignore: bool, ignore_index: int = -100, name: str = "y") -> None:
    """Raise ValueError naming ``name`` if a label is outside [0, K) (and not ignore_index)."""
    bad = (y < 0) | (y >= K)
    if allow_ignore:
        bad = bad & (y != ignore_index)
    if bool(bad.any()):
        v = int(y[bad][0])
        extra = f" or ignore_index={ignore_index}" if allow_ignore else ""
        raise ValueError(f"{name}: labels must lie in [0, {K - 1}]{extra}; got {v}")
