"""Input validation at the door: every public function checks its arguments here and
raises ``TypeError``/``ValueError`` naming the argument and what was expected."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class _Config:
    """Global switches.

    ``check_finite``: scan inputs for NaN/Inf and raise (default True). On CUDA the
    scan costs a device synchronisation; training loops that already guard against
    non-finite values can switch it off.
    """

    check_finite: bool = True


config = _Config()


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
    if config.check_finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")


def positive_float(v, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def integer(v, name: str, *, minimum: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def boolean(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name}: expected a bool, got {type(v).__name__}")
    return v


def device(v, name: str = "device") -> torch.device:
    """``None`` → CPU; otherwise anything ``torch.device`` accepts."""
    try:
        return torch.device("cpu") if v is None else torch.device(v)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name}: not a valid torch device: {v!r}") from e
