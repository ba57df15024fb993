"""One validated settings object, ``gnc_ext.config``.

Every switch of the package is a key of :data:`config`, checked when it is set: an
unknown key raises :class:`ConfigError` (both a ``ValueError`` and an
``AttributeError``), a value of the wrong type ``TypeError`` and a value outside the
allowed set ``ValueError``, each naming the key. Nothing is read from the environment.

Keys (default first):

``check_finite`` (bool, True)
    Scan inputs for NaN/Inf and raise ValueError naming the argument. On CUDA the scan
    costs a device synchronisation; loops that guard against non-finite values
    themselves can switch it off.
``sce_strategy`` ("auto" | "recompute" | "grad_in_forward" | "stored")
    How :func:`gnc_ext.spherical_cross_entropy` computes its gradient (see
    ``gnc_ext.ops.sce``): "recompute" streams class tiles twice (forward, backward);
    "grad_in_forward" (CPU, mean/sum with gradients) turns each tile into its gradient
    during the forward; "stored" keeps the shifted exponentials E = exp((s − 1)/τ) of the
    B × K logits in 16 bits for the backward (within ``sce_stored_budget_bytes``); "auto"
    picks per call (:func:`gnc_ext.losses.sce_strategy` says which).
``sce_stored_budget_bytes`` (positive int, 2**30)
    Largest store (B × K elements of the storage dtype, in bytes) "auto" lets the
    "stored" strategy hold; above it "auto" takes another strategy.
``sce_stored_dtype`` ("auto" | "bfloat16")
    The dtype of the stored exponentials: "auto" keeps the input precision (bfloat16,
    float32, float64); "bfloat16" stores them in bfloat16 for float32 inputs as well (half
    the memory; gradient entries then carry ~2^-9 relative rounding).
``lowp_grad_gemm`` ("auto" | "on" | "off")
    16-bit inputs: run the recompute backward's two products on the tensor cores with the
    gradient tile rounded to the input dtype. "auto": on for CUDA 16-bit inputs; "on"
    forces it (also on the CPU); "off" multiplies in fp32.
``cuda_fp32_mode`` ("ieee" | "tf32")
    float32 GEMMs of the CUDA loss path: "ieee" plain fp32 (torch's default, which follows
    ``torch.backends.cuda.matmul.allow_tf32``), "tf32" TF32 tensor cores (~1e-3 relative
    error in the cosines).
``hardmax_screen`` ("auto" | "on" | "off")
    float32 HardMax / argmax (``predict``): screen class tiles with TF32 GEMMs and re-score
    the candidates exactly (the same answer as fp32 tiles). "auto": on CUDA with at least
    ``gnc_ext._engine.SCREEN_MIN_ROWS`` rows; "on" everywhere (tests emulate TF32 on the
    CPU); "off" never.
``ncc_screen`` ("auto" | "on" | "off")
    The same screening for the nearest-class-centre pass of ``gnc_ext.metrics``.

Tests change settings for a block with :meth:`Config.override`, which restores the
previous values on exit (also on an exception)::

    with gnc_ext.config.override(hardmax_screen="off"):
        ...
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Any, Dict, Iterator


class ConfigError(ValueError, AttributeError):
    """An unknown settings key (a ValueError, and an AttributeError for ``getattr``)."""


def _choice(*options: str):
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str):
            raise TypeError(f"gnc_ext.config.{key}: expected one of {options}, got {type(v).__name__}")
        if v not in options:
            raise ValueError(f"gnc_ext.config.{key}: expected one of {options}, got {v!r}")
        return v
    return check


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"gnc_ext.config.{key}: expected a bool, got {type(v).__name__}")
    return v


def _positive_int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"gnc_ext.config.{key}: expected a positive int, got {type(v).__name__}")
    if int(v) <= 0:
        raise ValueError(f"gnc_ext.config.{key}: expected a positive int, got {int(v)}")
    return int(v)


_KEYS = {
    "check_finite": (_bool, True),
    "sce_strategy": (_choice("auto", "recompute", "grad_in_forward", "stored"), "auto"),
    "sce_stored_budget_bytes": (_positive_int, 2**30),
    "sce_stored_dtype": (_choice("auto", "bfloat16"), "auto"),
    "lowp_grad_gemm": (_choice("auto", "on", "off"), "auto"),
    "cuda_fp32_mode": (_choice("ieee", "tf32"), "ieee"),
    "hardmax_screen": (_choice("auto", "on", "off"), "auto"),
    "ncc_screen": (_choice("auto", "on", "off"), "auto"),
}


class Config:
    """The package's settings (keys and meanings: module docstring). Attribute access
    reads a key (a plain attribute, which torch.compile traces); assignment validates it
    at once."""

    def __init__(self) -> None:
        for k, (_, default) in _KEYS.items():
            object.__setattr__(self, k, default)

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in _KEYS:
            raise ConfigError(f"gnc_ext.config: unknown key {key!r}; keys: {', '.join(_KEYS)}")
        object.__setattr__(self, key, _KEYS[key][0](key, value))

    def __delattr__(self, key: str) -> None:
        raise ConfigError(f"gnc_ext.config: keys cannot be deleted ({key!r}); use reset()")

    def __repr__(self) -> str:
        return "gnc_ext.config(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"

    def as_dict(self) -> Dict[str, Any]:
        """A copy of every key's current value."""
        return {k: getattr(self, k) for k in _KEYS}

    def reset(self) -> None:
        """Every key back to its default."""
        for k, (_, default) in _KEYS.items():
            object.__setattr__(self, k, default)

    @contextlib.contextmanager
    def override(self, **changes: Any) -> Iterator["Config"]:
        """Context manager: set ``changes`` (each validated before any is applied), restore
        the previous values on exit."""
        checked = {}
        for k, v in changes.items():
            if k not in _KEYS:
                raise ConfigError(f"gnc_ext.config: unknown key {k!r}; keys: {', '.join(_KEYS)}")
            checked[k] = _KEYS[k][0](k, v)
        saved = {k: getattr(self, k) for k in checked}
        for k, v in checked.items():
            object.__setattr__(self, k, v)
        try:
            yield self
        finally:
            for k, v in saved.items():
                object.__setattr__(self, k, v)


config = Config()
