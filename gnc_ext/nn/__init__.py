"""nn.Module front-ends for large-K training.

- :class:`SphericalCELoss` — spherical cross-entropy with a (K, d) weight Parameter or an
  external weight provider (``classifier=``), ``predict`` and chunked ``logits``.
- :class:`HardMaxLoss` — the HardMax loss, same conventions.
- :class:`CMFClassifier` — class-mean-feature classifier (EMA of batch class means).
- :class:`ShardedSphericalCELoss` — spherical CE with W sharded by class over a
  torch.distributed group (Partial FC class sampling with ``sample_rate < 1``).
- :func:`subcenter_clean` — sub-center ArcFace's cleaning step (dominant sub-centre per
  class, samples too far from it).
- :mod:`gnc_ext.nn.checkpoint` — ``save_loss_checkpoint`` / ``load_loss_checkpoint``:
  torch.distributed.checkpoint of the (sharded) classifier and its optimizer state,
  loadable at another world size.
"""
from .cmf import CMFClassifier
from .losses import HardMaxLoss, SphericalCELoss
from .sharded import ShardedSphericalCELoss
from .subcenter import subcenter_clean

__all__ = ["SphericalCELoss", "HardMaxLoss", "CMFClassifier", "ShardedSphericalCELoss", "subcenter_clean"]
