"""torch.library custom ops (one module per family). Importing this package registers
them under the ``torch.ops.gnc_ext`` namespace, each with a fake (meta) kernel for
torch.compile and an autograd formula."""
from . import normalize  # noqa: F401

# [hull] op modules
from . import hull  # noqa: F401
# end [hull]
# [loss] op modules
from . import loss  # noqa: F401,E402
# end [loss]
# [metrics] op modules
# end [metrics]
# [solvers] op modules
# end [solvers]
