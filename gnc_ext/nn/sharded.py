"""Class-sharded spherical cross-entropy over ``torch.distributed`` (model parallel
classifier, as Partial FC does for face recognition at millions of identities).

Each rank of a process group owns a contiguous shard of the K class weights (shard
sizes differ by at most one when K is not divisible by the world size). In a step:

1. every rank L2-normalises its own features, and the features and labels of the
   whole group are gathered (all ranks see the global batch);
2. each rank folds its shard into per-row state with the native similarity-reduce
   epilogue (running max, sum of exp over the non-target classes, target cosine, sum of
   logits — the same kernels
   as :func:`gnc_ext.spherical_cross_entropy`, so margins apply at the target class
   on the rank that owns it);
3. the state is combined with all-reduce (max, then sums), which gives every rank the
   exact global log-sum-exp and target logit, hence the exact global loss;
4. backward recomputes the shard's tiles and turns them into dL/ds with the global
   log-sum-exp: each rank gets the exact gradient of its own weight shard, and the
   partial feature gradients are summed over the group (all-reduce) so each rank
   receives the exact gradient of its own features.

The loss value (``reduction="mean"`` or ``"sum"``) is the loss of the *global* batch and
is identical on every rank; call ``backward()`` on it on every rank. Note for DDP users:
DDP averages backbone gradients over ranks, so the backbone then receives
1/world_size of the exact gradient of the global loss; multiply the loss (or the
learning rate) by the world size if you want the exact one.

Class sampling (``sample_rate < 1``, Partial FC's idea) is an *approximation*: each
rank keeps the positive classes of the global batch that it owns plus uniformly
random negatives up to ``ceil(sample_rate · shard size)``, and the softmax runs over
the sampled classes only. Only the sampled weight rows receive gradient.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import _validate
from ..losses import _check_label_smoothing, _check_margin, _choice
from ..ops.sce import finish_state, fold_state, grad_tiles  # the recompute strategy's documented steps
from ..ops.tiles import check_finite_rows, col_chunk
from ..ops.normalize import normalize_rows
from .losses import _check_device, _check_dtype

_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}


def _dist_on(group) -> bool:
    return dist.is_available() and dist.is_initialized()


def shard_range(num_classes: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``(offset, size)`` of rank ``rank``'s contiguous shard of ``num_classes`` classes."""
    base, rem = divmod(num_classes, world_size)
    size = base + (1 if rank < rem else 0)
    offset = rank * base + min(rank, rem)
    return offset, size


def _all_gather_rows(x: Tensor, counts: List[int], group) -> Tensor:
    """Gather rows of every rank (row counts may differ) into one tensor, rank order."""
    m = max(counts)
    pad = x.new_zeros((m,) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x
    bufs = [torch.empty_like(pad) for _ in counts]
    dist.all_gather(bufs, pad.contiguous(), group=group)
    return torch.cat([b[:c] for b, c in zip(bufs, counts)], 0)


class _ShardedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Hn_local: Tensor, W: Tensor, y_all: Tensor, y_loc: Tensor, counts: List[int], rank: int,
                group, tau: float, ignore_index: int, label_smoothing: float, margin: float, margin_type: int,
                num_classes: int, reduction: int, chunk: int):
        distributed = len(counts) > 1
        Hn_all = _all_gather_rows(Hn_local.detach(), counts, group) if distributed else Hn_local.detach()
        # W: this rank's raw class weights, normalised block by block inside (no Ŵ copy)
        state = fold_state(Hn_all, W.detach(), y_loc, tau, ignore_index, margin, margin_type, chunk, norm_w=True)
        M = state[:, 0].clone()
        if distributed:
            dist.all_reduce(M, op=dist.ReduceOp.MAX, group=group)
        finite = torch.isfinite(state[:, 0]) & torch.isfinite(M)
        S = torch.where(finite, state[:, 1] * torch.exp(torch.where(finite, state[:, 0] - M, torch.zeros_like(M))),
                        torch.zeros_like(M))
        rest = state[:, 2:].clone()
        if distributed:
            dist.all_reduce(S, group=group)
            dist.all_reduce(rest, group=group)
        gstate = torch.stack([torch.where(torch.isfinite(M), M, torch.zeros_like(M)), S, rest[:, 0], rest[:, 1]], 1)
        valid = y_all != ignore_index
        gstate[:, 1] = torch.where(valid, gstate[:, 1], torch.ones_like(S))  # ignored rows: log(1) = 0
        loss_rows, stats = finish_state(gstate, y_all, num_classes, tau, ignore_index, label_smoothing, margin,
                                        margin_type)
        start = sum(counts[:rank])
        n_valid = int(valid.sum())
        ctx.save_for_backward(Hn_all, W.detach(), y_loc, stats)
        ctx.cfg = (counts, rank, group, tau, ignore_index, label_smoothing, margin, margin_type, num_classes,
                   reduction, chunk, n_valid, start, distributed)
        out_dtype = Hn_local.dtype if Hn_local.dtype == torch.float64 else torch.float32
        if reduction == 0:
            return (loss_rows.sum() / max(n_valid, 1)).to(out_dtype)
        if reduction == 1:
            return loss_rows.sum().to(out_dtype)
        return loss_rows[start : start + counts[rank]].to(out_dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        Hn_all, W, y_loc, stats = ctx.saved_tensors
        (counts, rank, group, tau, ignore_index, ls, margin, mt, K, reduction, chunk, n_valid, start,
         distributed) = ctx.cfg
        need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        B = Hn_all.shape[0]
        if reduction == 2:
            g_loc = g.to(torch.float64).contiguous()
            scale = _all_gather_rows(g_loc, counts, group) if distributed else g_loc
        else:
            gs = g.detach().to(torch.float64).reshape(1).clone()
            if distributed:  # every rank back-propagates the same global loss; average to be safe
                dist.all_reduce(gs, group=group)
                gs /= len(counts)
            if reduction == 0:
                gs = gs / max(n_valid, 1)
            scale = gs.expand(B).contiguous()
        dH_all, dW = grad_tiles(Hn_all, W, y_loc, stats, scale, tau, ignore_index, ls, margin, mt, chunk,
                                need_h, need_w, num_classes=K, norm_w=True)
        dH = None
        if need_h:
            if distributed:
                dH_all = dH_all.contiguous()
                dist.all_reduce(dH_all, group=group)
            dH = dH_all[start : start + counts[rank]]
        return dH, (dW if need_w else None), *([None] * 13)


class ShardedSphericalCELoss(nn.Module):
    """Spherical cross-entropy whose (K, d) classifier is sharded by class over a
    ``torch.distributed`` group (see the module docstring for the algorithm).

    Args:
        num_classes: total K over the group (K ≥ 2 and K ≥ world size).
        dim: feature dimension d.
        group: process group (default: the world group; without an initialised
            process group the module runs unsharded on one process).
        tau, margin, margin_type, label_smoothing, ignore_index: as in
            :func:`gnc_ext.spherical_cross_entropy`.
        reduction: ``"mean"`` (over non-ignored rows of the global batch), ``"sum"``,
            or ``"none"`` (the losses of this rank's own rows).
        sample_rate: fraction of each shard used per step (1.0: exact; < 1 samples
            negatives, an approximation; label smoothing is then not allowed).
        seed: an integer in [-2**63, 2**64) that seeds the initial weights; the shard of
            rank r is drawn from ``seed + r`` (mod 2**64; use :meth:`load_full_weight` to
            start from a given W).
        device (cpu or an available cuda; None: torch's default), dtype
            (float32/float64/float16/bfloat16): of the weight shard.

    Every argument is checked at construction (TypeError/ValueError naming it), under
    the rules of :func:`gnc_ext.spherical_cross_entropy`.

    Attributes: ``weight`` (K_r, d) Parameter of this rank's shard; ``offset``, ``rank``,
    ``world_size``. :meth:`full_weight` gathers the whole (K, d) classifier.
    """

    def __init__(self, num_classes: int, dim: int, *, group=None, tau: float = 0.05, margin: float = 0.0,
                 margin_type: str = "cosface", label_smoothing: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean", sample_rate: float = 1.0, seed: int = 0, device=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        K = _validate.integer(num_classes, "num_classes", minimum=2)
        d = _validate.integer(dim, "dim", minimum=1)
        self.tau = _validate.temperature(tau, "tau")
        self.margin, self._margin_code = _check_margin(margin, margin_type)
        ls = _check_label_smoothing(label_smoothing)
        reduction = _choice(reduction, "reduction", tuple(_REDUCTIONS))
        ignore_index = _validate.integer(ignore_index, "ignore_index")
        sr = _validate.real(sample_rate, "sample_rate")
        if not 0.0 < sr <= 1.0:
            raise ValueError(f"sample_rate: expected a value in (0, 1], got {sr}")
        if sr < 1.0 and ls > 0:
            raise ValueError("label_smoothing: not supported together with sample_rate < 1")
        seed = _validate.integer(seed, "seed", maximum=2**64 - 1)  # what manual_seed takes
        dtype = _check_dtype(dtype, allow_none=False)
        device = _check_device(device)
        self.group = group
        self.world_size = dist.get_world_size(group) if _dist_on(group) else 1
        self.rank = dist.get_rank(group) if _dist_on(group) else 0
        if K < self.world_size:
            raise ValueError(f"num_classes: expected at least world_size={self.world_size} classes, got {K}")
        self.num_classes, self.dim = K, d
        self.margin_type, self.label_smoothing = margin_type, ls
        self.ignore_index, self.reduction, self.sample_rate = ignore_index, reduction, sr
        self.offset, size = shard_range(K, self.world_size, self.rank)
        # seeds taken modulo 2**64, as manual_seed takes negative ones (so nothing changes there)
        g = torch.Generator().manual_seed((seed + self.rank) % 2**64)
        w = torch.randn(size, d, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True)
        self.weight = nn.Parameter(w.to(device=device, dtype=dtype))
        self._sample_gen = torch.Generator().manual_seed((seed * 7919 + 17 + self.rank) % 2**64)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, shard=[{self.offset}, "
                f"{self.offset + self.weight.shape[0]}), world_size={self.world_size}, tau={self.tau}, "
                f"margin={self.margin} ({self.margin_type}), sample_rate={self.sample_rate}")

    @torch.no_grad()
    def load_full_weight(self, W: Tensor) -> None:
        """Copy this rank's rows of a full (K, d) classifier into the shard."""
        _validate.tensor(W, "W", ndim=2)
        if tuple(W.shape) != (self.num_classes, self.dim):
            raise ValueError(f"W: expected shape ({self.num_classes}, {self.dim}), got {tuple(W.shape)}")
        self.weight.copy_(W[self.offset : self.offset + self.weight.shape[0]])

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole (K, d) classifier, gathered from every rank (collective call)."""
        if self.world_size == 1:
            return self.weight.detach().clone()
        counts = [shard_range(self.num_classes, self.world_size, r)[1] for r in range(self.world_size)]
        return _all_gather_rows(self.weight.detach(), counts, self.group)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        _validate.tensor(features, "features", ndim=2)
        if features.shape[1] != self.dim:
            raise ValueError(f"features: expected width {self.dim}, got {features.shape[1]}")
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64,), allow_empty=False)
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels: expected {features.shape[0]} labels, got {labels.shape[0]}")
        _validate.same_device(("weight", self.weight), ("features", features), ("labels", labels))
        _validate.finite(features, "features")
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"labels: expected values in [0, {self.num_classes}) or ignore_index="
                             f"{self.ignore_index}, got {int(labels[bad][0])}")
        check_finite_rows(self.weight, "weight")
        Hn = normalize_rows(features)
        W = self.weight  # normalised block by block inside the op
        if features.dtype != self.weight.dtype:
            Hn = Hn.to(self.weight.dtype)
        distributed = self.world_size > 1
        if distributed:
            cnt = torch.tensor([features.shape[0]], device=features.device, dtype=torch.int64)
            all_cnt = [torch.zeros_like(cnt) for _ in range(self.world_size)]
            dist.all_gather(all_cnt, cnt, group=self.group)
            counts = [int(c) for c in all_cnt]
            y_all = _all_gather_rows(labels, counts, self.group)
        else:
            counts, y_all = [features.shape[0]], labels
        K_r = self.weight.shape[0]
        in_shard = (y_all >= self.offset) & (y_all < self.offset + K_r)
        # labels outside this shard select no target column here (-1 is never a column)
        outside = -1 if self.ignore_index != -1 else K_r
        y_loc = torch.where(in_shard, y_all - self.offset, torch.full_like(y_all, outside))
        y_loc = torch.where(y_all == self.ignore_index, torch.full_like(y_all, self.ignore_index), y_loc)
        K_eff = self.num_classes
        if self.sample_rate < 1.0:
            W, y_loc, K_eff = self._sample(W, y_loc, in_shard, outside, counts)
        return _ShardedCE.apply(Hn, W, y_all, y_loc.contiguous(), counts, self.rank, self.group, self.tau,
                                self.ignore_index, self.label_smoothing, self.margin, self._margin_code, K_eff,
                                _REDUCTIONS[self.reduction],
                                col_chunk(y_all.shape[0], W.shape[0], W.is_cuda, W.shape[1]))

    def _sample(self, Wn: Tensor, y_loc: Tensor, in_shard: Tensor, outside: int, counts: List[int]):
        K_r = Wn.shape[0]
        keep = max(1, math.ceil(self.sample_rate * K_r))
        pos = torch.unique(y_loc[in_shard])
        mask = torch.zeros(K_r, dtype=torch.bool, device=Wn.device)
        mask[pos] = True
        n_neg = max(0, keep - int(pos.numel()))
        if n_neg > 0:
            neg_pool = torch.nonzero(~mask).squeeze(1)
            perm = torch.randperm(neg_pool.numel(), generator=self._sample_gen)[:n_neg].to(Wn.device)
            mask[neg_pool[perm]] = True
        idx = torch.nonzero(mask).squeeze(1)
        remap = torch.full((K_r,), -1, dtype=torch.int64, device=Wn.device)
        remap[idx] = torch.arange(idx.numel(), device=Wn.device)
        y_new = torch.where(in_shard, remap[y_loc.clamp(0, K_r - 1)], y_loc)
        # the sampled class count over the whole group (for documentation/eps of smoothing)
        total = torch.tensor([idx.numel()], device=Wn.device)
        if self.world_size > 1:
            dist.all_reduce(total, group=self.group)
        return Wn[idx], y_new, int(total)
