"""torch.library custom ops (one module per family). Importing this package registers
them under the ``torch.ops.gnc_ext`` namespace, each with a fake (meta) kernel for
torch.compile and an autograd formula."""
from . import normalize  # noqa: F401
from . import hull  # noqa: F401
from . import loss  # noqa: F401
from . import metrics  # noqa: F401
