"""Up-front memory checks: refuse a size that cannot fit before allocating it.

Entry points that allocate in proportion to K, K·d, B·K or d² (one-vs-rest distances, the
losses and loss modules, the solvers, the metrics accumulator, the NC suite) call
:func:`ensure_fits` with a *lower bound* of the bytes they are about to allocate (their
largest arrays, not every temporary). When that bound exceeds what the device can give,
they raise :class:`InsufficientMemoryError` (a ``MemoryError``) stating what is needed and
what is available, instead of failing inside torch's allocator or being killed by the
kernel's OOM killer. Because the estimate is a lower bound, a size that fits is never
refused; a size close to the limit may still fail later in the allocator.

Available memory:

* CPU: the smallest of ``MemAvailable`` (``/proc/meminfo``), the cgroup v2 limit left
  (``/sys/fs/cgroup/memory.max`` − ``memory.current``) and the address space left under
  ``RLIMIT_AS`` (soft limit − this process's ``VmSize``). Where none can be read
  (not Linux), nothing is refused.
* CUDA: ``torch.cuda.mem_get_info`` (free on the device) plus what torch's caching
  allocator holds but does not use.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

__all__ = ["InsufficientMemoryError", "available_bytes", "ensure_fits", "format_bytes", "itemsize"]


# Requests up to this size are not checked (the check costs a few file reads, ~50 µs,
# which would show in small loss calls; such sizes fail only when everything would).
SMALL_BYTES = 64 * 2**20


class InsufficientMemoryError(MemoryError):
    """A computation needs more memory than its device has available.

    Attributes: ``what`` (the call), ``needed`` and ``available`` (bytes), ``device``."""

    def __init__(self, what: str, needed: int, available: int, device: torch.device):
        self.what, self.needed, self.available, self.device = what, int(needed), int(available), device
        super().__init__(f"{what} needs at least {format_bytes(needed)} on {device}, but only "
                         f"{format_bytes(available)} is available; use smaller sizes, another device, or "
                         "split the work (e.g. group= over several processes)")


def itemsize(dtype: Optional[torch.dtype]) -> int:
    """Bytes per element of ``dtype`` (None: torch's default dtype)."""
    return (torch.get_default_dtype() if dtype is None else dtype).itemsize


def format_bytes(n: Union[int, float]) -> str:
    """``1536`` → ``"1.5 KiB"``; large values in TiB/PiB/EiB."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_left() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            cur = int(f.read().strip())
        return max(0, int(limit) - cur)
    except (OSError, ValueError):
        return None


def _address_space_left() -> Optional[int]:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_bytes(device: Union[str, torch.device, None] = None) -> Optional[int]:
    """Bytes that can still be allocated on ``device`` (default CPU), or None where unknown."""
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(idx)
        cached = torch.cuda.memory_reserved(idx) - torch.cuda.memory_allocated(idx)
        return int(free + max(0, cached))
    if dev.type != "cpu":
        return None
    vals = [v for v in (_meminfo_available(), _cgroup_left(), _address_space_left()) if v is not None]
    return min(vals) if vals else None


def ensure_fits(nbytes: Union[int, float], *, what: str, device: Union[str, torch.device, None] = None) -> None:
    """Raise :class:`InsufficientMemoryError` when ``nbytes`` (a lower bound of what ``what``
    is about to allocate on ``device``; None: torch's default device) exceeds
    :func:`available_bytes`. Cheap (a few file
    reads on the CPU, one driver call on CUDA); does nothing for requests up to
    :data:`SMALL_BYTES` (64 MiB), where the available memory is unknown, and inside code
    that torch.compile traces."""
    need = float(nbytes)
    if need <= SMALL_BYTES:
        return
    if torch.compiler.is_compiling():  # traced by torch.compile: checked when run eagerly, not in graphs
        return
    dev = torch.get_default_device() if device is None else torch.device(device)
    if dev.type == "meta":
        return
    avail = available_bytes(dev)
    if avail is not None and need > avail:
        raise InsufficientMemoryError(what, int(min(need, 2**63 - 1)), avail, dev)
