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

Class sampling (``sample_rate < 1``) is InsightFace's ``PartialFC_V2``: per step each
rank takes every class of the global batch that it owns (the positives) and tops them
up with uniformly random other classes of its shard to ``int(sample_rate · shard
size)`` classes (all positives if they are more), sorted by class index; the random
numbers come from the module's own seeded generator. The softmax then runs over the
union of the ranks' sampled classes: with the same index set the loss equals the
full softmax restricted to those classes (an approximation of the full loss), and
only the sampled weight rows receive gradient. The sampled local class indices of
the last step are in ``last_sample_index``.

Sub-centres (``num_subcenters`` = k) shard by class: a rank holding classes
[offset, offset + K_r) holds the K_r·k class-major rows of their sub-centres.

Ranks may bring different row counts in a step, zero included (a ragged last batch):
the gathers take variable sizes, and the loss and gradients are those of the rows
that exist. Every rank must still call the loss in every step (it is a collective);
create the process group with a ``timeout`` so that a rank that does not call it makes
the others fail with the group's timeout error rather than wait forever.

Mixed precision: the options, ``torch.autocast`` and 16-bit features against the
(float32) shard behave as in :func:`gnc_ext.spherical_cross_entropy`. Checkpoints that
load at another world size (or into a single-process :class:`SphericalCELoss`):
:mod:`gnc_ext.nn.checkpoint`.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import _validate
from .. import resources
from ..losses import SCEOptions, check_subcenter_rows
from ..ops.sce import finish_state, fold_state, grad_tiles  # the recompute strategy's documented steps
from ..ops.tiles import autocast_off, check_finite_rows, col_chunk, compute_dtype
from ..ops.normalize import normalize_rows
from .losses import OptionsAsAttributes, _check_device, _check_dtype

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
    @autocast_off
    def forward(ctx, Hn_local: Tensor, W: Tensor, y_all: Tensor, y_loc: Tensor, counts: List[int], rank: int,
                group, tau: float, ignore_index: int, label_smoothing: float, margin: float, margin_type: int,
                num_classes: int, reduction: int, chunk: int, threshold: float, subcenters: int):
        distributed = len(counts) > 1
        Hn_all = _all_gather_rows(Hn_local.detach(), counts, group) if distributed else Hn_local.detach()
        # W: this rank's raw class weights, normalised block by block inside (no Ŵ copy)
        state = fold_state(Hn_all, W.detach(), y_loc, tau, ignore_index, margin, margin_type, chunk, norm_w=True,
                           interclass_threshold=threshold, subcenters=subcenters)
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
                   reduction, chunk, n_valid, start, distributed, threshold, subcenters)
        out_dtype = Hn_local.dtype if Hn_local.dtype == torch.float64 else torch.float32
        if reduction == 0:
            return (loss_rows.sum() / max(n_valid, 1)).to(out_dtype)
        if reduction == 1:
            return loss_rows.sum().to(out_dtype)
        return loss_rows[start : start + counts[rank]].to(out_dtype)

    @staticmethod
    @autocast_off
    def backward(ctx, g: Tensor):
        Hn_all, W, y_loc, stats = ctx.saved_tensors
        (counts, rank, group, tau, ignore_index, ls, margin, mt, K, reduction, chunk, n_valid, start,
         distributed, threshold, subcenters) = ctx.cfg
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
                                need_h, need_w, num_classes=K, norm_w=True, interclass_threshold=threshold,
                                subcenters=subcenters)
        dH = None
        if need_h:
            if distributed:
                dH_all = dH_all.contiguous()
                dist.all_reduce(dH_all, group=group)
            dH = dH_all[start : start + counts[rank]]
        return dH, (dW if need_w else None), *([None] * 15)


class ShardedSphericalCELoss(OptionsAsAttributes, nn.Module):
    """Spherical cross-entropy whose (K, d) classifier is sharded by class over a
    ``torch.distributed`` group (see the module docstring for the algorithm).

    Args:
        num_classes: total K over the group (K ≥ 2 and K ≥ world size).
        embedding_dim: feature dimension d (the name :class:`SphericalCELoss` uses;
            ``dim=`` is still accepted with a DeprecationWarning).
        group: process group (default: the world group; without an initialised
            process group the module runs unsharded on one process).
        tau, margin, margin_type, label_smoothing, ignore_index: as in
            :func:`gnc_ext.spherical_cross_entropy`.
        reduction: ``"mean"`` (over non-ignored rows of the global batch), ``"sum"``,
            or ``"none"`` (the losses of this rank's own rows).
        sample_rate: in (0, 1]; fraction of each shard used per step (1.0: exact; < 1
            samples classes as PartialFC_V2, see the module docstring; label smoothing is
            then not allowed).
        margin_grad, interclass_filtering_threshold, num_subcenters: as in
            :func:`gnc_ext.spherical_cross_entropy` (the shard holds K_r·k rows).
        seed: an integer in [-2**63, 2**64) that seeds the initial weights and the class
            sampling; the shard of rank r is drawn from ``seed + r`` (mod 2**64), directly
            in the module's dtype on its device (i.i.d. N(0, 1) entries, as
            :class:`SphericalCELoss`; use :meth:`load_full_weight` to start from a given W).
        device (cpu or an available cuda; None: torch's default), dtype
            (float32/float64/float16/bfloat16): of the weight shard.

    Every argument is checked at construction (TypeError/ValueError naming it), under
    the rules of :func:`gnc_ext.spherical_cross_entropy`.

    InsightFace: ``PartialFC_V2(CombinedMarginLoss(s, 1.0, m, 0.0), embedding_size,
    num_classes, sample_rate)`` corresponds to ``ShardedSphericalCELoss(num_classes,
    embedding_size, tau=1/s, margin=m, margin_type="arcface",
    margin_grad="straight_through", ignore_index=-1, sample_rate=sample_rate)``
    (CosFace: ``margin_type="cosface"``; ``interclass_filtering_threshold`` as there).

    Attributes: ``weight`` (K_r·k, d) Parameter of this rank's shard; ``offset``, ``rank``,
    ``world_size``; ``options`` (the validated :class:`gnc_ext.losses.SCEOptions`, whose
    fields also read and write as attributes). :meth:`full_weight` gathers the whole
    (K·k, d) classifier and :meth:`load_full_weight` copies this rank's rows from one;
    ``full_weight`` is a collective (every rank of the group calls it).
    """

    def __init__(self, num_classes: int, embedding_dim: Optional[int] = None, *, group=None, tau: float = 0.05,
                 margin: float = 0.0, margin_type: str = "cosface", label_smoothing: float = 0.0,
                 ignore_index: int = -100, reduction: str = "mean", sample_rate: float = 1.0, seed: int = 0,
                 device=None, dtype: torch.dtype = torch.float32, margin_grad: str = "exact",
                 interclass_filtering_threshold: float = 0.0, num_subcenters: int = 1, dim: Optional[int] = None):
        super().__init__()
        K = _validate.integer(num_classes, "num_classes", minimum=2)
        if dim is not None:
            if embedding_dim is not None:
                raise TypeError("dim: deprecated alias of embedding_dim; pass only embedding_dim")
            warnings.warn("ShardedSphericalCELoss(dim=...) is deprecated: use embedding_dim=...",
                          DeprecationWarning, stacklevel=2)
            embedding_dim = dim
        if embedding_dim is None:
            raise TypeError("embedding_dim: missing (the feature dimension d)")
        d = _validate.integer(embedding_dim, "embedding_dim", minimum=1)
        opts = SCEOptions(tau, reduction, ignore_index, label_smoothing, margin, margin_type, True, margin_grad,
                          interclass_filtering_threshold, num_subcenters)
        sr = _validate.real(sample_rate, "sample_rate")
        if not 0.0 < sr <= 1.0:
            raise ValueError(f"sample_rate: expected a value in (0, 1], got {sr}")
        if sr < 1.0 and opts.label_smoothing > 0:
            raise ValueError("label_smoothing: not supported together with sample_rate < 1")
        seed = _validate.integer(seed, "seed", maximum=2**64 - 1)  # what manual_seed takes
        dtype = _check_dtype(dtype, allow_none=False)
        device = _check_device(device)
        self.group = group
        self.world_size = dist.get_world_size(group) if _dist_on(group) else 1
        self.rank = dist.get_rank(group) if _dist_on(group) else 0
        if K < self.world_size:
            raise ValueError(f"num_classes: expected at least world_size={self.world_size} classes, got {K}")
        self.num_classes, self.embedding_dim, self.sample_rate = K, d, sr
        self.num_subcenters = opts.num_subcenters
        self.options = opts  # the loss options, also readable as attributes (crit.tau, ...)
        self.offset, size = shard_range(K, self.world_size, self.rank)
        self.num_local = size
        dev = torch.empty(0, device=device).device  # None: torch's default device
        # seeds taken modulo 2**64, as manual_seed takes negative ones (so nothing changes there)
        g = torch.Generator(device=dev).manual_seed((seed + self.rank) % 2**64)
        # i.i.d. N(0, 1) rows drawn in place (the loss normalises W, so the scale is
        # irrelevant), as SphericalCELoss does: no staging copy, no extra pass
        resources.ensure_fits(size * self.num_subcenters * d * resources.itemsize(dtype), device=dev,
                              what=f"ShardedSphericalCELoss(num_classes={K}, embedding_dim={d}) shard of {size} classes")
        w = torch.randn(size * self.num_subcenters, d, generator=g, dtype=dtype, device=dev)
        self.weight = nn.Parameter(w)
        self._sample_gen = torch.Generator(device=dev).manual_seed((seed * 7919 + 17 + self.rank) % 2**64)
        self.last_sample_index: Optional[Tensor] = None

    @property
    def sample_generator(self) -> torch.Generator:
        """The seeded generator of the class sampling (its state is part of a checkpoint,
        :mod:`gnc_ext.nn.checkpoint`)."""
        return self._sample_gen

    @property
    def dim(self) -> int:
        """Deprecated alias of ``embedding_dim``."""
        return self.embedding_dim

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, shard=[{self.offset}, "
                f"{self.offset + self.num_local}), world_size={self.world_size}, tau={self.tau}, "
                f"margin={self.margin} ({self.margin_type}, margin_grad={self.margin_grad!r}), "
                f"sample_rate={self.sample_rate}, interclass_filtering_threshold="
                f"{self.interclass_filtering_threshold}, num_subcenters={self.num_subcenters}")

    @torch.no_grad()
    def load_full_weight(self, W: Tensor) -> None:
        """Copy this rank's rows of a full (K·k, d) classifier into the shard (local: each
        rank calls it with the same W, e.g. one from :meth:`full_weight`)."""
        _validate.tensor(W, "W", ndim=2)
        k = self.num_subcenters
        if W.shape[1] != self.embedding_dim:
            raise ValueError(f"W: expected {self.embedding_dim} columns, got shape {tuple(W.shape)}")
        if check_subcenter_rows(W, k) != self.num_classes:
            raise ValueError(f"W: expected {self.num_classes * k} rows, got {W.shape[0]}")
        self.weight.copy_(W[self.offset * k : (self.offset + self.num_local) * k])

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole (K·k, d) classifier, gathered from every rank: a collective, every rank
        of the group calls it (each gets the full tensor, K·k·d values of memory)."""
        if self.world_size == 1:
            return self.weight.detach().clone()
        counts = [shard_range(self.num_classes, self.world_size, r)[1] * self.num_subcenters
                  for r in range(self.world_size)]
        return _all_gather_rows(self.weight.detach(), counts, self.group)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """The loss of the group's batch (see the class docstring). Ranks may bring
        different row counts, zero included (the gathers take variable sizes); every rank
        of the group must call it in the same step. Labels int64 or int32."""
        _validate.tensor(features, "features", ndim=2, allow_empty=True)
        if features.shape[1] != self.embedding_dim:
            raise ValueError(f"features: expected width {self.embedding_dim}, got {features.shape[1]}")
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32), allow_empty=True)
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels: expected {features.shape[0]} labels, got {labels.shape[0]}")
        _validate.same_device(("weight", self.weight), ("features", features), ("labels", labels))
        dtype = compute_dtype(features, self.weight)  # autocast / mixed dtypes (gnc_ext.ops.tiles)
        labels = labels.to(torch.int64)
        if features.shape[0]:
            _validate.finite(features, "features")
        o = self.options
        bad = (labels != o.ignore_index) & ((labels < 0) | (labels >= self.num_classes))
        if bool(bad.any()):
            raise ValueError(f"labels: expected values in [0, {self.num_classes}) or ignore_index="
                             f"{o.ignore_index}, got {int(labels[bad][0])}")
        check_finite_rows(self.weight, "weight")
        Hn = features.to(dtype)  # autograd casts the gradient back to features' dtype
        Hn = normalize_rows(Hn) if Hn.shape[0] else Hn
        if self.world_size > 1:
            cnt = torch.tensor([features.shape[0]], device=features.device, dtype=torch.int64)
            all_cnt = [torch.zeros_like(cnt) for _ in range(self.world_size)]
            dist.all_gather(all_cnt, cnt, group=self.group)
            counts = [int(c) for c in all_cnt]
            y_all = _all_gather_rows(labels, counts, self.group)
        else:
            counts, y_all = [features.shape[0]], labels
        K_r = self.num_local
        in_shard = (y_all >= self.offset) & (y_all < self.offset + K_r)
        # labels outside this shard select no target column here (-1 is never a column)
        outside = -1 if o.ignore_index != -1 else K_r
        y_loc = torch.where(in_shard, y_all - self.offset, torch.full_like(y_all, outside))
        y_loc = torch.where(y_all == o.ignore_index, torch.full_like(y_all, o.ignore_index), y_loc)
        W = self.weight  # raw: normalised block by block inside the op
        if self.sample_rate < 1.0:
            idx = self.sample(y_loc[in_shard])
            y_loc = torch.where(in_shard, torch.searchsorted(idx, y_loc.clamp(0, K_r - 1)), y_loc)
            k = self.num_subcenters
            rows = idx if k == 1 else (idx[:, None] * k + torch.arange(k, device=idx.device)).reshape(-1)
            W = W[rows]  # autograd: the gradient reaches the sampled rows only
        W = W.to(dtype)  # autocast: the GEMM dtype; the gradient comes back in the weight's dtype
        if sum(counts) == 0:  # no rows anywhere in this step: loss 0, zero gradients
            zero = (Hn.sum() + W.sum()) * 0.0
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            return zero.to(acc) if o.reduction != "none" else Hn.new_zeros((0,), dtype=acc) + zero.to(acc)
        return _ShardedCE.apply(Hn, W, y_all, y_loc.contiguous(), counts, self.rank, self.group, o.tau,
                                o.ignore_index, o.label_smoothing, o.margin, o.margin_code,
                                self.num_classes, _REDUCTIONS[o.reduction],
                                col_chunk(y_all.shape[0], W.shape[0], W.is_cuda, W.shape[1]),
                                o.interclass_filtering_threshold, self.num_subcenters)

    @torch.no_grad()
    def sample(self, positives: Tensor) -> Tensor:
        """PartialFC_V2's class sampling on this rank: the sorted local class indices of the
        step, from the distinct ``positives`` (local indices of the global batch's classes
        in this shard) topped up with uniformly random other classes to
        ``int(sample_rate · num_local)`` (only the positives if they are more). Draws from
        the module's seeded generator; the result is also kept in ``last_sample_index``."""
        dev = self.weight.device
        pos = torch.unique(positives.to(dev), sorted=True)
        num_sample = int(self.sample_rate * self.num_local)
        if num_sample - pos.numel() >= 0:
            perm = torch.rand(self.num_local, generator=self._sample_gen, device=dev)
            perm[pos] = 2.0
            idx = torch.topk(perm, k=num_sample)[1].sort()[0]
        else:
            idx = pos
        self.last_sample_index = idx
        return idx
