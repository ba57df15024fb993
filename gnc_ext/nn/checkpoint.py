"""Checkpoints of the face-recognition loss that reshard across world sizes, through
``torch.distributed.checkpoint`` (DCP).

:func:`save_loss_checkpoint` writes the classifier of a :class:`ShardedSphericalCELoss`
(or of a single-process :class:`SphericalCELoss` that owns its weight) as one global
(K·k, d) tensor, each rank writing its own rows, together with the optimizer state of
that weight (tensors of the weight's shape, e.g. SGD's momentum buffer or Adam's moments,
are sharded the same way; other entries such as Adam's ``step`` are stored once), the
loss options and, per rank, the class-sampling generator's state.
:func:`load_loss_checkpoint` reads it into a loss of the same K, embedding_dim and
sub-centre count at any world size: each rank reads the rows of its own shard (a
single-process ``SphericalCELoss`` reads all of them), so a classifier trained on 8
ranks can be fine-tuned on 4 or evaluated on 1. A checkpoint of another K,
embedding_dim or sub-centre count is refused with a ValueError naming what differs.

Both are collectives: every rank of the loss's group calls them, with the same
``checkpoint_id`` (a directory on a file system all ranks see). The global tensor is a
``ShardedTensor`` (DCP's representation of row blocks of arbitrary sizes; the loss's
shards differ by at most one class, a layout DTensor's even split does not give).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor

from ..losses import SCEOptions
from .losses import SphericalCELoss
from .sharded import ShardedSphericalCELoss

KEY = "gnc_loss"  # the top-level key of the loss's entries in the checkpoint


@contextlib.contextmanager
def _quiet():
    # DCP and ShardedTensor announce ShardedTensor's deprecation in favour of DTensor,
    # whose even split cannot describe these shards (see the module docstring)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process.*")
        yield


def _layout(loss):
    """(row offset of the local weight in the global (K·k, d) tensor, local weight, group, world)."""
    if isinstance(loss, ShardedSphericalCELoss):
        return loss.offset * loss.num_subcenters, loss.weight, loss.group, loss.world_size
    if isinstance(loss, SphericalCELoss):
        if loss.weight is None:
            raise TypeError("loss: a SphericalCELoss with a classifier= provider holds no weight to checkpoint")
        return 0, loss.weight, None, 1
    raise TypeError(f"loss: expected a ShardedSphericalCELoss or a SphericalCELoss, got {type(loss).__name__}")


def _global(local: Tensor, offset: int, rows: int, group, world: int):
    """The local rows as a view of the global (rows, d) tensor (itself when world == 1)."""
    if world == 1:
        return local
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards
    md = ShardMetadata(shard_offsets=[offset, 0], shard_sizes=list(local.shape),
                       placement=f"rank:{dist.get_rank(group)}/{local.device}")
    return init_from_local_shards([Shard(local, md)], [rows, local.shape[1]], process_group=group)


def _config(loss, optimizer) -> dict:
    """What the checkpoint says about itself (stored as one JSON string): the classifier's
    sizes, the options, the world size, and the optimizer state's entries ("shard" for
    tensors of the weight's shape; scalars stored here by value)."""
    _, w, _, world = _layout(loss)
    opt_keys = {}
    if optimizer is not None:
        for name, v in optimizer.state.get(w, {}).items():
            if isinstance(v, Tensor) and v.shape == w.shape:
                opt_keys[name] = "shard"
            elif isinstance(v, Tensor) and v.numel() == 1:
                opt_keys[name] = {"scalar": v.item(), "dtype": str(v.dtype).replace("torch.", ""),
                                  "shape": list(v.shape)}
            elif isinstance(v, (int, float, bool)):
                opt_keys[name] = {"number": v}
            else:
                raise TypeError(f"optimizer: cannot checkpoint its state entry {name!r} "
                                f"({type(v).__name__} of shape {tuple(getattr(v, 'shape', ()))})")
    return {"num_classes": loss.num_classes, "embedding_dim": loss.embedding_dim,
            "num_subcenters": loss.num_subcenters, "options": dataclasses.asdict(loss.options),
            "world_size": world, "optimizer_state": opt_keys,
            "sample_generators": isinstance(loss, ShardedSphericalCELoss)}


def _check_optimizer(optimizer, w):
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if not any(p is w for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("optimizer: does not hold the loss's weight")


def save_loss_checkpoint(checkpoint_id, loss, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Save ``loss``'s classifier (and ``optimizer``'s state of it) to the DCP checkpoint
    ``checkpoint_id`` (collective; see the module docstring)."""
    offset, w, group, world = _layout(loss)
    _check_optimizer(optimizer, w)
    rows = loss.num_classes * loss.num_subcenters
    cfg = _config(loss, optimizer)
    sd = {"config": json.dumps(cfg), "weight": _global(w.detach(), offset, rows, group, world)}
    st = optimizer.state.get(w, {}) if optimizer is not None else {}
    shards = [name for name, kind in cfg["optimizer_state"].items() if kind == "shard"]
    if shards:
        sd["optimizer"] = {name: _global(st[name].detach(), offset, rows, group, world) for name in shards}
    if isinstance(loss, ShardedSphericalCELoss):
        gen = loss.sample_generator
        sd[f"sample_generator_rank{getattr(loss, 'rank', 0)}"] = gen.get_state()
    with _quiet():
        dcp.save({KEY: sd}, checkpoint_id=checkpoint_id, process_group=group)


def load_loss_checkpoint(checkpoint_id, loss, optimizer: Optional[torch.optim.Optimizer] = None) -> SCEOptions:
    """Load a checkpoint written by :func:`save_loss_checkpoint` into ``loss`` (its rows of
    the saved classifier, in place) and ``optimizer`` (the state of the loss's weight),
    at any world size (collective). The loss keeps its own options; the saved ones are
    returned. The class-sampling generator is restored when the world size is the one
    of the save (the same ranks draw the same classes), else left as seeded.

    Raises ValueError naming what differs when the checkpoint holds another K
    (``num_classes``), ``embedding_dim`` or ``num_subcenters``, and when ``optimizer``
    is given but the checkpoint holds no optimizer state."""
    offset, w, group, world = _layout(loss)
    _check_optimizer(optimizer, w)
    mine = _config(loss, None)
    saved = {KEY: {"config": ""}}
    with _quiet():
        dcp.load(saved, checkpoint_id=checkpoint_id, process_group=group)
    cfg = json.loads(saved[KEY]["config"])
    diff = [f"{k}={cfg[k]} in the checkpoint, {mine[k]} here" for k in ("num_classes", "embedding_dim",
                                                                          "num_subcenters") if cfg[k] != mine[k]]
    if diff:
        raise ValueError(f"checkpoint_id: a checkpoint of another classifier ({'; '.join(diff)})")
    if optimizer is not None and not cfg["optimizer_state"]:
        raise ValueError("optimizer: the checkpoint holds no optimizer state for the loss's weight")
    rows = loss.num_classes * loss.num_subcenters
    local = torch.empty_like(w.detach(), memory_format=torch.contiguous_format)
    sd = {"weight": _global(local, offset, rows, group, world)}
    opt_local = {}
    if optimizer is not None:
        opt_local = {name: torch.empty_like(local) for name, kind in cfg["optimizer_state"].items() if kind == "shard"}
        if opt_local:
            sd["optimizer"] = {name: _global(t, offset, rows, group, world) for name, t in opt_local.items()}
    gen = loss.sample_generator if isinstance(loss, ShardedSphericalCELoss) else None
    gkey = f"sample_generator_rank{getattr(loss, 'rank', 0)}"
    if gen is not None and cfg["sample_generators"] and cfg["world_size"] == world:
        sd[gkey] = gen.get_state()
    with _quiet():
        dcp.load({KEY: sd}, checkpoint_id=checkpoint_id, process_group=group)
    with torch.no_grad():
        w.copy_(local)
    if optimizer is not None:
        state = {}
        for name, kind in cfg["optimizer_state"].items():
            if kind == "shard":
                state[name] = opt_local[name]
            elif "scalar" in kind:
                state[name] = torch.full(kind["shape"], kind["scalar"], dtype=getattr(torch, kind["dtype"]))
            else:
                state[name] = kind["number"]
        optimizer.state[w] = state
    if gkey in sd:
        gen.set_state(sd[gkey])
    return SCEOptions(**cfg["options"])
