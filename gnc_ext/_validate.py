"""Input validation at the door: every public function checks its arguments here and
raises ``TypeError``/``ValueError`` naming the argument and what was expected."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .settings import config  # noqa: F401  (the settings object; keys in gnc_ext.settings)

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)



def _dtype_list(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(
    x,
    name: str,
    *,
    ndim: Optional[int] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a torch tensor of the given rank and dtype on cpu/cuda."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {x.layout} (use .to_dense())")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_list(dtypes)}, got {str(x.dtype).replace('torch.', '')}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda tensor, got device {x.device}")
    if x.dtype == torch.float64 and x.device.type == "cuda" and dtypes == FLOAT_DTYPES:
        pass  # fp64 is accepted on CUDA too (slow path); ops that refuse it check themselves
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(x.shape)}")
    return x


def same_device(*pairs) -> None:
    """``same_device(("H", H), ("W", W), ...)``: all tensors on one device."""
    first_name, first = pairs[0]
    for name, t in pairs[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name}: expected a tensor on {first.device} (the device of {first_name}), got {t.device}"
            )


def finite(x: torch.Tensor, name: str) -> None:
    """NaN/Inf scan (``config.check_finite``): one ``aminmax`` reduction (NaN propagates
    through min/max, ±Inf shows as an extreme), no full-size temporary."""
    if config.check_finite and x.is_floating_point() and x.numel() > 0:
        lo, hi = torch.aminmax(x)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise ValueError(f"{name}: contains NaN or Inf values")


def _is_real(v) -> bool:
    """Python/NumPy real numbers (not bool)."""
    return (isinstance(v, (numbers.Real, np.floating, np.integer))
            and not isinstance(v, (bool, np.bool_)))


def _is_integral(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def real(v, name: str) -> float:
    """A finite real number (Python or NumPy scalar, not bool)."""
    if not _is_real(v):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise ValueError(f"{name}: expected a finite number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {f}")
    return f


def positive_float(v, name: str, *, allow_zero: bool = False) -> float:
    if not _is_real(v):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    try:
        v = float(v)
    except OverflowError:  # an int beyond the float range
        v = math.inf
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1

# Smallest accepted softmax temperature: logits are cosines / τ, so below this the fp32
# cosine rounding (~6e-8) is amplified past 0.06 in the logits and the loss, its
# gradient (~1/τ) and exp() leave the float ranges (τ = 1e-20 already overflows fp32
# gradients). The τ → 0 limit is the HardMax loss.
MIN_TAU = 1e-6


def temperature(v, name: str = "tau") -> float:
    """A softmax temperature: a finite real number >= MIN_TAU (1e-6)."""
    v = positive_float(v, name)
    if v < MIN_TAU:
        raise ValueError(f"{name}: expected a temperature >= {MIN_TAU:g} (logits are cosines / {name}; "
                         f"for the {name} -> 0 limit use the HardMax loss), got {v}")
    return v


def integer(v, name: str, *, minimum: Optional[int] = None, maximum: int = INT64_MAX) -> int:
    """An integer (Python or NumPy, not bool) in [minimum, maximum] (default: int64 range,
    what the native code and torch ops take)."""
    if not _is_integral(v):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    if v > maximum or v < INT64_MIN:
        lo = INT64_MIN if minimum is None else minimum
        raise ValueError(f"{name}: expected an integer in [{lo}, {maximum}], got {_short_int(v)}")
    return v


def _short_int(v: int) -> str:
    t = str(v)
    return t if len(t) <= 21 else f"{t[:6]}...({len(t)} digits)"


def seed(v, name: str = "seed") -> Optional[int]:
    """``None`` or an integer that ``torch.Generator.manual_seed`` takes ([-2**63, 2**64))."""
    if v is None:
        return None
    if not _is_integral(v):
        raise TypeError(f"{name}: expected an integer or None, got {type(v).__name__}")
    v = int(v)
    if not INT64_MIN <= v < 2**64:
        raise ValueError(f"{name}: expected an integer in [-2**63, 2**64), got {_short_int(v)}")
    return v


def choice(v, name: str, options) -> str:
    """One of the strings ``options``: TypeError naming ``name`` for a non-string,
    ValueError listing the options for any other string."""
    listed = ", ".join(map(repr, options))
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected one of {listed}, got {type(v).__name__}")
    if v not in options:
        raise ValueError(f"{name}: expected one of {listed}, got {v!r}")
    return v


def boolean(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
    return v


def device(v, name: str = "device") -> torch.device:
    """``None`` → CPU; otherwise a cpu or cuda ``torch.device`` (or what ``torch.device``
    turns into one). CUDA only when it is usable, with an index below the device count."""
    if v is not None and not isinstance(v, (str, torch.device)) and not _is_integral(v):
        raise TypeError(f"{name}: expected a str, torch.device or None, got {type(v).__name__}")
    try:
        dev = torch.device("cpu") if v is None else torch.device(v)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: not a valid torch device: {v!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a cpu or cuda device, got {dev}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {dev} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev
