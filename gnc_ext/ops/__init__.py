"""torch.library custom ops (one module per family). Importing this package registers
them under the ``torch.ops.gnc_ext`` namespace, each with a fake (meta) kernel for
torch.compile and an autograd formula.

- :mod:`.normalize`: fused row normalisation.
- :mod:`.hull`: one-vs-rest / one-vs-one geometry epilogues.
- :mod:`.sce`: spherical cross-entropy (recompute and gradient-in-forward strategies).
- :mod:`.sce_stored`: spherical cross-entropy, stored-exponent strategy.
- :mod:`.hardmax`: HardMax loss and cosine argmax (``predict``).
- :mod:`.metrics`: the metrics family's native epilogues (GNC statistics, NCC, NC pairs).
- :mod:`.tiles`: tile sizing, GEMM and validation helpers the loss ops share.
"""
from . import normalize  # noqa: F401
from . import hull  # noqa: F401
from . import sce  # noqa: F401
from . import hardmax  # noqa: F401
from . import sce_stored  # noqa: F401
from . import metrics  # noqa: F401
