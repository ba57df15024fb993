"""Helpers for running the package's long computations over a ``torch.distributed`` group.

Used by :func:`gnc_ext.one_vs_rest_distance` (``group=``), :func:`gnc_ext.metrics.nc_metrics`
(``group=``) and the ``gnc`` command under ``torchrun``. Every function is collective:
all ranks of ``group`` must call it, in the same order.

* :func:`check_group` — ``(rank, world_size)`` of an initialised group, or a clear error.
* :func:`digest` — a 63-bit digest (BLAKE2b) of a tensor's bytes, shape and dtype, or of
  any ``repr``-able value; the same on every machine for the same numbers.
* :func:`agree` — the ranks compare digests of named fields (one all-gather of an int64
  tensor); if any differ, every rank raises the same ``ValueError`` naming the fields
  and the ranks, so a mismatch never turns into a hang further on.
* :func:`sum_ints` — integer counters summed over the ranks.
* :func:`all_gather_objects` — ``torch.distributed.all_gather_object`` with a clear
  error when a peer has died or the group's timeout ran out.

The tensors of a collective live on ``comm_device(group)``: the current CUDA device for
NCCL, the CPU otherwise (gloo).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Tuple

import torch

__all__ = ["check_group", "digest", "agree", "sum_ints", "all_gather_objects", "comm_device", "CollectiveError"]


class CollectiveError(RuntimeError):
    """A collective failed: a peer rank died, raised, or the group's timeout ran out."""


def _dist():
    import torch.distributed as dist

    return dist


def check_group(group, name: str = "group") -> Tuple[int, int]:
    """``(rank, world_size)`` of ``group`` (a ``torch.distributed.ProcessGroup``, or
    ``torch.distributed.group.WORLD``). Raises ``RuntimeError`` when torch.distributed is not
    available or not initialised, ``TypeError`` for anything that is not a process group and
    ``ValueError`` when this process is not a member."""
    if not torch.distributed.is_available():
        raise RuntimeError(f"{name}: torch.distributed is not available in this build of torch")
    dist = _dist()
    if not dist.is_initialized():
        raise RuntimeError(f"{name}: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group(...) first (or run under torchrun)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"{name}: expected a torch.distributed.ProcessGroup (e.g. torch.distributed.group.WORLD) "
                        f"or None, got {type(group).__name__}")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"{name}: this process (global rank {dist.get_rank()}) is not a member of the group")
    return rank, dist.get_world_size(group)


def comm_device(group) -> torch.device:
    """Where the tensors of a collective on ``group`` must live: the current CUDA device for
    NCCL, else the CPU."""
    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def digest(x: Any) -> int:
    """A 63-bit BLAKE2b digest: of a tensor's dtype, shape and bytes (a copy to the CPU for a
    CUDA tensor), else of ``repr(x)``. Equal numbers give equal digests on
    every machine (little-endian byte order assumed, as on every platform torch supports)."""
    h = hashlib.blake2b(digest_size=8)
    if isinstance(x, torch.Tensor):
        t = x.detach()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        t = t.contiguous().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        h.update(memoryview(t.reshape(-1).numpy()).cast("B"))
    else:
        h.update(repr(x).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def _collective_error(what: str, rank: int, e: BaseException) -> CollectiveError:
    return CollectiveError(f"{what}: collective failed on rank {rank} (a peer rank died, raised, or the group's "
                           f"timeout ran out): {type(e).__name__}: {e}")


def agree(fields: Dict[str, Any], group, what: str) -> None:
    """Check that every rank of ``group`` holds the same values for ``fields`` (name → value;
    tensors are compared by :func:`digest`). One all-gather of an int64 tensor of digests.
    On a mismatch every rank raises ``ValueError("<what>: ... differ between ranks: W (rank 0
    vs rank 1), tol (...)")``."""
    dist = _dist()
    rank, world = check_group(group)
    names = list(fields)
    mine = torch.tensor([digest(fields[n]) for n in names], dtype=torch.int64, device=comm_device(group))
    out = [torch.empty_like(mine) for _ in range(world)]
    try:
        dist.all_gather(out, mine, group=group)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise _collective_error(what, rank, e) from e
    table = torch.stack([o.cpu() for o in out])  # (world, fields)
    bad = []
    for j, n in enumerate(names):
        col = table[:, j]
        if bool((col != col[0]).any()):
            other = int((col != col[0]).nonzero()[0])
            bad.append(f"{n} (rank 0 vs rank {other})")
    if bad:
        raise ValueError(f"{what}: the ranks of the group do not hold the same inputs; these differ between ranks: "
                         + ", ".join(bad))


def sum_ints(values, group, what: str) -> List[int]:
    """Element-wise sum of a list of Python ints over the ranks of ``group`` (int64)."""
    dist = _dist()
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=comm_device(group))
    try:
        dist.all_reduce(t, group=group)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise _collective_error(what, dist.get_rank(group), e) from e
    return [int(v) for v in t.tolist()]


def all_gather_objects(obj: Any, group, what: str, rank: Optional[int] = None) -> List[Any]:
    """``torch.distributed.all_gather_object`` over ``group`` (a list indexed by rank); a failed
    collective raises :class:`CollectiveError` naming ``what``. For NCCL the current CUDA device
    must be this rank's (``torch.cuda.set_device``), as torch requires."""
    dist = _dist()
    if rank is None:
        rank, world = check_group(group)
    else:
        world = dist.get_world_size(group)
    out: List[Any] = [None] * world
    try:
        dist.all_gather_object(out, obj, group=group)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise _collective_error(what, rank, e) from e
    return out
