"""Streaming GNC accumulator: GNC1 / GNC2 / GNC3 and nearest-class-centre accuracy.

The class is assembled from three parts: :mod:`.state` (update, merge, sync,
state_dict), :mod:`.compute` (GNC1/2/3) and :mod:`.ncc` (nearest class centre, NC4).

The numerics (shifted-data fp64 sums, Chan's merge) are described in :mod:`.state`.
"""
from __future__ import annotations

import torch

from .. import _validate

from .compute import ComputeMixin, GNC2Result, GNCResult, _check_gnc2, _check_pinv_rtol, _check_W, gnc2
from .ncc import NCCMixin
from .state import _INT_DTYPES, AccumulatorState, _raise_if_bad_batch, _symmetrize_upper, _syrk_upper

def _ncc_screened(dtype: torch.dtype, device: torch.device) -> bool:
    """Nearest-class-centre scoring of float32 features (``gnc_ext.config.ncc_screen``):
    "auto" screens the class tiles with TF32 tensor-core GEMMs on CUDA and re-scores the
    candidates exactly in float64 (the exact argmax); "on" forces it (tests use it on the
    CPU with TF32 rounding emulated); "off" uses fp32 GEMM tiles everywhere."""
    if dtype != torch.float32:
        return False
    mode = _validate.config.ncc_screen
    return mode == "on" or (mode == "auto" and device.type == "cuda")


__all__ = ["GNCAccumulator", "GNCResult", "GNC2Result", "gnc2"]


class GNCAccumulator(AccumulatorState, ComputeMixin, NCCMixin):
    """Streaming, mergeable, DDP-aware accumulator of per-class feature statistics.

    Args:
        num_classes: K ≥ 1.
        dim: feature dimension d ≥ 1.
        normalize: L2-normalise every feature row (``h / max(‖h‖, eps)``, in fp64) before
            accumulating, as in the paper (features on the unit sphere). Also decides
            whether NCC normalises the query features.
        device: where the state lives (features must be on this device): None (CPU), a
            cpu or (usable) cuda device.
        eps: norm floor used by ``normalize``. With ``normalize=True`` it must be at least
            2**-126 ≈ 1.18e-38 (the smallest normal float32), so that an all-zero row maps
            to zero (not NaN) in the float64 update and in the float32 NCC queries alike;
            with ``normalize=False`` it is unused (any value >= 0).

    Ranges: with ``normalize=False``, float64 features must lie within the float32 range
    (|x| ≤ 3.4e38, the class reference points are float32); :meth:`update` raises
    ValueError naming ``features`` otherwise.

    Methods: :meth:`update`, :meth:`merge`, :meth:`sync`, :meth:`compute`,
    :meth:`class_statistics`, :meth:`ncc_predict`, :meth:`ncc_accuracy`,
    :meth:`linear_predict`, :meth:`nc4_agreement`, :meth:`nc4_agreement_count`,
    :meth:`state_dict`, :meth:`load_state_dict`, :meth:`reset`. The NC suite:
    :func:`gnc_ext.metrics.nc_metrics`.

    Memory: O(K·d + d²) (see the module docstring).
    """

    def _ncc_screened(self, dtype: torch.dtype) -> bool:
        return _ncc_screened(dtype, self.device)

    def __repr__(self) -> str:
        return (f"GNCAccumulator(num_classes={self.num_classes}, dim={self.dim}, normalize={self.normalize}, "
                f"device={self.device}, samples={self.num_samples})")
