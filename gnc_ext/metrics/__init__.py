"""GNC and neural-collapse metrics at large K, streamed.

- :class:`GNCAccumulator` — streaming, mergeable, ``torch.distributed``-aware per-class
  statistics (fp64, cancellation-free under collapse); ``compute(W)`` → :class:`GNCResult`.
- :func:`nc_metrics` — the neural-collapse suite NC1–NC5 (pinv/quotient/CDNV, ETF and
  kernel statistics, self-duality, NCC agreement, OoD orthogonality) → :class:`NCMetrics`,
  never forming a K × K matrix.
- :func:`evaluate` — the two passes (statistics, then NCC and NC4) over a re-iterable
  loader or precomputed tensors; ``nc=True`` adds the suite.
- :func:`collect` — one data pass through a model filling one accumulator per layer
  (forward hooks); :func:`layer_metrics` — the suite per layer with NCC accuracy and NC4.
- :class:`NCHistory` — the suite per layer over epochs: JSON, curves over epochs and
  across layers.
- :func:`gnc2` — ρ_one-vs-rest of a classifier with its certificate and the theory's
  reference values (the hull family, ``gnc_ext.geometry.one_vs_rest_distance``).
- ``GNCMetric`` — a ``torchmetrics.Metric`` adapter (needs the ``[torchmetrics]``
  extra; imported on first access).
"""
from .accumulator import GNC2Result, GNCAccumulator, GNCResult, gnc2
from .evaluate import evaluate
from .history import NCHistory
from .layers import collect, layer_metrics
from .nc import NCMetrics, etf_error_floor, nc_metrics

__all__ = ["GNCAccumulator", "GNCResult", "GNC2Result", "NCMetrics", "NCHistory", "collect", "etf_error_floor",
           "evaluate", "gnc2", "layer_metrics", "nc_metrics", "GNCMetric"]


def __getattr__(name):
    if name == "GNCMetric":  # torchmetrics is optional: import it only when asked for
        from .torchmetrics_adapter import GNCMetric

        return GNCMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
