"""nn.Module front-ends: large-K losses (and, later, classifiers such as CMFClassifier).

- :class:`SphericalCELoss` — spherical cross-entropy with a (K, d) weight Parameter or an
  external weight provider (``classifier=``), ``predict`` and chunked ``logits``.
- :class:`HardMaxLoss` — the HardMax loss, same conventions.
"""
from .losses import HardMaxLoss, SphericalCELoss

__all__ = ["SphericalCELoss", "HardMaxLoss"]
