"""NCHistory: the NC suite per layer over training, saved as JSON and plotted the way NC
papers plot it (curves over epochs, one per layer, as the GNC paper's Fig. 2 / Fig. B.3;
or values across layers, one curve per epoch, as the NC toolkit's layer-wise example).

A record per epoch: ``{layer name: {NCMetrics field: value}}`` (``NCMetrics.to_dict()``)
plus epoch-level scalars (accuracies, loss, ...). The JSON file is strict JSON (a value
that is not finite is stored as null and read back as None).
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .nc import NCMetrics

__all__ = ["NCHistory"]

_FORMAT = "gnc_ext.NCHistory"
_VERSION = 1
_VIEWS = ("epochs", "layers")
# reference lines drawn with a field: (field holding the reference value, label)
_REFERENCES = {
    "nc2_etf_error": (("nc2_etf_floor", "ETF floor (K > d + 1)"),),
    "nc3_duality_error": (("nc2_etf_floor", "ETF floor (K > d + 1)"),),
    "gnc2_rho": (("gnc2_rho_max_upper", "max ρ (upper bound)"), ("gnc2_rho_max_lower", "max ρ (lower bound)")),
}


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _plain(v, what: str):
    """A JSON-ready scalar: float/int/str/bool or None (non-finite numbers become None)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        v = float(v)
        return v if math.isfinite(v) else None
    raise TypeError(f"{what}: expected a number, str, bool or None, got {type(v).__name__}")


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("NCHistory.plot needs matplotlib: pip install 'gnc_ext[plot]' (or pip install "
                          "matplotlib)") from exc
    return plt


class NCHistory:
    """The NC suite per layer, per epoch, with epoch-level scalars.

    Methods: :meth:`append`, :meth:`series`, :meth:`save`, :meth:`load`,
    :meth:`to_dict`, :meth:`from_dict`, :meth:`plot`; properties :attr:`epochs`,
    :attr:`layers`, :attr:`fields`, :attr:`scalars`.

    Example::

        hist = NCHistory()
        for epoch in range(epochs):
            train_one_epoch(model)
            accs = gnc_ext.metrics.collect(model, loader, ["block3", "fc_in"], num_classes=K)
            nc = gnc_ext.metrics.layer_metrics(accs, classifiers={"fc_in": model.fc}, model=model,
                                               loader=loader)
            hist.append(epoch, nc, test_acc=evaluate_accuracy(model))
        hist.save("nc_history.json")
        hist.plot(["nc1_pinv", "nc2_etf_error", "test_acc"], "nc_curves.png")
    """

    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []

    # -- building ------------------------------------------------------------------------
    def append(self, epoch: Union[int, float], metrics: Mapping[str, Union[NCMetrics, Mapping[str, Any]]],
               **scalars: Any) -> "NCHistory":
        """Add one epoch: ``metrics`` is ``{layer name: NCMetrics}`` (what
        :func:`gnc_ext.metrics.layer_metrics` returns; a dict of field values is taken
        too), ``scalars`` are epoch-level numbers (``train_acc=0.93``, ``loss=0.2``; None
        for not measured).

        Raises:
            TypeError/ValueError naming ``epoch`` (not a finite number, or not larger
            than the last epoch), ``metrics`` (not a mapping of str to NCMetrics/dict, or
            empty without scalars) or the scalar (not a number, or a name that is also a
            per-layer field). The history is unchanged on error.
        """
        if not _is_number(epoch) or not math.isfinite(float(epoch)):
            raise TypeError(f"epoch: expected a finite number, got {epoch!r}")
        epoch = int(epoch) if isinstance(epoch, numbers.Integral) else float(epoch)
        if self.records and not epoch > self.records[-1]["epoch"]:
            raise ValueError(f"epoch: expected a value larger than the last epoch {self.records[-1]['epoch']}, "
                             f"got {epoch}")
        if isinstance(metrics, NCMetrics) or not isinstance(metrics, Mapping):
            raise TypeError(f"metrics: expected a {{layer name: NCMetrics}} mapping, got {type(metrics).__name__}")
        if not metrics and not scalars:
            raise ValueError("metrics: no layers and no scalars to record")
        layers: Dict[str, Dict[str, Any]] = {}
        for name, m in metrics.items():
            if not isinstance(name, str):
                raise TypeError(f"metrics: layer names must be str, got {type(name).__name__}")
            if isinstance(m, NCMetrics):
                layers[name] = m.to_dict()
            elif isinstance(m, Mapping):
                layers[name] = {str(k): _plain(v, f"metrics[{name!r}][{k!r}]") for k, v in m.items()}
            else:
                raise TypeError(f"metrics[{name!r}]: expected NCMetrics or a dict of its fields, got "
                                f"{type(m).__name__}")
        new_fields = {k for fields in layers.values() for k in fields}
        clash = sorted(new_fields & set(self.scalars))
        if clash:
            raise ValueError(f"metrics: field {clash[0]!r} is already an epoch-level scalar of this history")
        layer_fields = new_fields | self._layer_fields()
        plain = {}
        for key, v in scalars.items():
            if key in layer_fields:
                raise ValueError(f"{key}: is a per-layer NC field; pass epoch-level scalars under other names")
            if v is not None and not _is_number(v):
                raise TypeError(f"{key}: expected a number or None, got {type(v).__name__}")
            plain[key] = _plain(v, key)
        self.records.append({"epoch": epoch, "layers": layers, "scalars": plain})
        return self

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"NCHistory(epochs={len(self.records)}, layers={self.layers}, scalars={self.scalars})"

    @property
    def epochs(self) -> List[Union[int, float]]:
        return [r["epoch"] for r in self.records]

    @property
    def layers(self) -> List[str]:
        """Layer names in the order they first appear."""
        seen: Dict[str, None] = {}
        for r in self.records:
            for name in r["layers"]:
                seen.setdefault(name, None)
        return list(seen)

    @property
    def scalars(self) -> List[str]:
        seen: Dict[str, None] = {}
        for r in self.records:
            for name in r["scalars"]:
                seen.setdefault(name, None)
        return list(seen)

    def _layer_fields(self) -> set:
        return {k for r in self.records for fields in r["layers"].values() for k in fields}

    @property
    def fields(self) -> List[str]:
        """Every plottable name: the numeric per-layer fields and the scalars, sorted."""
        numeric = {k for r in self.records for fields in r["layers"].values() for k, v in fields.items()
                   if v is None or _is_number(v)}
        numeric |= {k for r in self.records for k in r["scalars"]}
        return sorted(numeric)

    def series(self, field: str, layer: Optional[str] = None) -> Tuple[List[Union[int, float]], List[float]]:
        """``(epochs, values)`` of one field (a per-layer field of ``layer``, or a scalar);
        NaN where that epoch did not record it.

        Raises:
            ValueError naming ``field`` (unknown) or ``layer`` (unknown, or missing for a
            per-layer field when the history has several layers).
        """
        self._check_field(field)
        if field in self.scalars:
            vals = [r["scalars"].get(field) for r in self.records]
        else:
            if layer is None:
                if len(self.layers) != 1:
                    raise ValueError(f"layer: {field!r} is a per-layer field; name one of {self.layers}")
                layer = self.layers[0]
            if layer not in self.layers:
                raise ValueError(f"layer: {layer!r} is not in this history (layers: {self.layers})")
            vals = [r["layers"].get(layer, {}).get(field) for r in self.records]
        return self.epochs, [math.nan if v is None else float(v) for v in vals]

    def _check_field(self, field) -> None:
        if not isinstance(field, str):
            raise TypeError(f"fields: expected field names (str), got {type(field).__name__}")
        if field not in self.fields:
            raise ValueError(f"fields: unknown field {field!r}; this history has: {', '.join(self.fields)}")

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready form: ``{"format", "version", "records": [{"epoch", "layers",
        "scalars"}, ...]}``."""
        return {"format": _FORMAT, "version": _VERSION,
                "records": [{"epoch": r["epoch"], "layers": {n: dict(f) for n, f in r["layers"].items()},
                             "scalars": dict(r["scalars"])} for r in self.records]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "data") -> "NCHistory":
        """The inverse of :meth:`to_dict`; ValueError naming ``name`` on a malformed dict."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"{name}: not an NCHistory (expected format {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ValueError(f"{name}: unsupported NCHistory version {data.get('version')!r}")
        records = data.get("records")
        if not isinstance(records, list):
            raise ValueError(f"{name}: 'records' must be a list")
        hist = cls()
        for i, r in enumerate(records):
            if not (isinstance(r, Mapping) and set(r) == {"epoch", "layers", "scalars"}
                    and isinstance(r["layers"], Mapping) and isinstance(r["scalars"], Mapping)
                    and all(isinstance(f, Mapping) for f in r["layers"].values())):
                raise ValueError(f"{name}: record {i} must have 'epoch', 'layers' (dict of dicts) and 'scalars' "
                                 "(dict)")
            try:
                hist.append(r["epoch"], r["layers"], **r["scalars"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: record {i}: {exc}") from None
        return hist

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the history as strict JSON (written to a temporary file and renamed,
        so an interrupted save leaves the previous file intact)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, allow_nan=False, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "NCHistory":
        """Read a history written by :meth:`save`; ValueError naming ``path`` on a file
        that is not one."""
        p = os.fspath(path)
        with open(p) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"path: {p} is not JSON ({exc})") from None
        return cls.from_dict(data, name=f"path ({p})")

    # -- plots ---------------------------------------------------------------------------
    def plot(self, fields: Union[str, Sequence[str]], path: Optional[Union[str, os.PathLike]] = None, *,
             view: str = "epochs", layers: Optional[Sequence[str]] = None,
             epochs: Optional[Sequence[Union[int, float]]] = None, logy: Optional[bool] = None, title: str = ""):
        """One panel per field; returns the matplotlib Figure (saved as PNG with ``path``).

        Args:
            fields: names from :attr:`fields` (NCMetrics fields or scalars).
            view: "epochs" (default): x = epoch, one curve per layer (scalars: one curve);
                the ETF floor is drawn under ``nc2_etf_error`` / ``nc3_duality_error``
                where it is above 0, and the bounds on max ρ with ``gnc2_rho``.
                "layers": x = layer (in order), one curve per epoch (per-layer fields
                only), the NC toolkit's layer-wise view.
            layers: the layers to draw (default: all, in order).
            epochs: for ``view="layers"``, the epochs to draw (default: up to 6, evenly
                spaced, the last included).
            logy: log y axis; None: per panel, when every value is positive and they
                span more than a factor of 50.
            title: the figure's title.

        Raises:
            ValueError/TypeError naming ``fields`` (unknown, or with no finite value to
            draw for the chosen layers/epochs: refused rather than drawn as an empty
            panel), ``view``, ``layers`` or ``epochs``.
        """
        if isinstance(fields, str):
            fields = [fields]
        if not isinstance(fields, Sequence) or len(fields) == 0:
            raise ValueError("fields: expected one field name or a non-empty sequence of them")
        for f in fields:
            self._check_field(f)
        if view not in _VIEWS:
            raise ValueError(f"view: expected one of {', '.join(map(repr, _VIEWS))}, got {view!r}")
        if logy is not None and not isinstance(logy, bool):
            raise TypeError(f"logy: expected None or a bool, got {type(logy).__name__}")
        all_layers = self.layers
        if layers is None:
            layers = all_layers
        else:
            if isinstance(layers, str):
                layers = [layers]
            for n in layers:
                if n not in all_layers:
                    raise ValueError(f"layers: {n!r} is not in this history (layers: {all_layers})")
            layers = list(layers)
        scalars = set(self.scalars)
        # the curves of every panel first, so nothing is drawn before all fields are known to have data
        panels = []
        if view == "epochs":
            for f in fields:
                if f in scalars:
                    curves = [(f, *self.series(f))]
                else:
                    curves = [(n, *self.series(f, n)) for n in layers]
                refs = []  # (label, value, index of the layer's curve): dashed in its colour
                for ref_field, label in _REFERENCES.get(f, ()):
                    if ref_field in self.fields and f not in scalars:
                        for i, n in enumerate(layers):
                            v = [x for x in self.series(ref_field, n)[1] if math.isfinite(x)]
                            if v and v[-1] > 0 and not any(r[2] == i and r[1] == v[-1] for r in refs):
                                refs.append((f"{label}" + (f", {n}" if len(layers) > 1 else ""), v[-1], i))
                panels.append((f, curves, refs))
        else:
            sel = self._pick_epochs(epochs)
            for f in fields:
                if f in scalars:
                    raise ValueError(f"fields: {f!r} is an epoch-level scalar; view='layers' draws per-layer "
                                     "fields")
                curves = []
                for e in sel:
                    rec = next(r for r in self.records if r["epoch"] == e)
                    vals = [rec["layers"].get(n, {}).get(f) for n in layers]
                    curves.append((f"epoch {e}", list(range(len(layers))), [math.nan if v is None else float(v)
                                                                           for v in vals]))
                panels.append((f, curves, []))
        for f, curves, _ in panels:
            if not any(math.isfinite(v) for _, _, ys in curves for v in ys):
                raise ValueError(f"fields: {f!r} has no finite value to draw in this history (for layers "
                                 f"{layers}); it was not measured (e.g. W-based fields without a classifier)")
        plt = _plt()
        import matplotlib.cm as cm

        n = len(panels)
        cols = min(n, 3)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
        for ax, (f, curves, refs) in zip(axes.flat, panels):
            colors = cm.viridis([i / max(len(curves) - 1, 1) for i in range(len(curves))])
            finite = [v for _, _, ys in curves for v in ys if math.isfinite(v)]
            for (label, xs, ys), c in zip(curves, colors):
                if not any(math.isfinite(v) for v in ys):
                    continue  # a layer without this field (e.g. W-based fields off the classifier's layer)
                ax.plot(xs, ys, "-o" if len(xs) < 30 else "-", ms=3, color=c, label=label)
            for label, v, i in refs:
                ax.axhline(v, color=colors[i], lw=1.0, ls="--", label=label)
            use_log = logy if logy is not None else (min(finite) > 0 and max(finite) > 50 * min(finite))
            if use_log:
                ax.set_yscale("log")
            ax.set_title(f, fontsize=10)
            if view == "epochs":
                ax.set_xlabel("epoch")
            else:
                ax.set_xticks(range(len(layers)))
                ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=8)
                ax.set_xlabel("layer")
            if len(curves) > 1 or refs:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=130, bbox_inches="tight")
        return fig

    def _pick_epochs(self, epochs) -> List[Union[int, float]]:
        have = self.epochs
        if not have:
            raise ValueError("epochs: the history is empty")
        if epochs is None:
            if len(have) <= 6:
                return have
            idx = sorted({round(i * (len(have) - 1) / 5) for i in range(6)})
            return [have[i] for i in idx]
        if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Sequence) or not epochs:
            raise ValueError("epochs: expected a non-empty sequence of recorded epochs")
        for e in epochs:
            if e not in have:
                raise ValueError(f"epochs: {e!r} was not recorded (epochs: {have})")
        return list(epochs)
