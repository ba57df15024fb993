"""GNC metrics at large K: streaming GNC1, GNC2, GNC3 and nearest-class-centre accuracy.

- :class:`GNCAccumulator` — streaming, mergeable, ``torch.distributed``-aware per-class
  statistics (fp64, cancellation-free under collapse); ``compute(W)`` → :class:`GNCResult`.
- :func:`evaluate` — the two passes (statistics, then NCC) over a re-iterable loader
  or precomputed tensors.
- :func:`gnc2` — ρ_one-vs-rest of a classifier with its certificate and the theory's
  reference values (needs the hull family, ``gnc_ext.one_vs_rest_distance``).
"""
from .accumulator import GNC2Result, GNCAccumulator, GNCResult, gnc2
from .evaluate import evaluate

__all__ = ["GNCAccumulator", "GNCResult", "GNC2Result", "evaluate", "gnc2"]
