"""A ``torchmetrics.Metric`` around :class:`GNCAccumulator` (needs the ``[torchmetrics]``
extra; this module is imported only when ``gnc_ext.metrics.GNCMetric`` is first used).

The metric's registered states are the accumulator's own state tensors (per-class
counts, fp32 reference points, fp64 deviation sums, square sums and the d × d scatter),
updated in place. Under DDP torchmetrics gathers every rank's states
(``dist_reduce_fx=None``) and :meth:`GNCMetric.compute` merges them with Chan's formula
(:meth:`GNCAccumulator.merge`), which gives the statistics :meth:`GNCAccumulator.sync`
gives (to float64 rounding).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric

from .accumulator import GNCAccumulator
from .nc import check_nc_options, check_ood_mean, nc_metrics

__all__ = ["GNCMetric"]

_STATES = ("counts", "shift", "dsum", "sqsum", "scatter")


class GNCMetric(Metric):
    """GNC1 (and GNC3 and the NC suite) as a torchmetrics metric: ``update(features,
    labels)``, ``compute()``, ``reset()``, DDP sync, ``metric.to(device)``.

    Args:
        num_classes, dim, normalize, eps: as for :class:`GNCAccumulator`.
        W: optional classifier for GNC3 and the NC suite's W/NC3 fields: a (K, d) tensor
            or a callable returning one at compute time (e.g. ``lambda: model.fc.weight``).
        centered: passed to :meth:`GNCAccumulator.compute` for ``gnc1``.
        nc: also report :func:`nc_metrics` (every numeric field of :class:`NCMetrics`
            that is not None).
        ood_mean, kernel, cdnv_exponent: passed to :func:`nc_metrics`.
        **kwargs: ``torchmetrics.Metric`` options (``process_group``, ``sync_on_compute``, ...).

    ``compute()`` returns a dict of 0-dim float64 tensors: ``gnc1``, ``gnc3`` (with W),
    and with ``nc`` the suite's fields by their :class:`NCMetrics` names. GNC2 (the
    certified hull solve) is not part of it: call ``metric.accumulator().compute(W)``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, dim: int, *, normalize: bool = True, eps: float = 1e-12,
                 W: Union[Tensor, Callable[[], Tensor], None] = None, centered: bool = False, nc: bool = True,
                 ood_mean: Optional[Tensor] = None, kernel: str = "log", cdnv_exponent: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        template = GNCAccumulator(num_classes, dim, normalize=normalize, eps=eps)  # validates them
        self._config = dict(num_classes=template.num_classes, dim=template.dim, normalize=template.normalize,
                            eps=template.eps)
        if W is not None and not callable(W) and not isinstance(W, Tensor):
            raise TypeError(f"W: expected a tensor or a callable returning one, got {type(W).__name__}")
        self._W = W
        self._centered = bool(centered)
        self._nc = bool(nc)
        self._kernel, self._p = check_nc_options(kernel, cdnv_exponent)
        if ood_mean is not None:
            check_ood_mean(ood_mean, template.dim)
        self._ood_mean = ood_mean
        state = template.state_dict()
        for key in _STATES:
            self.add_state(key, default=state[key], dist_reduce_fx=None)
        self._live: Optional[GNCAccumulator] = None

    def _state(self, i: Optional[int] = None) -> Dict[str, Any]:
        d = {"version": 1, **self._config}
        for key in _STATES:
            t = getattr(self, key)
            d[key] = t if i is None else t[i]
        return d

    def _local(self) -> GNCAccumulator:
        """The accumulator whose live state is this metric's registered state tensors
        (rebuilt when torchmetrics replaced them: reset, ``to``, load)."""
        cur = tuple(getattr(self, k) for k in _STATES)
        if self._live is None or any(a is not b for a, b in zip(self._live_tensors, cur)):
            acc = GNCAccumulator(device=self.counts.device, **self._config)
            acc.load_state_dict(self._state(), copy=False)
            self._live, self._live_tensors = acc, cur
        return self._live

    def update(self, features: Tensor, labels: Tensor) -> None:  # noqa: D102 (Metric API)
        self._local().update(features, labels)

    def forward(self, features: Tensor, labels: Tensor) -> None:
        """``metric(features, labels)`` only updates (returns None): a per-batch value of
        these dataset-level statistics is not meaningful, and torchmetrics' batch-state
        reduction does not apply to gathered (not summed) states."""
        self.update(features, labels)

    def accumulator(self) -> GNCAccumulator:
        """A :class:`GNCAccumulator` with the statistics of every rank (after torchmetrics'
        sync, inside ``compute``) or of this process: a merged copy when states were
        gathered, else the live local accumulator."""
        if self.counts.dim() == 1:
            return self._local()
        out = GNCAccumulator(device=self.counts.device, **self._config)
        for i in range(self.counts.shape[0]):
            part = GNCAccumulator(device=self.counts.device, **self._config).load_state_dict(self._state(i))
            out.merge(part)
        return out

    def compute(self) -> Dict[str, Tensor]:  # noqa: D102 (Metric API)
        acc = self.accumulator()
        W = self._W() if callable(self._W) else self._W
        if W is not None:
            W = W.detach()
        res = acc.compute(W, centered=self._centered, gnc2=False)
        out = {"gnc1": res.gnc1}
        if W is not None:
            out["gnc3"] = res.gnc3
        if self._nc:
            suite = nc_metrics(acc, W, ood_mean=self._ood_mean, kernel=self._kernel, cdnv_exponent=self._p,
                               gnc2=False)
            for key, v in vars(suite).items():
                if isinstance(v, float) and key != "cdnv_exponent":
                    out[key] = v
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
