"""Class-mean-feature (CMF) classifier (paper Sec. 5 and App. B).

The classifier is not trained: its rows are an exponential moving average of the
mini-batch class means of the (normalised) features, renormalised to the unit sphere,

    W_k ← normalize(β·W_k + (1 − β)·H̄_k)    for every class k present in the batch,

with β the momentum (0.9 in the paper). Classes absent from a batch keep their row.
Motivated by GNC3 (self-duality): at collapse the optimal classifier is the class means.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _validate
from .. import resources
from ..ops.normalize import normalize_rows
from .losses import _check_device, _check_dtype

# Above this |x| (float64) the norm of a feature row or a sum of rows could overflow:
# update() then scales rows (normalised) or each class's rows (raw means) down first.
_HUGE = 2.0 ** 256


class CMFClassifier(nn.Module):
    """EMA-of-class-means classifier weights (no trainable parameters).

    Args:
        num_classes: K ≥ 2.
        dim: feature dimension d ≥ 1.
        momentum: β in [0, 1); the weight kept from the previous step (paper: 0.9).
        normalize_features: L2-normalise features before taking class means (the
            spherical setting of the paper; default True).
        warm_start: see below (default True).
        seed: seed of the random unit-norm initial rows (classes never seen keep them);
            None or an integer in [-2**63, 2**64).
        device: cpu or an available cuda (None: torch's default); dtype: float32 or
            float64, of the buffers.

    Buffers (saved in ``state_dict``): ``weight`` (K, d) unit rows, ``seen`` (K,) bool —
    whether a class has been updated at least once, ``num_updates`` (scalar int64).

    Use ``weight`` as the classifier (e.g. ``SphericalCELoss(classifier=cmf)`` or
    ``spherical_cross_entropy(H, cmf.weight, y)``) and call ``update(features, labels)``
    once per training step (after the loss). The first update of a class sets its row
    to its batch mean (no EMA against the random initial row) when ``warm_start`` is
    True (default), which avoids a long transient from the random start.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9, *,
                 normalize_features: bool = True, warm_start: bool = True,
                 seed: Optional[int] = 0, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        K = _validate.integer(num_classes, "num_classes", minimum=2)
        d = _validate.integer(dim, "dim", minimum=1)
        m = _validate.positive_float(momentum, "momentum", allow_zero=True)
        if m >= 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {m}")
        dtype = _check_dtype(dtype, (torch.float32, torch.float64), allow_none=False)
        device = _check_device(device)
        seed = _validate.seed(seed, "seed")
        self.num_classes, self.dim, self.momentum = K, d, m
        self.normalize_features = _validate.boolean(normalize_features, "normalize_features")
        self.warm_start = _validate.boolean(warm_start, "warm_start")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        resources.ensure_fits(K * d * 8, what=f"CMFClassifier(num_classes={K}, dim={d})", device="cpu")
        w = torch.randn(K, d, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("weight", w.to(device=device, dtype=dtype))
        self.register_buffer("seen", torch.zeros(K, dtype=torch.bool, device=device))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64, device=device))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> Tensor:
        """Fold one mini-batch into the EMA; returns the (K,) bool mask of updated classes.

        Any finite features are accepted (float64 ones up to the float64 range: huge rows
        are scaled down before the norms and sums, which does not change the result).
        Raises TypeError/ValueError naming ``features``/``labels`` (NaN/Inf features when
        ``gnc_ext.config.check_finite``); the buffers are then unchanged.
        """
        _validate.tensor(features, "features", ndim=2)
        if features.shape[1] != self.dim:
            raise ValueError(f"features: expected width {self.dim}, got {features.shape[1]}")
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32))
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels: expected {features.shape[0]} labels (one per feature row), got {labels.shape[0]}")
        _validate.same_device(("weight", self.weight), ("features", features), ("labels", labels))
        h = features.detach().to(torch.float64)
        lo, hi = torch.stack(torch.aminmax(h)).tolist()  # NaN propagates: the finiteness check too
        if _validate.config.check_finite and not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("features: contains NaN or Inf values")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels: expected values in [0, {self.num_classes}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        labels = labels.long()
        huge = max(-lo, hi) > _HUGE
        scale = None  # (K, 1): class k's rows (hence its mean) are divided by scale[k]
        if self.normalize_features:
            if huge:  # rows with max-abs > 1 brought to max-abs 1: same direction, norm ≥ 1 > eps
                h = h / h.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
            h = normalize_rows(h)
        elif huge:  # scale[k] = max(1, max-abs of class k's rows): sums and norms stay in range
            rmax = h.abs().amax(dim=1)
            scale = torch.ones(self.num_classes, dtype=torch.float64, device=h.device)
            scale = scale.scatter_reduce_(0, labels, rmax, "amax").unsqueeze(1)
            h = h / scale[labels]
        sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=h.device)
        sums.index_add_(0, labels, h)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1).to(torch.float64)
        old = self.weight[present].to(torch.float64)
        s = None if scale is None else scale[present]
        # new / s (s = 1 unless scaled): the same direction as β·old + (1 − β)·mean
        new = self.momentum * (old if s is None else old / s) + (1.0 - self.momentum) * means
        if self.warm_start:
            first = ~self.seen[present]
            new[first] = means[first]
        norms = new.norm(dim=1, keepdim=True)
        # a batch mean of exactly zero (opposite features cancel) keeps the old direction
        ok = (norms if s is None else norms * s) > 1e-12
        new = torch.where(ok, new / torch.where(ok, norms, torch.ones_like(norms)), old)
        self.weight[present] = new.to(self.weight.dtype)
        self.seen |= present
        self.num_updates += 1
        return present

    def forward(self, features: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        """Return the current weight (K, d); with ``features, labels`` in training mode,
        update afterwards (the returned weight is the one *before* this batch)."""
        w = self.weight.clone()
        if features is not None and labels is not None and self.training:
            self.update(features, labels)
        return w
