"""gnc_ext: Generalized Neural Collapse at large class counts.

Public API (see README.md for a tour):

- :func:`normalize_rows` — fused, differentiable row L2 normalisation (CPU/CUDA).
- :func:`build_info` — what was compiled (OpenMP, CUDA archs) and what is usable now.
- :data:`config` — global switches (``config.check_finite``).
"""
__version__ = "0.1.0"

from ._native import build_info  # noqa: E402
from ._validate import config  # noqa: E402
from . import ops  # noqa: E402,F401  (registers torch.ops.gnc_ext.*)
from .ops.normalize import normalize_rows  # noqa: E402

__all__ = ["__version__", "build_info", "config", "normalize_rows"]

# [hull] exports
from . import geometry  # noqa: E402
from .geometry import OneVsOneResult, OneVsRestResult, one_vs_one_distance, one_vs_rest_distance  # noqa: E402

__all__ += ["geometry", "OneVsRestResult", "OneVsOneResult", "one_vs_rest_distance", "one_vs_one_distance"]
# end [hull]
# [loss] exports
from .losses import hardmax_loss, spherical_cross_entropy  # noqa: E402
from . import nn  # noqa: E402
__all__ += ["spherical_cross_entropy", "hardmax_loss", "nn"]
# end [loss]
# [metrics] exports
from . import metrics  # noqa: E402,F401

__all__ += ["metrics"]
# end [metrics]
# [solvers] exports
from . import theory, solvers  # noqa: E402,F401
__all__ += ["theory", "solvers"]
# end [solvers]
