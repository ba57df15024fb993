"""Class-mean-feature (CMF) classifier (paper Sec. 5 and App. B).

The classifier is not trained: its rows are an exponential moving average of the
mini-batch class means of the (normalised) features, renormalised to the unit sphere,

    W_k ← normalize(β·W_k + (1 − β)·H̄_k)    for every class k present in the batch,

with β the momentum (0.9 in the paper). Classes absent from a batch keep their row.
Motivated by GNC3 (self-duality): at collapse the optimal classifier is the class means.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _validate
from ..ops.normalize import normalize_rows


class CMFClassifier(nn.Module):
    """EMA-of-class-means classifier weights (no trainable parameters).

    Args:
        num_classes: K ≥ 2.
        dim: feature dimension d ≥ 1.
        momentum: β in [0, 1); the weight kept from the previous step (paper: 0.9).
        normalize_features: L2-normalise features before taking class means (the
            spherical setting of the paper; default True).
        seed: seed of the random unit-norm initial rows (classes never seen keep them).

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
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {dtype}")
        self.num_classes, self.dim, self.momentum = K, d, m
        self.normalize_features = bool(normalize_features)
        self.warm_start = bool(warm_start)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(K, d, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.register_buffer("weight", w.to(device=device, dtype=dtype))
        self.register_buffer("seen", torch.zeros(K, dtype=torch.bool, device=device))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64, device=device))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> Tensor:
        """Fold one mini-batch into the EMA; returns the (K,) bool mask of updated classes."""
        _validate.tensor(features, "features", ndim=2)
        if features.shape[1] != self.dim:
            raise ValueError(f"features: expected width {self.dim}, got {features.shape[1]}")
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32))
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels: expected {features.shape[0]} labels (one per feature row), got {labels.shape[0]}")
        _validate.same_device(("weight", self.weight), ("features", features), ("labels", labels))
        _validate.finite(features, "features")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels: expected values in [0, {self.num_classes}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        h = features.detach().to(torch.float64)
        if self.normalize_features:
            h = normalize_rows(h)
        labels = labels.long()
        sums = torch.zeros(self.num_classes, self.dim, dtype=torch.float64, device=h.device)
        sums.index_add_(0, labels, h)
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1).to(torch.float64)
        old = self.weight[present].to(torch.float64)
        new = self.momentum * old + (1.0 - self.momentum) * means
        if self.warm_start:
            first = ~self.seen[present]
            new[first] = means[first]
        norms = new.norm(dim=1, keepdim=True)
        # a batch mean of exactly zero (opposite features cancel) keeps the old direction
        new = torch.where(norms > 1e-12, new / norms.clamp_min(1e-300), old)
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
