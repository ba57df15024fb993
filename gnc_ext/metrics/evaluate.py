"""Two-pass evaluation of a model: class statistics (GNC1/2/3, the NC suite), then NCC
accuracy and NC4 agreement."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate
from .accumulator import _INT_DTYPES, GNCAccumulator, GNCResult, _check_gnc2, _check_W
from .nc import check_nc_options, check_ood_mean, nc_metrics

__all__ = ["evaluate", "split_batch"]


def _batches_of(features: Tensor, labels: Tensor, batch_size: int):
    for s in range(0, features.shape[0], batch_size):
        yield features[s:s + batch_size], labels[s:s + batch_size]


def split_batch(item) -> Tuple[Any, Tensor]:
    """``(inputs, labels)`` of one loader batch: an (inputs, labels, ...) tuple/list or a
    dict with an input key (input/inputs/x/image/images) and a label key
    (label/labels/y/target/targets); ValueError naming ``loader`` otherwise."""
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
             gnc2: Any = "auto", worst: int = 10, nc: bool = False, bias: Optional[Tensor] = None,
             ood_mean: Optional[Tensor] = None, kernel: str = "log", cdnv_exponent: float = 1.0) -> GNCResult:
    """Measure GNC on a model: pass 1 accumulates class statistics, pass 2 measures NCC.

    Args:
        feature_fn: maps a batch's inputs to (B, d) features (run under ``torch.no_grad``),
            e.g. the model's penultimate layer. ``None`` with precomputed features.
        loader: a re-iterable of ``(inputs, labels)`` batches (or dicts with input/label
            keys): it is iterated twice, so a list or a DataLoader, not a generator or
            another one-shot iterator (refused up front; a second pass that yields no
            batch is an error too). Or a precomputed ``(features, labels)`` pair: a
            (N, d) float tensor and a (N,) integer tensor, streamed in ``batch_size``
            rows.
        W: optional (K, d) classifier for GNC2/GNC3 (a tensor); also gives K.
        progress: bool; show a tqdm progress bar per pass.
        num_classes: K. Required for a loader unless W is given; inferred from
            precomputed labels (max + 1, at most the number of samples: pass
            ``num_classes`` for more).
        normalize, device: passed to :class:`GNCAccumulator` (device defaults to the
            device of the first feature batch).
        batch_size: rows per step for precomputed tensors.
        centered, gnc2, worst: passed to :meth:`GNCAccumulator.compute`.
        nc: bool; also measure the neural-collapse suite (:func:`gnc_ext.metrics.nc_metrics`,
            after pass 1) and, with W, the NC4 agreement of the linear classifier
            ``argmax_k(⟨w_k, h⟩ + bias_k)`` with the NCC during pass 2; the result's ``nc``
            (its ``ncc_accuracy`` is the result's, its ``gnc2_*`` fields the result's
            ``gnc2``, not solved twice).
        bias: optional (K,) classifier bias for NC4 (needs ``nc=True`` and W).
        ood_mean, kernel, cdnv_exponent: passed to :func:`gnc_ext.metrics.nc_metrics`
            (only with ``nc=True``).

    Every argument is checked before the first pass; batches are checked as they come
    (labels in both passes).

    Returns:
        :class:`GNCResult` with ``ncc_accuracy`` and ``ncc_samples`` filled in, and with
        ``nc=True`` its ``nc`` (:class:`NCMetrics`, ``nc4_agreement`` measured on the
        same samples as the NCC accuracy when W is given).

    Raises:
        ValueError/TypeError naming the argument (``loader``, ``feature_fn``,
        ``num_classes``, ``W``, ``features``, ``labels``, ...), e.g. ValueError naming
        ``loader`` for a one-shot iterator or a second pass without samples;
        RuntimeError when the loader yields no samples at all.
    """
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    progress = _validate.boolean(progress, "progress")
    normalize = _validate.boolean(normalize, "normalize")
    centered = _validate.boolean(centered, "centered")
    _check_gnc2(gnc2)
    worst = _validate.integer(worst, "worst", minimum=0)
    if device is not None:
        device = _validate.device(device, "device")
    if W is not None:
        _check_W(W, None, None)
    nc = _validate.boolean(nc, "nc")
    if not nc and (bias is not None or ood_mean is not None or kernel != "log" or cdnv_exponent != 1.0):
        raise ValueError("nc: bias, ood_mean, kernel and cdnv_exponent are NC-suite options; pass nc=True")
    if nc:
        kernel, cdnv_exponent = check_nc_options(kernel, cdnv_exponent)
        if ood_mean is not None:
            check_ood_mean(ood_mean, None)
        if bias is not None and W is None:
            raise ValueError("bias: given without W (it is the classifier's bias, used by nc4_agreement)")
    if num_classes is not None:
        num_classes = _validate.integer(num_classes, "num_classes", minimum=1)
    precomputed = isinstance(loader, (tuple, list)) and len(loader) == 2 and isinstance(loader[0], torch.Tensor)
    if precomputed:
        feats, labs = loader
        _validate.tensor(feats, "features", ndim=2)
        if feature_fn is not None:
            raise ValueError("feature_fn: must be None when loader is a precomputed (features, labels) pair")
        if not isinstance(labs, torch.Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labs).__name__}")
        if labs.dtype not in _INT_DTYPES:
            raise TypeError(f"labels: expected an integer tensor, got {str(labs.dtype).replace('torch.', '')}")
        if labs.dim() != 1 or labs.shape[0] != feats.shape[0]:
            raise ValueError(f"labels: expected a 1-D tensor of length {feats.shape[0]}, got shape "
                             f"{tuple(labs.shape)}")
        lo, hi = int(labs.min()), int(labs.max())
        if lo < 0:
            raise ValueError(f"labels: value {lo} is negative")
        if num_classes is None and W is not None:
            num_classes = W.shape[0]
        if num_classes is None:
            if hi >= feats.shape[0]:
                raise ValueError(f"labels: the largest label {hi} would make num_classes {hi + 1}, more than "
                                 f"the {feats.shape[0]} samples; pass num_classes explicitly")
            num_classes = hi + 1
        elif hi >= num_classes:
            raise ValueError(f"labels: value {hi} is outside [0, num_classes={num_classes})")
        total = (feats.shape[0] + batch_size - 1) // batch_size

        def batches():
            return _batches_of(feats, labs, batch_size)
    else:
        if isinstance(loader, Iterator):
            raise ValueError(f"loader: a one-shot iterator ({type(loader).__name__}) cannot be iterated twice; "
                             "pass a re-iterable such as a list or a DataLoader")
        if not (hasattr(type(loader), "__iter__") or hasattr(type(loader), "__getitem__")) or isinstance(
                loader, (str, bytes, dict)):
            raise TypeError(f"loader: expected an iterable of (inputs, labels) batches or a (features, labels) "
                            f"pair of tensors, got {type(loader).__name__}")
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
                x, y = split_batch(item)
                with torch.no_grad():
                    h = feature_fn(x)
                if not isinstance(h, torch.Tensor):
                    raise TypeError(f"feature_fn: expected it to return a torch.Tensor, got {type(h).__name__}")
                if h.dim() != 2:
                    raise ValueError(f"feature_fn: expected it to return a 2-D (B, d) tensor, got shape "
                                     f"{tuple(h.shape)}")
                yield h, y
    if W is not None and W.shape[0] != num_classes:
        raise ValueError(f"W: expected {num_classes} rows (num_classes), got shape {tuple(W.shape)}")
    if bias is not None:
        _validate.tensor(bias, "bias", ndim=1)
        if bias.shape[0] != num_classes:
            raise ValueError(f"bias: expected shape ({num_classes},) (num_classes), got {tuple(bias.shape)}")

    def bar(it, desc):
        if not progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False)

    acc: Optional[GNCAccumulator] = None
    for h, y in bar(batches(), "GNC pass 1/2 (class statistics)"):
        if acc is None:
            if h.shape[1] < 1:
                raise ValueError(f"feature_fn: expected it to return features of width >= 1, got shape "
                                 f"{tuple(h.shape)}")
            acc = GNCAccumulator(num_classes, h.shape[1], normalize=normalize,
                                 device=device if device is not None else h.device)
        if isinstance(y, torch.Tensor) and y.device != acc.device:
            y = y.to(acc.device)
        if h.device != acc.device:
            h = h.to(acc.device)
        acc.update(h, y)
    if acc is None or acc.num_samples == 0:
        raise RuntimeError("loader: yielded no " + ("batches" if acc is None else "samples"))
    result = acc.compute(W, centered=centered, gnc2=gnc2, worst=worst)  # checks W's width
    if nc:
        result.nc = nc_metrics(acc, W, ood_mean=ood_mean, kernel=kernel, cdnv_exponent=cdnv_exponent,
                               gnc2=False if result.gnc2 is None else result.gnc2)
    agree_pass = nc and W is not None
    correct = agree = seen = 0
    for h, y in bar(batches(), "GNC pass 2/2 (nearest class centre)"):
        if isinstance(y, torch.Tensor) and y.device != acc.device:
            y = y.to(acc.device)
        if h.device != acc.device:
            h = h.to(acc.device)
        h, y = acc.check_labelled_batch(h, y)  # the labels (range too) like update
        pred = acc.ncc_predict(h)
        correct += int((pred == y).sum())
        if agree_pass:
            agree += int((acc.linear_predict(h, W, bias) == pred).sum())
        seen += h.shape[0]
    if seen == 0:
        raise ValueError("loader: yielded no samples on the second pass (it must be re-iterable: a list or a "
                         "DataLoader, not a generator or iterator)")
    result.ncc_accuracy = correct / seen
    result.ncc_samples = seen
    if nc:
        result.nc.ncc_accuracy, result.nc.ncc_samples = result.ncc_accuracy, seen
    if agree_pass:
        result.nc.nc4_agreement = agree / seen
        result.nc.nc4_samples = seen
    return result
