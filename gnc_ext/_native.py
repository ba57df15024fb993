"""Loads the native core ``gnc_ext._C`` and hands torch tensors to it.

Hand-off convention
-------------------
The native core does not link libtorch. For every tensor argument Python builds a
``_C.TensorView(ptr, dtype, device, shape, strides)``: the raw data pointer, a dtype
code, the CUDA device index (``-1`` for host memory), and shape and strides counted
in elements. Outputs are allocated here with torch (so torch's caching allocator
owns all memory) and passed in the same way; the native function writes into them.
CUDA kernels are launched on the integer handle of
``torch.cuda.current_stream(device)``, which every call passes as ``stream``. The
tensors must stay alive for the duration of the call, which they do because the
Python caller holds them; the native call is synchronous with respect to Python
(it enqueues work on the stream and returns).
"""
from __future__ import annotations

import os
from typing import Any, Dict

import torch


def _source_checkout(package_dir: str):
    """The repository root when ``package_dir`` is the ``gnc_ext`` folder of a source
    checkout (``pyproject.toml`` and ``csrc/`` beside it), else None."""
    root = os.path.dirname(package_dir)
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None


def _installed_elsewhere(root: str):
    """Another ``gnc_ext`` package on ``sys.path`` (the one a source checkout shadows), or None."""
    import sys

    for entry in sys.path:
        where = os.path.realpath(entry or os.getcwd())
        if where != os.path.realpath(root) and os.path.isfile(os.path.join(where, "gnc_ext", "__init__.py")):
            return os.path.join(where, "gnc_ext")
    return None


def _import_error(exc: ImportError) -> ImportError:
    """The message for a missing or unloadable ``gnc_ext._C``: a source checkout imported
    in place of the installed package is named as such, with the two ways out."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = _source_checkout(here)
    if root is None:
        return ImportError(
            "gnc_ext's native core (gnc_ext._C) could not be imported. Install the package "
            "with `pip install .` from the source tree (this compiles the C++/CUDA core); "
            f"original error: {exc}")
    other = _installed_elsewhere(root)
    shadow = f"; it shadows the installed gnc_ext in {other}" if other else ""
    return ImportError(
        f"gnc_ext is being imported from the source checkout {root} (the current folder or "
        f"PYTHONPATH puts it first on sys.path), where the native core gnc_ext._C has not been "
        f"built{shadow}. Either run Python from another folder, or install this checkout in "
        f"editable mode with `pip install -e .` (run in {root}). Original error: {exc}")


try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as _exc:
    raise _import_error(_exc) from _exc

__all__ = ["view", "stream_of", "build_info", "native"]

native = _C

_DTYPES = {
    torch.float32: _C.DType.float32,
    torch.float64: _C.DType.float64,
    torch.float16: _C.DType.float16,
    torch.bfloat16: _C.DType.bfloat16,
    torch.int64: _C.DType.int64,
    torch.int32: _C.DType.int32,
    torch.uint8: _C.DType.uint8,
}


def view(t: torch.Tensor) -> "_C.TensorView":
    """Describe tensor ``t`` to the native core (pointer, dtype, device, shape, strides)."""
    try:
        code = _DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"gnc_ext: dtype {t.dtype} is not supported by the native core") from None
    if t.device.type == "cpu":
        dev = -1
    elif t.device.type == "cuda":
        dev = t.device.index if t.device.index is not None else torch.cuda.current_device()
    else:
        raise ValueError(f"gnc_ext: device {t.device} is not supported (cpu or cuda)")
    return _C.TensorView(t.data_ptr(), code, dev, list(t.shape), list(t.stride()))


def stream_of(t: torch.Tensor) -> int:
    """The integer handle of torch's current CUDA stream on ``t``'s device (0 on CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def build_info() -> Dict[str, Any]:
    """What was built and what is usable now.

    Keys: ``version``, ``compiler``, ``openmp``, ``omp_threads``, ``cuda_compiled``
    (CUDA kernels are in the binary), ``cuda_archs`` (the SM architectures they were
    compiled for), ``cuda_device_count`` (GPUs the statically linked CUDA runtime
    sees), ``gpu_usable`` (a GPU is visible to both gnc_ext and torch now),
    ``torch_version``, ``torch_cuda``.
    """
    from . import __version__

    info: Dict[str, Any] = {"version": __version__}
    info.update(dict(_C.build_info()))
    info["torch_version"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["gpu_usable"] = bool(
        info.get("cuda_compiled") and info.get("cuda_device_count", 0) > 0 and torch.cuda.is_available()
    )
    info["omp_num_threads_env"] = os.environ.get("OMP_NUM_THREADS")
    return info
