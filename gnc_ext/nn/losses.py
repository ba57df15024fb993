"""Loss modules holding (or borrowing) the class-weight matrix W (K, d).

Weight providers: by default a module owns ``self.weight``, a (K, d) ``nn.Parameter``
initialised with i.i.d. N(0, 1) rows (normalised inside the loss, so the scale is
irrelevant). Pass ``classifier=obj`` instead to use weights supplied elsewhere, e.g. a
CMF classifier whose W is an exponential moving average of class means and is not
trained: ``obj`` must expose a ``weight`` attribute (a (K, d) tensor; a buffer or a
Parameter) or be callable returning one. It is read at every call (so an EMA update
is picked up), gradients flow to it only if that tensor requires grad, and the loss
skips the dW computation otherwise.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _validate
from .. import resources
from ..losses import HARDMAX_REDUCTIONS, SCEOptions, check_recognition_options, hardmax_loss, sce_with_options
from ..ops import tiles as _tiles
from ..ops.normalize import normalize_rows_named


# Constructor checks shared by the nn modules: the rules spherical_cross_entropy applies
# at call time, applied where the module is built.

def _check_dtype(dtype, allowed=_validate.FLOAT_DTYPES, allow_none: bool = True) -> Optional[torch.dtype]:
    """``dtype`` of a module's weights: one of ``allowed`` (or None: torch's default)."""
    if dtype is None and allow_none:
        return None
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        raise TypeError(f"dtype: expected a floating torch.dtype ({_validate._dtype_list(allowed)}), got {dtype!r}")
    return dtype


def _check_device(device) -> Optional[torch.device]:
    """``device`` of a module's weights: cpu or usable cuda (None: torch's default device)."""
    return None if device is None else _validate.device(device, "device")


class _WeightedLoss(nn.Module):
    def __init__(self, num_classes: int, embedding_dim: int, classifier=None, dtype=None, device=None,
                 num_subcenters: int = 1):
        super().__init__()
        self.num_classes = _validate.integer(num_classes, "num_classes", minimum=2)
        self.embedding_dim = _validate.integer(embedding_dim, "embedding_dim", minimum=1)
        self.num_subcenters = check_recognition_options(0.0, num_subcenters)[1]
        dtype, device = _check_dtype(dtype), _check_device(device)
        rows = self.num_classes * self.num_subcenters  # class-major sub-centres
        if classifier is None:
            resources.ensure_fits(rows * self.embedding_dim * resources.itemsize(dtype), device=device,
                                  what=f"{type(self).__name__}(num_classes={num_classes}, embedding_dim={embedding_dim})")
            self.weight = nn.Parameter(torch.randn(rows, self.embedding_dim, dtype=dtype, device=device))
            self.classifier = None
        else:
            if not (hasattr(classifier, "weight") or callable(classifier)):
                raise TypeError("classifier: expected an object with a `weight` attribute or a callable returning "
                                f"the (K, d) weights, got {type(classifier).__name__}")
            self.weight = None
            self.classifier = classifier

    def class_weights(self) -> Tensor:
        """The (K·k, d) weights in use (own Parameter or the provider's current tensor;
        k = ``num_subcenters``, rows c·k … c·k + k − 1 belong to class c)."""
        if self.classifier is None:
            return self.weight
        c = self.classifier
        W = c.weight if hasattr(c, "weight") else c()
        rows = self.num_classes * self.num_subcenters
        if not isinstance(W, Tensor) or W.dim() != 2 or tuple(W.shape) != (rows, self.embedding_dim):
            got = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
            raise ValueError(f"classifier: expected weights of shape ({rows}, {self.embedding_dim}), got {got}")
        return W

    @torch.no_grad()
    def predict(self, features: Tensor, chunk: int = 0) -> Tensor:
        """Top-1 class ``argmax_k ⟨ĥ_i, ŵ_k⟩`` (lowest index among ties) as (B,) int64.
        With k sub-centres the class cosine is the max over its sub-centres, so the class
        is the one owning the best of all K·k rows (its row index // k).

        Streams tiles of classes through the native argmax epilogue: no (B, K) logits.
        Memory: one fp32 tile and one normalised block of W (no K × d copy; fp32 features
        on CUDA with ≥ 4096 rows take the TF32-screened path, which normalises W whole
        into a temporary). ``chunk``: classes per tile
        (0: automatic). NaN/Inf in ``features`` or the weights raise ValueError naming
        them (when ``gnc_ext.config.check_finite``).
        """
        W = self.class_weights()
        _validate.tensor(features, "features", ndim=2)
        _validate.same_device(("features", features), ("weight", W))
        if features.shape[1] != self.embedding_dim:
            raise ValueError(f"features: expected {self.embedding_dim} columns, got shape {tuple(features.shape)}")
        chunk = _validate.integer(chunk, "chunk", minimum=0)
        _validate.finite(features.detach(), "features")
        _tiles.check_finite_rows(W.detach(), "weight")
        arg = torch.ops.gnc_ext.argmax_cosine_nw(features.detach(), W.detach(), chunk)
        return arg if self.num_subcenters == 1 else arg // self.num_subcenters

    @torch.no_grad()
    def cosines(self, features: Tensor, chunk: Optional[int] = None) -> Tensor:
        """(B, K) cosines ``⟨ĥ_i, ŵ_k⟩`` (fp32; fp64 for fp64), built ``chunk`` rows of W at a
        time (with sub-centres: the max over each class's k rows)."""
        W = self.class_weights()
        _validate.tensor(features, "features", ndim=2)
        _validate.same_device(("features", features), ("weight", W))
        if features.shape[1] != self.embedding_dim:
            raise ValueError(f"features: expected {self.embedding_dim} columns, got shape {tuple(features.shape)}")
        acc = torch.float64 if features.dtype == torch.float64 else torch.float32
        Hn = normalize_rows_named(features.detach(), "features").to(acc)
        Wn = normalize_rows_named(W.detach(), "weight")
        K = Wn.shape[0]
        c = _tiles.col_chunk(Hn.shape[0], K) if chunk is None else _validate.integer(chunk, "chunk", minimum=1)
        out = torch.empty((Hn.shape[0], K), dtype=acc, device=Hn.device)
        if self.num_subcenters > 1:
            k = self.num_subcenters
            out = torch.empty((Hn.shape[0], K // k), dtype=acc, device=Hn.device)
            c = max(k, c // k * k)
            for s in range(0, K, c):
                out[:, s // k : (s + c) // k] = (Hn @ Wn[s : s + c].to(acc).T).view(Hn.shape[0], -1, k).amax(2)
            return out
        for s in range(0, K, c):
            torch.mm(Hn, Wn[s : s + c].to(acc).T, out=out[:, s : s + c])
        return out


class OptionsAsAttributes:
    """Mixin for the loss modules holding an :class:`gnc_ext.losses.SCEOptions` as
    ``self.options``: its fields read and write as attributes (``crit.tau``,
    ``crit.margin = 0.3``); assigning one replaces ``self.options`` by a validated copy,
    so the options the loss uses are always the attributes shown. ``num_subcenters``
    is fixed by the weight's shape and is read-only."""

    _FIELDS = frozenset(f.name for f in dataclasses.fields(SCEOptions))

    def __getattr__(self, name: str):
        if name in OptionsAsAttributes._FIELDS and "options" in self.__dict__:
            return getattr(self.__dict__["options"], name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in OptionsAsAttributes._FIELDS and "options" in self.__dict__:
            if name == "num_subcenters":
                raise AttributeError("num_subcenters: fixed by the weight's shape; build a new module")
            value, name = self.options.replace(**{name: value}), "options"
        super().__setattr__(name, value)


class SphericalCELoss(OptionsAsAttributes, _WeightedLoss):
    """Drop-in large-K classifier loss: ``loss = criterion(features, labels)``.

    Holds W (K, d) as ``self.weight`` (an ``nn.Parameter``) unless ``classifier=`` supplies
    the weights (see the module docstring; used by a CMF classifier whose W is not
    trained). Calls :func:`gnc_ext.spherical_cross_entropy` with the stored options:
    ``self.options``, one validated :class:`gnc_ext.losses.SCEOptions` (shared with
    :class:`ShardedSphericalCELoss`), whose fields also read and write as attributes
    (``crit.tau``; assigning one validates it). Labels int64 or int32; features in the
    weight's dtype, or 16-bit against float32 weights, also inside ``torch.autocast``
    (see "Mixed precision" in :func:`gnc_ext.spherical_cross_entropy`).

    Args:
        num_classes (K ≥ 2), embedding_dim (d ≥ 1), tau ≥ 1e-6, margin, margin_type
        ("cosface" | "arcface"), label_smoothing, ignore_index, reduction
        ("mean" | "sum" | "none"), normalize, margin_grad ("exact" | "straight_through"),
        interclass_filtering_threshold (0 = off), num_subcenters (k ≥ 1: the weight has
        K·k rows, class-major) — see spherical_cross_entropy —, classifier (optional
        weight provider), dtype (float32/float64/float16/bfloat16; None: torch's
        default) and device (cpu or an available cuda; None: torch's default) of the
        owned Parameter.

    InsightFace's ``CombinedMarginLoss(64, 1.0, 0.5, 0.0)`` (ArcFace) is
    ``SphericalCELoss(K, d, tau=1/64, margin=0.5, margin_type="arcface",
    margin_grad="straight_through", ignore_index=-1)``; ``(64, 1.0, 0.0, 0.4)`` (CosFace)
    is ``margin=0.4, margin_type="cosface"`` (the same under both ``margin_grad``).

    Raises:
        TypeError/ValueError naming the argument, at construction, under the rules of
        :func:`gnc_ext.spherical_cross_entropy`.
    """

    def __init__(self, num_classes: int, embedding_dim: int, tau: float = 0.05, margin: float = 0.0,
                 margin_type: str = "cosface", label_smoothing: float = 0.0, ignore_index: int = -100,
                 reduction: str = "mean", normalize: bool = True, classifier=None, dtype=None, device=None,
                 margin_grad: str = "exact", interclass_filtering_threshold: float = 0.0, num_subcenters: int = 1):
        super().__init__(num_classes, embedding_dim, classifier, dtype, device, num_subcenters)
        self.options = SCEOptions(tau, reduction, ignore_index, label_smoothing, margin, margin_type, normalize,
                                  margin_grad, interclass_filtering_threshold, self.num_subcenters)


    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32), allow_empty=True)
        return sce_with_options(features, self.class_weights(), labels, self.options)

    @torch.no_grad()
    def logits(self, features: Tensor, chunk: Optional[int] = None) -> Tensor:
        """(B, K) inference logits ``⟨ĥ_i, ŵ_k⟩/τ`` (no margin), fp32 (fp64 for fp64),
        computed ``chunk`` classes at a time (default: a 32 MiB tile); this DOES
        materialise B × K — use :meth:`predict` for the top-1 class."""
        return self.cosines(features, chunk).div_(self.tau)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, tau={self.tau}, "
                f"margin={self.margin}, margin_type={self.margin_type!r}, reduction={self.reduction!r}, "
                f"margin_grad={self.margin_grad!r}, interclass_filtering_threshold="
                f"{self.interclass_filtering_threshold}, num_subcenters={self.num_subcenters}")


class HardMaxLoss(_WeightedLoss):
    """HardMax loss module: ``criterion(features, labels)`` calls :func:`gnc_ext.hardmax_loss`.

    Same weight conventions (and constructor checks) as :class:`SphericalCELoss`;
    ``reduction`` as in :func:`gnc_ext.hardmax_loss`; ``logits`` returns the cosines.
    """

    def __init__(self, num_classes: int, embedding_dim: int, reduction: str = "max", normalize: bool = True,
                 classifier=None, dtype=None, device=None):
        super().__init__(num_classes, embedding_dim, classifier, dtype, device)
        if not isinstance(reduction, str) or reduction not in HARDMAX_REDUCTIONS:
            raise ValueError(f"reduction: expected one of {', '.join(map(repr, HARDMAX_REDUCTIONS))}, got {reduction!r}")
        self.reduction = reduction
        self.normalize = _validate.boolean(normalize, "normalize")

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32), allow_empty=True)
        return hardmax_loss(features, self.class_weights(), labels, reduction=self.reduction,
                            normalize=self.normalize)

    @torch.no_grad()
    def logits(self, features: Tensor, chunk: Optional[int] = None) -> Tensor:
        """(B, K) cosines ``⟨ĥ_i, ŵ_k⟩`` computed ``chunk`` classes at a time (materialises B × K)."""
        return self.cosines(features, chunk)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, reduction={self.reduction!r}"
