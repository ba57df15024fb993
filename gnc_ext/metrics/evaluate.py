"""Two-pass evaluation of a model: class statistics (GNC1/2/3), then NCC accuracy."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from .accumulator import GNCAccumulator, GNCResult, _check_W

__all__ = ["evaluate"]


def _batches_of(features: Tensor, labels: Tensor, batch_size: int):
    for s in range(0, features.shape[0], batch_size):
        yield features[s:s + batch_size], labels[s:s + batch_size]


def _split(item) -> Tuple[Any, Tensor]:
    if isinstance(item, dict):
        for xk in ("input", "inputs", "x", "image", "images"):
            if xk in item:
                for yk in ("label", "labels", "y", "target", "targets"):
                    if yk in item:
                        return item[xk], item[yk]
        raise ValueError("loader: dict batches need an input key (input/inputs/x/image/images) and a "
                         "label key (label/labels/y/target/targets)")
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(f"loader: each batch must be an (inputs, labels) pair, got {type(item).__name__}")
    return item[0], item[1]


def evaluate(feature_fn: Optional[Callable[[Any], Tensor]], loader: Any, W: Optional[Tensor] = None,
             progress: bool = True, *, num_classes: Optional[int] = None, normalize: bool = True,
             device: Optional[Any] = None, batch_size: int = 4096, centered: bool = False,
             gnc2: Any = "auto", worst: int = 10) -> GNCResult:
    """Measure GNC on a model: pass 1 accumulates class statistics, pass 2 measures NCC.

    Args:
        feature_fn: maps a batch's inputs to (B, d) features (run under ``torch.no_grad``),
            e.g. the model's penultimate layer. ``None`` with precomputed features.
        loader: an iterable of ``(inputs, labels)`` batches (or dicts with input/label
            keys) that can be iterated twice (a DataLoader is), or a precomputed
            ``(features, labels)`` pair of tensors, streamed in ``batch_size`` rows.
        W: optional (K, d) classifier for GNC2/GNC3; also gives K.
        progress: show a tqdm progress bar per pass.
        num_classes: K. Required for a loader unless W is given; inferred from the labels
            (max + 1) for precomputed tensors.
        normalize, device: passed to :class:`GNCAccumulator` (device defaults to the
            device of the first feature batch).
        batch_size: rows per step for precomputed tensors.
        centered, gnc2, worst: passed to :meth:`GNCAccumulator.compute`.

    Returns:
        :class:`GNCResult` with ``ncc_accuracy`` and ``ncc_samples`` filled in.

    Raises:
        ValueError/TypeError naming the argument (``loader``, ``num_classes``, ``W``,
        ``features``, ``labels``, ...); RuntimeError when the loader yields nothing.
    """
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    precomputed = isinstance(loader, (tuple, list)) and len(loader) == 2 and all(
        isinstance(t, torch.Tensor) for t in loader)
    if precomputed:
        feats, labs = loader
        _validate.tensor(feats, "features", ndim=2)
        if not isinstance(labs, torch.Tensor) or labs.dim() != 1 or labs.shape[0] != feats.shape[0]:
            raise ValueError(f"labels: expected a 1-D tensor of length {feats.shape[0]}")
        if feature_fn is not None:
            raise ValueError("feature_fn: must be None when loader is a precomputed (features, labels) pair")
        if num_classes is None:
            num_classes = W.shape[0] if W is not None else int(labs.max()) + 1
        total = (feats.shape[0] + batch_size - 1) // batch_size

        def batches():
            return _batches_of(feats, labs, batch_size)
    else:
        if feature_fn is None or not callable(feature_fn):
            raise TypeError("feature_fn: expected a callable mapping inputs to (B, d) features")
        if num_classes is None:
            if W is None:
                raise ValueError("num_classes: required for a loader when W is not given")
            num_classes = W.shape[0]
        try:
            total = len(loader)
        except TypeError:
            total = None

        def batches():
            for item in loader:
                x, y = _split(item)
                with torch.no_grad():
                    h = feature_fn(x)
                if not isinstance(h, torch.Tensor):
                    raise TypeError(f"feature_fn: expected it to return a torch.Tensor, got {type(h).__name__}")
                yield h, y
    num_classes = _validate.integer(num_classes, "num_classes", minimum=1)
    if W is not None:
        _validate.tensor(W, "W", ndim=2)
        if W.shape[0] != num_classes:
            raise ValueError(f"W: expected {num_classes} rows (num_classes), got shape {tuple(W.shape)}")

    def bar(it, desc):
        if not progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False)

    acc: Optional[GNCAccumulator] = None
    for h, y in bar(batches(), "GNC pass 1/2 (class statistics)"):
        if acc is None:
            acc = GNCAccumulator(num_classes, h.shape[1] if h.dim() == 2 else -1, normalize=normalize,
                                 device=device if device is not None else h.device)
        if isinstance(y, torch.Tensor) and y.device != acc.device:
            y = y.to(acc.device)
        if h.device != acc.device:
            h = h.to(acc.device)
        acc.update(h, y)
    if acc is None:
        raise RuntimeError("loader: yielded no batches")
    if W is not None:
        _check_W(W, acc.num_classes, acc.dim)
    result = acc.compute(W, centered=centered, gnc2=gnc2, worst=worst)
    correct = 0
    seen = 0
    for h, y in bar(batches(), "GNC pass 2/2 (nearest class centre)"):
        if isinstance(y, torch.Tensor) and y.device != acc.device:
            y = y.to(acc.device)
        if h.device != acc.device:
            h = h.to(acc.device)
        correct += acc._ncc_correct(h, y)
        seen += h.shape[0]
    result.ncc_accuracy = correct / seen if seen else float("nan")
    result.ncc_samples = seen
    return result
