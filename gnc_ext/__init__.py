"""gnc_ext: Generalized Neural Collapse at large class counts.

Public API (see README.md for a tour):

- :func:`one_vs_rest_distance`, :func:`one_vs_one_distance` — exact, certified GNC2
  geometry (``gnc_ext.geometry``).
- :func:`spherical_cross_entropy`, :func:`hardmax_loss` — fused large-K losses;
  ``gnc_ext.nn`` holds the modules (``SphericalCELoss``, ``HardMaxLoss``,
  ``CMFClassifier``, ``ShardedSphericalCELoss``).
- ``gnc_ext.metrics`` — streaming GNC1/GNC2/GNC3 and nearest-class-centre accuracy.
- ``gnc_ext.theory`` and ``gnc_ext.solvers`` — closed forms and bounds; Softmax Code,
  Tammes, UFM and HardMax solvers.
- :func:`normalize_rows` — fused, differentiable row L2 normalisation (CPU/CUDA).
- :func:`build_info` — what was compiled (OpenMP, CUDA archs) and what is usable now.
- :data:`config` — every setting, validated when set (keys in ``gnc_ext.settings``;
  ``config.override(...)`` for a block).
- ``gnc_ext.plot`` (needs matplotlib) and the ``gnc`` command (``gnc_ext.cli``).
"""
__version__ = "0.1.0"

from ._native import build_info  # noqa: E402
from ._validate import config  # noqa: E402
from . import ops  # noqa: E402,F401  (registers torch.ops.gnc_ext.*)
from .ops.normalize import normalize_rows  # noqa: E402
from . import geometry  # noqa: E402
from .geometry import OneVsOneResult, OneVsRestResult, one_vs_one_distance, one_vs_rest_distance  # noqa: E402
from .losses import hardmax_loss, spherical_cross_entropy  # noqa: E402
from . import nn  # noqa: E402
from . import metrics  # noqa: E402
from . import theory, solvers  # noqa: E402

__all__ = [
    "__version__", "build_info", "config", "normalize_rows",
    "geometry", "OneVsRestResult", "OneVsOneResult", "one_vs_rest_distance", "one_vs_one_distance",
    "spherical_cross_entropy", "hardmax_loss", "nn",
    "metrics", "theory", "solvers",
]
