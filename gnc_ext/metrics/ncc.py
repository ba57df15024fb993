"""GNCAccumulator's nearest-class-centre (NCC) pass: prediction, accuracy and the NC4
agreement between the NCC and a linear classifier, streamed through the
similarity-reduce engine (never B × K)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from ..ops import metrics as metrics_ops

__all__ = ["NCCMixin"]


class NCCMixin:
    """NCC methods of :class:`gnc_ext.metrics.GNCAccumulator`. The class using it
    provides ``_ncc_screened(dtype)`` (the ``gnc_ext.config.ncc_screen`` policy)."""

    # -- nearest class centre --------------------------------------------------------------
    def _ncc_tables(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        """(means, bias) in ``dtype``, cached; the cache also keeps the largest class-mean
        norm (``self._ncc_cache[3]``, for the score bound of :meth:`_check_query_range`)."""
        key = dtype
        if self._ncc_cache is not None and self._ncc_cache[0] == key:
            return self._ncc_cache[1], self._ncc_cache[2]
        counts, means = self._canonical_means()
        if int(counts.sum()) == 0:
            raise RuntimeError("ncc: no samples accumulated yet (call update(features, labels) first)")
        nz = counts > 0
        sq = (means * means).sum(1)
        mnorm = math.sqrt(float(sq[nz].max()))
        if not 0.5 * mnorm * mnorm <= torch.finfo(dtype).max / 4:
            raise ValueError(f"features: the class means (norm up to {mnorm:g}) are too large for "
                             f"{str(dtype).replace('torch.', '')} nearest-class-centre scores (they would "
                             "overflow); pass float64 features")
        bias = torch.where(nz, -0.5 * sq, torch.full((), -math.inf, dtype=torch.float64, device=self.device))
        M = means.to(dtype).contiguous()
        b = bias.to(dtype).contiguous()
        self._ncc_cache = (key, M, b, mnorm)
        return M, b

    def _check_query_range(self, A: Tensor) -> None:
        """Without normalisation the NCC scores ⟨a, h̄_k⟩ − ‖h̄_k‖²/2 are bounded by
        √d·max|a|·max‖h̄_k‖ + max‖h̄_k‖²/2 (every partial sum of the GEMM too): refuse a
        block whose bound could overflow the score dtype (an overflowing score would give
        NaN ties or class -1). One ``aminmax`` reduction, also the finiteness check."""
        v = torch.stack(torch.aminmax(A)).to(torch.float64).tolist()
        if not (math.isfinite(v[0]) and math.isfinite(v[1])):
            if _validate.config.check_finite:
                raise ValueError("features: contains NaN or Inf values")
            return
        mnorm = self._ncc_cache[3]
        amax = max(-v[0], v[1])
        if math.sqrt(self.dim) * amax * mnorm + 0.5 * mnorm * mnorm > torch.finfo(A.dtype).max / 4:
            raise ValueError(f"features: values up to {amax:g} are too large for "
                             f"{str(A.dtype).replace('torch.', '')} nearest-class-centre scores against class "
                             f"means of norm up to {mnorm:g} (they could overflow); pass float64 features or "
                             "rescale them")

    def _canonical_means(self) -> Tuple[Tensor, Tensor]:
        """(counts, means) without the d×d scatter (cheap: O(K·d))."""
        return self._counts, self._means()[0]

    @torch.no_grad()
    def ncc_predict(self, features: Tensor, *, row_block: int = 8192) -> Tensor:
        """Nearest-class-centre prediction: argmin_k ‖ĥ − h̄_k‖ over non-empty classes.

        ĥ is the feature L2-normalised (in float64, as in :meth:`update`) when the
        accumulator's ``normalize`` is set (the means are those of normalised features
        and are *not* re-normalised, so this is the Euclidean nearest class mean in the
        space GNC1 is measured in). Computed as
        argmax_k (⟨ĥ, h̄_k⟩ − ‖h̄_k‖²/2) by the similarity-reduce engine: per block of
        rows, a GEMM per tile of classes (fp32; fp64 for fp64 features) and the native
        argmax epilogue, so no (B × K) matrix exists beyond one tile (64 MiB budget).
        Ties go to the lowest class index. float32 features on CUDA (``gnc_ext.config.ncc_screen``
        "auto"): the tiles come from TF32 tensor-core GEMMs and only the classes within
        the TF32 error bound of the running best are re-scored in float64, which gives
        the exact argmax of the float64 scores at TF32 speed (see
        ``gnc_ext._engine.certified_argmax``).

        Args:
            features: (B, dim) float tensor on the accumulator's device, finite.
            row_block: rows per block (memory: one row_block × tile fp32 tile, plus a
                row_block × dim float64 block when ``normalize``).

        Returns:
            (B,) int64 predicted classes in [0, num_classes) (never an empty class) on
            the accumulator's device.

        Raises:
            TypeError/ValueError naming ``features``/``row_block``: bad input, NaN/Inf,
            or (``normalize=False``) values or class means so large that the scores
            could overflow (float32 features: pass float64 ones). RuntimeError before
            any update.
        """
        features, _ = self._check_batch(features, None, need_labels=False)
        row_block = _validate.integer(row_block, "row_block", minimum=1)
        B = features.shape[0]
        cdt = torch.float64 if features.dtype == torch.float64 else torch.float32
        M, bias = self._ncc_tables(cdt)
        out = torch.empty(B, dtype=torch.int64, device=self.device)
        screen = self._ncc_screened(cdt)
        bounds = metrics_ops.screen_bounds(M, bias) if screen else None  # once for all row blocks
        for r0 in range(0, B, row_block):
            A = features[r0:r0 + row_block].to(cdt)
            if self.normalize:
                _validate.finite(A, "features")  # per block: no (B × d) temporary
                # in float64 like update (a float32 norm overflows beyond |x| ~ 1e19)
                A = torch.nn.functional.normalize(A.double(), dim=1, eps=self.eps).to(cdt)
            else:
                self._check_query_range(A)
            metrics_ops.argmax_rows(A.contiguous(), M, bias, screen=screen, bounds=bounds,
                                    out=out[r0:r0 + A.shape[0]])
        return out

    @torch.no_grad()
    def ncc_accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Fraction of samples whose nearest class centre (see :meth:`ncc_predict`) is their label.

        Raises ValueError/TypeError naming ``features``/``labels`` for bad input and
        RuntimeError before any update.
        """
        features, labels = self._check_batch(features, labels)  # labels range-checked too
        if features.shape[0] == 0:
            raise ValueError("features: expected at least one row")
        pred = self.ncc_predict(features)
        return float((pred == labels).double().mean())

    def check_labelled_batch(self, features: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """``(features, labels as int64)`` checked as :meth:`ncc_accuracy` checks them
        (width, device, dtype, length, label range); errors name the argument."""
        return self._check_batch(features, labels)

    # -- NC4: agreement of a linear classifier with the NCC ----------------------------------
    def _check_classifier(self, W, bias) -> Tuple[Tensor, Optional[Tensor]]:
        """W (num_classes, dim) and bias (num_classes,) or None, checked (naming ``W`` /
        ``bias``) and moved to the accumulator's device."""
        check_classifier(W, bias, self.num_classes, self.dim)
        W = W.to(self.device)
        return W, (None if bias is None else bias.to(self.device))

    @torch.no_grad()
    def linear_predict(self, features: Tensor, W: Tensor, bias: Optional[Tensor] = None, *,
                       row_block: int = 8192) -> Tensor:
        """The linear classifier's prediction ``argmax_k (⟨w_k, h⟩ + bias_k)`` on the raw
        features (not normalised: the classifier's own logits), over all ``num_classes``
        rows of W, ties to the lowest index; streamed over tiles of classes (fp32 GEMMs,
        fp64 for fp64 features), never B × K.

        Raises ValueError/TypeError naming ``features``, ``W``, ``bias``, ``row_block``.
        """
        features, _ = self._check_batch(features, None, need_labels=False)
        W, bias = self._check_classifier(W, bias)
        row_block = _validate.integer(row_block, "row_block", minimum=1)
        cdt = torch.float64 if features.dtype == torch.float64 else torch.float32
        Wc = W.to(cdt).contiguous()
        b = (torch.zeros(self.num_classes, dtype=cdt, device=self.device) if bias is None
             else bias.to(cdt).contiguous())
        B = features.shape[0]
        out = torch.empty(B, dtype=torch.int64, device=self.device)
        for r0 in range(0, B, row_block):
            A = features[r0:r0 + row_block].to(cdt)
            _validate.finite(A, "features")
            metrics_ops.argmax_rows(A.contiguous(), Wc, b, out=out[r0:r0 + A.shape[0]])
        return out

    @torch.no_grad()
    def nc4_agreement_count(self, features: Tensor, W: Tensor, bias: Optional[Tensor] = None) -> int:
        """How many rows of ``features`` the linear classifier (:meth:`linear_predict`)
        and the nearest class centre (:meth:`ncc_predict`) assign to the same class; sum
        it over a data pass and divide by the number of rows for NC4 (what
        :func:`gnc_ext.metrics.evaluate` with ``nc=True`` does).

        Raises ValueError/TypeError naming ``features``, ``W`` or ``bias``; RuntimeError
        before any update.
        """
        lin = self.linear_predict(features, W, bias)
        return int((lin == self.ncc_predict(features)).sum())

    @torch.no_grad()
    def nc4_agreement(self, features: Tensor, W: Tensor, bias: Optional[Tensor] = None) -> float:
        """NC4 on one batch: the fraction of rows whose linear prediction
        ``argmax_k (⟨w_k, h⟩ + bias_k)`` equals their nearest-class-centre prediction
        (Papyan, Han & Donoho 2020, "NC4: simplification to NCC"). Streamed, never B × K.

        Raises ValueError naming ``features`` for an empty batch, and as
        :meth:`nc4_agreement_count`.
        """
        _validate.tensor(features, "features", ndim=2)
        return self.nc4_agreement_count(features, W, bias) / features.shape[0]


def check_classifier(W, bias, num_classes: int, dim: int) -> None:
    """W must be a finite (num_classes, dim) float tensor; bias None or a finite
    (num_classes,) float tensor. Errors name ``W`` / ``bias``."""
    _validate.tensor(W, "W", ndim=2)
    if tuple(W.shape) != (num_classes, dim):
        raise ValueError(f"W: expected shape ({num_classes}, {dim}) (num_classes, dim), got {tuple(W.shape)}")
    _validate.finite(W, "W")
    if bias is not None:
        _validate.tensor(bias, "bias", ndim=1)
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(f"bias: expected shape ({num_classes},) (num_classes), got {tuple(bias.shape)}")
        _validate.finite(bias, "bias")
