"""gnc_ext.metrics.NCHistory: JSON round trip, series, validation, plots that refuse
unknown fields and fields without values; plot_gnc_curves' refusal of NC-suite keys."""
from __future__ import annotations

import json
import math

import pytest
import torch

from gnc_ext.metrics import GNCAccumulator, NCHistory, nc_metrics


def _suite(seed, K=8, d=5, with_w=True):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, d, generator=g, dtype=torch.float64)
    y = torch.arange(K).repeat(4)
    H = mu[y] + (0.5 / (seed + 1)) * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    acc = GNCAccumulator(K, d).update(H, y)
    return nc_metrics(acc, mu if with_w else None, ood_mean=torch.ones(d, dtype=torch.float64))


def _history():
    h = NCHistory()
    for e in range(4):
        h.append(e, {"block1": _suite(e, with_w=False), "penultimate": _suite(10 + e)}, train_acc=0.5 + 0.1 * e,
                 loss=None if e == 0 else 1.0 / e)
    return h


def test_round_trip_through_json(tmp_path):
    h = _history()
    p = tmp_path / "h.json"
    h.save(p)
    text = p.read_text()
    def no_constants(c):
        raise AssertionError(f"non-strict JSON constant {c}")

    json.loads(text, parse_constant=no_constants)  # strict JSON: no NaN/Infinity
    back = NCHistory.load(p)
    assert back.to_dict() == h.to_dict()
    assert back.epochs == [0, 1, 2, 3] and back.layers == ["block1", "penultimate"]
    assert back.scalars == ["train_acc", "loss"]
    ep, v = back.series("nc1_pinv", "penultimate")
    assert ep == [0, 1, 2, 3] and v == [_suite(10 + e).nc1_pinv for e in range(4)]
    assert math.isnan(back.series("loss")[1][0]) and back.series("loss")[1][1] == 1.0
    rec = back.records[2]["layers"]["penultimate"]
    assert rec == _suite(12).to_dict() and rec["normalized"] is True and rec["gnc2_rho"] is not None
    # a non-finite value is stored as null
    m = _suite(1)
    m.nc1_cdnv = math.inf
    h2 = NCHistory().append(0, {"x": m})
    h2.save(p)
    assert NCHistory.load(p).records[0]["layers"]["x"]["nc1_cdnv"] is None


def test_append_and_load_validate():
    h = _history()
    with pytest.raises(ValueError, match="epoch"):
        h.append(3, {"block1": _suite(0)})  # not after the last epoch
    with pytest.raises(TypeError, match="epoch"):
        h.append(math.nan, {"block1": _suite(0)})
    with pytest.raises(TypeError, match="metrics"):
        h.append(9, _suite(0))
    with pytest.raises(TypeError, match="metrics"):
        h.append(9, {"block1": 3.0})
    with pytest.raises(ValueError, match="nc1_pinv"):
        h.append(9, {"block1": _suite(0)}, nc1_pinv=1.0)
    with pytest.raises(TypeError, match="train_acc"):
        h.append(9, {"block1": _suite(0)}, train_acc="high")
    with pytest.raises(ValueError, match="metrics"):
        NCHistory().append(0, {})
    assert len(h) == 4  # unchanged by the failures
    with pytest.raises(ValueError, match="layer"):
        h.series("nc1_pinv")  # two layers: name one
    with pytest.raises(ValueError, match="fields: unknown field 'nc9'"):
        h.series("nc9", "block1")
    with pytest.raises(ValueError, match="not an NCHistory"):
        NCHistory.from_dict({"records": []})
    bad = h.to_dict()
    bad["records"][1]["epoch"] = -1
    with pytest.raises(ValueError, match="record 1"):
        NCHistory.from_dict(bad)


def test_plot_draws_both_views_and_refuses_unknown_or_empty_fields(tmp_path):
    pytest.importorskip("matplotlib")
    h = _history()
    p = tmp_path / "epochs.png"
    fig = h.plot(["nc1_pinv", "nc2_etf_error", "gnc2_rho", "train_acc"], p)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["nc1_pinv", "nc2_etf_error", "gnc2_rho", "train_acc"]
    assert len(panels[0].get_lines()) == 2  # one curve per layer
    # gnc2_rho: the classifier's layer only, plus the bound(s) on max rho as reference lines
    assert len(panels[2].get_lines()) >= 2
    p2 = tmp_path / "layers.png"
    h.plot("nc1_pinv", p2, view="layers", epochs=[0, 3])
    assert p2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown field 'nc1_pinvv'"):
        h.plot(["nc1_pinv", "nc1_pinvv"])
    with pytest.raises(ValueError, match="'nc4_agreement' has no finite value"):
        h.plot("nc4_agreement")  # never measured: refused, not an empty panel
    with pytest.raises(ValueError, match="'w_equinorm' has no finite value"):
        h.plot("w_equinorm", layers=["block1"])
    with pytest.raises(ValueError, match="scalar"):
        h.plot("train_acc", view="layers")
    with pytest.raises(ValueError, match="view"):
        h.plot("nc1_pinv", view="grid")
    with pytest.raises(ValueError, match="layers"):
        h.plot("nc1_pinv", layers=["fc"])
    with pytest.raises(ValueError, match="epochs"):
        h.plot("nc1_pinv", view="layers", epochs=[7])


def test_plot_gnc_curves_refuses_nc_fields_and_empty_histories(tmp_path):
    pytest.importorskip("matplotlib")
    from gnc_ext import plot

    nc_hist = [{"nc1_pinv": 1.0 / (e + 1), "nc2_etf_error": 0.5} for e in range(3)]
    with pytest.raises(ValueError, match="history: entry 0 has key 'nc1_pinv'.*NCHistory.plot"):
        plot.plot_gnc_curves(nc_hist)
    with pytest.raises(ValueError, match=r"histories\['a'\]"):
        plot.plot_gnc_curves([], histories={"a": nc_hist})
    with pytest.raises(ValueError, match="no values"):
        plot.plot_gnc_curves([{"gnc1": None}])
    with pytest.raises(TypeError, match="entry 0"):
        plot.plot_gnc_curves([3.0])
    fig = plot.plot_gnc_curves([{"gnc1": 0.5, "loss": 1.0}, {"gnc1": 0.2, "loss": 0.5}], path=str(tmp_path / "g.png"))
    assert [ax.get_title() for ax in fig.axes] == ["GNC1 (within-class variability)"]  # only panels with data
    with pytest.raises(ValueError, match="fields"):
        plot.plot_nc_history(_history(), "bogus")
    with pytest.raises(TypeError, match="history"):
        plot.plot_nc_history(nc_hist, "nc1_pinv")
