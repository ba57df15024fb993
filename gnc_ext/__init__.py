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
# end [hull]
# [loss] exports
# end [loss]
# [metrics] exports
# end [metrics]
# [solvers] exports
from . import theory, solvers  # noqa: E402,F401
__all__ += ["theory", "solvers"]
# end [solvers]
