"""Neural collapse across a model's layers: one data pass fills one streaming
:class:`GNCAccumulator` per layer (:func:`collect`), a second measures the NCC accuracy
of every layer and the NC4 agreement where a classifier reads the layer, and the NC
suite follows per layer (:func:`layer_metrics`).

Forward hooks on the chosen submodules (names from ``model.named_modules()``) receive
each layer's output during the ordinary forward pass; the output is reduced to a
(B, d) feature matrix (``reduce``) and streamed into that layer's accumulator at once,
so no activation is kept beyond the hook. Memory: O(L·(K·d + d²)) for L layers (the
accumulators), never B × K or K × K.

``reduce`` for a (B, C, *spatial) output: ``"flatten"`` (d = C·∏spatial, the NC
toolkit's layer-wise convention, ``x.flatten(1)``) or ``"avgpool"`` (d = C, the mean
over the spatial positions: global average pooling). A (B, d) output is taken as it
is by both; a (B,) output is one feature.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import _progress, _validate
from .accumulator import GNCAccumulator
from .compute import GNC2Result
from .evaluate import split_batch
from .nc import NCMetrics, check_nc_options, nc_metrics

__all__ = ["collect", "layer_metrics", "REDUCTIONS"]

REDUCTIONS = ("flatten", "avgpool")
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ----------------------------------------------------------------------------- checks
def _resolve_layers(model, layers) -> Tuple[List[str], List[torch.nn.Module]]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, (bytes, bytearray)):
        raise TypeError(f"layers: expected a layer name, a module or a sequence of them, got {type(layers).__name__}")
    if len(layers) == 0:
        raise ValueError("layers: expected at least one layer")
    by_name = dict(model.named_modules())
    by_module = {id(m): n for n, m in by_name.items()}
    names, modules = [], []
    for item in layers:
        if isinstance(item, str):
            if item not in by_name:
                near = [n for n in by_name if n and (item in n or n in item)][:5]
                hint = f" (similar: {', '.join(map(repr, near))})" if near else ""
                raise ValueError(f"layers: {item!r} is not a module of the model (names from "
                                 f"model.named_modules()){hint}")
            name = item
        elif isinstance(item, torch.nn.Module):
            if id(item) not in by_module:
                raise ValueError(f"layers: the module {type(item).__name__} is not a submodule of the model")
            name = by_module[id(item)]
        else:
            raise TypeError(f"layers: expected layer names (str) or modules, got {type(item).__name__}")
        if name in names:
            raise ValueError(f"layers: {name!r} is listed twice")
        names.append(name)
        modules.append(by_name[name])
    return names, modules


def _check_loader(loader) -> None:
    if isinstance(loader, (str, bytes, dict)) or not (hasattr(type(loader), "__iter__")
                                                      or hasattr(type(loader), "__getitem__")):
        raise TypeError(f"loader: expected an iterable of (inputs, labels) batches, got {type(loader).__name__}")


def _labels_of(y, num_classes: int) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"labels: expected a torch.Tensor in every batch, got {type(y).__name__}")
    if y.dtype not in _INT_DTYPES:
        raise TypeError(f"labels: expected an integer tensor, got {str(y.dtype).replace('torch.', '')}")
    if y.dim() != 1:
        raise ValueError(f"labels: expected a 1-D tensor per batch, got shape {tuple(y.shape)}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels: value {lo if lo < 0 else hi} is outside [0, num_classes={num_classes})")
    return y


def _model_device(model: torch.nn.Module) -> Optional[torch.device]:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _reduced(name: str, out, reduce: str, batch: int) -> Tensor:
    """A layer's output as a (B, d) feature matrix, or ValueError naming the layer."""
    if not isinstance(out, Tensor):
        raise ValueError(f"layers: {name!r} returned a {type(out).__name__}, not a tensor (hook a submodule "
                         "whose output is one tensor)")
    if not out.is_floating_point():
        raise ValueError(f"layers: {name!r} returned a {str(out.dtype).replace('torch.', '')} tensor; expected "
                         "floating-point features")
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(f"layers: {name!r} returned shape {tuple(out.shape)}, whose first dimension is not the "
                         f"batch size {batch} (the number of labels)")
    if out.dim() == 1:
        return out[:, None]
    if out.dim() > 2 and reduce == "avgpool":
        return out.mean(dim=tuple(range(2, out.dim())))
    return out.reshape(batch, -1)


class _Labels:
    """One batch's labels, copied to each accumulator device once."""

    def __init__(self):
        self.src: Optional[Tensor] = None
        self.on: Dict[torch.device, Tensor] = {}

    def set(self, y: Tensor) -> None:
        self.src, self.on = y, {}

    def to(self, device: torch.device) -> Tensor:
        y = self.on.get(device)
        if y is None:
            y = self.on[device] = self.src.to(device)
        return y


class _LayerPass:
    """Forward hooks on the layers for the duration of a ``with`` block: the model in
    eval mode (every module's own mode restored on exit), each layer's reduced output
    handed to ``sink(name, features)`` as it is produced, every hook removed on exit
    (also on error). ``run(x, n)`` runs one forward pass and checks that every layer ran
    exactly once."""

    def __init__(self, model, names, modules, reduce: str, sink: Callable[[str, Tensor], None]):
        self.model, self.names, self.modules, self.reduce, self.sink = model, names, modules, reduce, sink
        self.handles: list = []
        self.modes: list = []
        self.seen: set = set()
        self.batch = 0
        self.device = _model_device(model)

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if name in self.seen:
                raise ValueError(f"layers: {name!r} ran more than once in one forward pass (a shared module); "
                                 "hook a module that runs once per pass")
            self.seen.add(name)
            self.sink(name, _reduced(name, output, self.reduce, self.batch))
        return hook

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        try:
            for name, mod in zip(self.names, self.modules):
                self.handles.append(mod.register_forward_hook(self._hook(name)))
            self.model.eval()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        for m, mode in self.modes:
            m.training = mode
        return False

    def run(self, x, batch: int) -> None:
        self.seen = set()
        self.batch = batch
        if isinstance(x, Tensor) and self.device is not None and x.device != self.device:
            x = x.to(self.device)
        self.model(x)
        missing = [n for n in self.names if n not in self.seen]
        if missing:
            raise ValueError(f"layers: {missing[0]!r} did not run in the model's forward pass")


def _iterate(loader, progress, desc: str):
    total = None
    try:
        total = len(loader)
    except TypeError:
        pass
    bar = _progress.bar(progress, total, desc)
    try:
        for item in loader:
            yield item
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


# ----------------------------------------------------------------------------- collect
@torch.no_grad()
def collect(model: torch.nn.Module, loader: Any, layers: Union[str, torch.nn.Module, Sequence[Any]], *,
            num_classes: int, reduce: str = "flatten", normalize: bool = True, device: Optional[Any] = None,
            sync: bool = False, progress: Optional[bool] = None) -> Dict[str, GNCAccumulator]:
    """One data pass filling one :class:`GNCAccumulator` per layer of ``model``.

    Args:
        model: a ``torch.nn.Module``; it runs in eval mode (``torch.no_grad``) during the
            pass, and every module's train/eval mode is restored afterwards.
        loader: an iterable of ``(inputs, labels)`` batches (or dicts with input/label
            keys, as :func:`gnc_ext.metrics.evaluate` takes), e.g. a DataLoader. Tensor
            inputs are moved to the device of the model's first parameter; ``model(inputs)``
            is called.
        layers: layer names from ``model.named_modules()`` (or the modules themselves),
            one name or a sequence. Each must run exactly once per forward pass and
            return one floating-point tensor whose first dimension is the batch.
        num_classes: K; labels must lie in [0, K).
        reduce: "flatten" (default; d = C·H·W for a convolutional map) or "avgpool"
            (d = C, the mean over the spatial positions) for outputs with more than two
            dimensions (see the module docstring).
        normalize: passed to :class:`GNCAccumulator` (L2-normalise each feature row
            first; default True; False for the NC toolkit's raw-feature numbers).
        device: where the accumulators live; None: the device of each layer's output
            (the layers must then produce their outputs on one device), else outputs
            are moved there.
        sync: call :meth:`GNCAccumulator.sync` on every accumulator after the pass, in
            the order of ``layers`` (under ``torch.distributed``: each rank passes its
            own data, every rank ends with the statistics of all).
        progress: a bar per batch (None: only on a terminal; see ``gnc_ext._progress``).

    Returns:
        ``{layer name: GNCAccumulator}`` in the order of ``layers``; feed them to
        :func:`layer_metrics` (or :func:`gnc_ext.metrics.nc_metrics` one by one).

    Raises:
        TypeError/ValueError naming ``model``, ``layers`` (an unknown name, a module
        outside the model, a layer whose output is not a tensor, is not floating point,
        has no batch dimension, changes its width between batches, runs twice or not at
        all, or lives on another device than the other layers), ``reduce``,
        ``num_classes``, ``labels``, ``loader`` or ``device``; RuntimeError when the
        loader yields no samples. On any error the accumulators are discarded: nothing
        half-accumulated is returned, the hooks are removed and the modes restored.

    Cost: one forward pass per batch plus, per layer, one accumulator update
    (O(B·d) native work and a rank-B update of a d × d fp64 scatter).
    """
    names, modules = _resolve_layers(model, layers)
    reduce = _validate.choice(reduce, "reduce", REDUCTIONS)
    num_classes = _validate.integer(num_classes, "num_classes", minimum=1)
    normalize = _validate.boolean(normalize, "normalize")
    sync = _validate.boolean(sync, "sync")
    _progress.enabled(progress)
    if device is not None:
        device = _validate.device(device, "device")
    _check_loader(loader)
    accs: Dict[str, GNCAccumulator] = {}
    labels = _Labels()
    first_dev: List[Tuple[str, torch.device]] = []

    def sink(name: str, h: Tensor) -> None:
        acc = accs.get(name)
        if acc is None:
            if device is None:
                if first_dev and h.device != first_dev[0][1]:
                    raise ValueError(f"layers: {name!r} produces its output on {h.device} but "
                                     f"{first_dev[0][0]!r} on {first_dev[0][1]}; pass device= to gather the "
                                     "accumulators on one device")
                if h.device.type not in ("cpu", "cuda"):
                    raise ValueError(f"layers: {name!r} produces its output on {h.device}; the accumulators live "
                                     "on a cpu or cuda device (pass device=)")
                first_dev.append((name, h.device))
            acc = GNCAccumulator(num_classes, h.shape[1], normalize=normalize,
                                 device=device if device is not None else h.device)
            accs[name] = acc
        elif h.shape[1] != acc.dim:
            raise ValueError(f"layers: {name!r} changed its output shape between batches: {acc.dim} features "
                             f"per sample before, now {h.shape[1]} (reduced from the output's shape); nothing "
                             "was kept")
        if h.device != acc.device:
            if device is None:
                raise ValueError(f"layers: {name!r} produced its output on {h.device}, earlier on {acc.device}")
            h = h.to(acc.device)
        acc.update(h, labels.to(acc.device))

    with _LayerPass(model, names, modules, reduce, sink) as lp, \
            contextlib.closing(_iterate(loader, progress, "collect (layer statistics)")) as items:
        for item in items:
            x, y = split_batch(item)
            labels.set(_labels_of(y, num_classes))
            lp.run(x, labels.src.shape[0])
    if not accs or next(iter(accs.values())).num_samples == 0:
        raise RuntimeError("loader: yielded no " + ("batches" if not accs else "samples"))
    out = {n: accs[n] for n in names}
    if sync:
        for acc in out.values():
            acc.sync()
    return out


# ----------------------------------------------------------------------------- the suite
def _classifier_of(name: str, c) -> Tuple[Tensor, Optional[Tensor]]:
    key = f"classifiers[{name!r}]"
    if isinstance(c, torch.nn.Linear):
        return c.weight.detach(), None if c.bias is None else c.bias.detach()
    if isinstance(c, Tensor):
        return c.detach(), None
    if isinstance(c, (tuple, list)) and len(c) == 2 and isinstance(c[0], Tensor) and (
            c[1] is None or isinstance(c[1], Tensor)):
        return c[0].detach(), None if c[1] is None else c[1].detach()
    raise TypeError(f"{key}: expected an nn.Linear, a (K, d) tensor W or a (W, bias) pair, got {type(c).__name__}")


@torch.no_grad()
def layer_metrics(accumulators: Mapping[str, GNCAccumulator], *, classifiers: Optional[Mapping[str, Any]] = None,
                  model: Optional[torch.nn.Module] = None, loader: Any = None, reduce: str = "flatten",
                  ood_means: Optional[Mapping[str, Tensor]] = None, kernel: str = "log", cdnv_exponent: float = 1.0,
                  gnc2: Any = "auto", sync: bool = False, progress: Optional[bool] = None) -> Dict[str, NCMetrics]:
    """The NC suite per layer from :func:`collect`'s accumulators, with the NCC accuracy
    of every layer and NC4 where a classifier reads the layer (one more data pass).

    Args:
        accumulators: ``{layer name: GNCAccumulator}`` (what :func:`collect` returns).
        classifiers: optional ``{layer name: classifier}`` for the layers a linear
            classifier reads (usually the penultimate one): an ``nn.Linear``, a (K, d)
            tensor W, or a ``(W, bias)`` pair. Those layers get the W-based fields (NC2 on
            W, NC3, GNC2 by ``gnc2``) and, with a data pass, NC4.
        model, loader: optional, together: a second pass over ``loader`` through the
            same layers measures every layer's ``ncc_accuracy`` and, where a classifier
            is given, ``nc4_agreement``. ``reduce`` must be the one :func:`collect` used.
        ood_means: optional ``{layer name: (d,) OoD global mean}`` for NC5 (computed like
            the accumulated features; see :func:`gnc_ext.metrics.nc_metrics`).
        kernel, cdnv_exponent, gnc2: passed to :func:`gnc_ext.metrics.nc_metrics`.
        sync: all-reduce the pass's NCC/NC4 counts over ``torch.distributed`` (no-op
            when not initialised), so every rank reports the accuracy over all ranks'
            samples; the accumulators must already be synced (``collect(sync=True)``).
        progress: a bar per batch of the data pass (None: only on a terminal).

    Returns:
        ``{layer name: NCMetrics}`` in the order of ``accumulators``.

    Raises:
        TypeError/ValueError naming the argument (``accumulators``, ``classifiers[...]``,
        ``ood_means[...]``, ``model``, ``loader``, ``layers``, ``reduce``, ...); on
        error nothing is returned, the hooks are removed and the model's modes restored.
    """
    if not isinstance(accumulators, Mapping) or not accumulators:
        raise TypeError("accumulators: expected a non-empty {layer name: GNCAccumulator} mapping (collect's result)")
    for name, acc in accumulators.items():
        if not isinstance(name, str) or not isinstance(acc, GNCAccumulator):
            raise TypeError(f"accumulators: expected str keys and GNCAccumulator values, got {name!r}: "
                            f"{type(acc).__name__}")
    K = next(iter(accumulators.values())).num_classes
    if any(acc.num_classes != K for acc in accumulators.values()):
        raise ValueError("accumulators: expected one num_classes for every layer (collect's result)")
    classifiers = dict(classifiers or {})
    ood_means = dict(ood_means or {})
    for what, mapping in (("classifiers", classifiers), ("ood_means", ood_means)):
        for key in mapping:
            if key not in accumulators:
                raise ValueError(f"{what}: {key!r} is not one of the layers ({', '.join(map(repr, accumulators))})")
    clf = {n: _classifier_of(n, c) for n, c in classifiers.items()}
    kernel, cdnv_exponent = check_nc_options(kernel, cdnv_exponent)
    reduce = _validate.choice(reduce, "reduce", REDUCTIONS)
    sync = _validate.boolean(sync, "sync")
    _progress.enabled(progress)
    if (model is None) != (loader is None):
        raise ValueError("loader: model and loader go together (the NCC/NC4 data pass needs both)")
    if isinstance(gnc2, GNC2Result) and len(clf) != 1:
        raise ValueError("gnc2: a GNC2Result applies to one classifier; give one classifier or gnc2='auto'")
    for n, (W, b) in clf.items():
        acc = accumulators[n]
        if not (W.dim() == 2 and W.shape[0] == acc.num_classes and W.shape[1] == acc.dim):
            raise ValueError(f"classifiers[{n!r}]: expected a ({acc.num_classes}, {acc.dim}) weight (num_classes, "
                             f"the layer's width), got shape {tuple(W.shape)}")

    counts: Dict[str, List[int]] = {n: [0, 0, 0] for n in accumulators}  # correct, agree, seen
    if model is not None:
        names, modules = _resolve_layers(model, list(accumulators))
        _check_loader(loader)
        labels = _Labels()

        def sink(name: str, h: Tensor) -> None:
            acc = accumulators[name]
            if h.shape[1] != acc.dim:
                raise ValueError(f"layers: {name!r} gives {h.shape[1]} features per sample, its accumulator has "
                                 f"dim={acc.dim} (use the reduce= that collect used)")
            h = h.to(acc.device)
            y = labels.to(acc.device)
            pred = acc.ncc_predict(h)
            c = counts[name]
            c[0] += int((pred == y).sum())
            if name in clf:
                W, b = clf[name]
                c[1] += int((acc.linear_predict(h, W.to(acc.device), None if b is None else b.to(acc.device))
                             == pred).sum())
            c[2] += h.shape[0]

        with _LayerPass(model, names, modules, reduce, sink) as lp, \
                contextlib.closing(_iterate(loader, progress, "layer_metrics (NCC pass)")) as items:
            for item in items:
                x, y = split_batch(item)
                labels.set(_labels_of(y, K))
                lp.run(x, labels.src.shape[0])
        if sync:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dev = next(iter(accumulators.values())).device
                t = torch.tensor([v for n in accumulators for v in counts[n]], dtype=torch.int64, device=dev)
                dist.all_reduce(t)
                flat = t.cpu().tolist()
                for i, n in enumerate(accumulators):
                    counts[n] = flat[3 * i:3 * i + 3]
        if any(c[2] == 0 for c in counts.values()):
            raise ValueError("loader: yielded no samples for the NCC pass")

    out: Dict[str, NCMetrics] = {}
    for name, acc in accumulators.items():
        W, b = clf.get(name, (None, None))
        r = nc_metrics(acc, None if W is None else W.to(acc.device), ood_mean=ood_means.get(name), kernel=kernel,
                       cdnv_exponent=cdnv_exponent, gnc2=gnc2 if W is not None else "auto")
        correct, agree, seen = counts[name]
        if seen:
            r.ncc_accuracy, r.ncc_samples = correct / seen, seen
            if W is not None:
                r.nc4_agreement, r.nc4_samples = agree / seen, seen
        out[name] = r
    return out
