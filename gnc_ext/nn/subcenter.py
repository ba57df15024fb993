"""Sub-center ArcFace's data-cleaning step (Deng et al., ECCV 2020, Sec. 3.2).

After training with k sub-centres per class, each class has a *dominant* sub-centre
(the one that most of the class's samples are closest to); samples whose angle to
their class's dominant sub-centre exceeds a threshold (75° in the paper) are treated
as label noise and dropped before retraining with k = 1.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _validate
from ..losses import check_recognition_options, check_subcenter_rows
from ..ops.normalize import normalize_rows_named


@torch.no_grad()
def subcenter_clean(features: Tensor, weight: Tensor, labels: Tensor, *, num_subcenters: int,
                    angle_degrees: float = 75.0, chunk: int = 65536) -> Tuple[Tensor, Tensor]:
    """``(dominant, drop)`` for a dataset's features under a sub-centre classifier.

    Args:
        features: (N, d) features (any floating dtype; normalised here).
        weight: (K·k, d) class-major sub-centres (rows c·k … c·k + k − 1 belong to class c),
            e.g. ``SphericalCELoss(..., num_subcenters=k).weight``.
        labels: (N,) int64 in [0, K).
        num_subcenters: k ≥ 1.
        angle_degrees: samples farther than this angle (in (0, 180]) from their class's
            dominant sub-centre are flagged.
        chunk: samples per block (memory O(chunk · k · d)).

    Returns:
        ``dominant`` (K,) int64: per class the sub-centre index in [0, k) that is the
        nearest (largest cosine) sub-centre for the most samples of that class (the lowest
        index among equal counts; 0 for a class without samples), and ``drop`` (N,) bool:
        the samples whose angle to their class's dominant sub-centre exceeds
        ``angle_degrees``.
    """
    _validate.tensor(features, "features", ndim=2)
    _validate.tensor(weight, "weight", ndim=2)
    k = check_recognition_options(0.0, num_subcenters)[1]
    K = check_subcenter_rows(weight, k, "weight")
    _validate.tensor(labels, "labels", ndim=1, dtypes=(torch.int64,))
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels: expected {features.shape[0]} labels, got {labels.shape[0]}")
    if features.shape[1] != weight.shape[1]:
        raise ValueError(f"features: expected {weight.shape[1]} columns, got shape {tuple(features.shape)}")
    _validate.same_device(("features", features), ("weight", weight), ("labels", labels))
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(f"labels: expected values in [0, {K})")
    angle = _validate.real(angle_degrees, "angle_degrees")
    if not 0.0 < angle <= 180.0:
        raise ValueError(f"angle_degrees: expected a value in (0, 180], got {angle}")
    chunk = _validate.integer(chunk, "chunk", minimum=1)
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    Wn = normalize_rows_named(weight, "weight").to(acc).view(K, k, -1)
    Hn = normalize_rows_named(features, "features").to(acc)
    N = Hn.shape[0]
    cos = torch.empty((N, k), dtype=acc, device=Hn.device)  # each sample against its own class's k
    for s in range(0, N, chunk):
        cos[s : s + chunk] = torch.einsum("nd,nkd->nk", Hn[s : s + chunk], Wn[labels[s : s + chunk]])
    counts = torch.zeros(K * k, dtype=torch.int64, device=Hn.device)
    counts.index_add_(0, labels * k + cos.argmax(1), torch.ones(N, dtype=torch.int64, device=Hn.device))
    dominant = counts.view(K, k).argmax(1)
    c_dom = cos.gather(1, dominant[labels].unsqueeze(1)).squeeze(1)
    drop = c_dom < torch.cos(torch.deg2rad(torch.tensor(angle, dtype=torch.float64))).item()
    return dominant, drop
