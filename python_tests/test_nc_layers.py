"""gnc_ext.metrics.collect / layer_metrics: one data pass through a model fills one
accumulator per layer; checked against accumulators filled by hand from the same
layers' outputs computed explicitly (the model run piece by piece, no hooks), and
against brute-force NCC / NC4 counts."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from conftest import package_subprocess_env
from gnc_ext.metrics import GNCAccumulator, collect, layer_metrics, nc_metrics

K = 6


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),   # "1": (B, 4, 8, 8)
        nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(),            # "4": (B, 8, 4, 4)
        nn.Flatten(), nn.Linear(8 * 16, 12), nn.ReLU(),                 # "7": (B, 12)
        nn.Linear(12, K),
    ).double()


def make_loader(n_batches=5, bs=17, seed=1, hw=8):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        y = torch.randint(0, K, (bs,), generator=g)
        x = torch.randn(bs, 1, hw, hw, generator=g, dtype=torch.float64) + y[:, None, None, None] * 0.3
        out.append((x, y))
    return out


def by_hand(model, loader, layers, reduce, normalize, device="cpu"):
    """The same accumulators filled from explicitly computed layer outputs."""
    model.eval()
    accs = {}
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            h = x
            for i, mod in enumerate(model):
                h = mod(h)
                name = str(i)
                if name in layers:
                    f = h.mean(dim=(2, 3)) if (reduce == "avgpool" and h.dim() == 4) else h.reshape(h.shape[0], -1)
                    if name not in accs:
                        accs[name] = GNCAccumulator(K, f.shape[1], normalize=normalize, device=device)
                    accs[name].update(f, y)
    return accs


@pytest.mark.parametrize("reduce,normalize", [("flatten", True), ("avgpool", False)])
def test_collect_equals_accumulators_filled_by_hand(device, reduce, normalize):
    """The loader's batches stay on the CPU; collect moves them to the model's device and
    keeps each accumulator on the device of its layer's output."""
    model, loader = small_cnn().to(device), make_loader()
    layers = ["1", "4", "7"]
    got = collect(model, loader, layers, num_classes=K, reduce=reduce, normalize=normalize, progress=False)
    ref = by_hand(model, loader, layers, reduce, normalize, device)
    assert all(a.device.type == torch.device(device).type for a in got.values())
    assert list(got) == layers
    widths = {"flatten": {"1": 256, "4": 128, "7": 12}, "avgpool": {"1": 4, "4": 8, "7": 12}}[reduce]
    for name in layers:
        a, b = got[name], ref[name]
        assert a.dim == widths[name] and a.normalize == normalize and a.num_samples == 85
        for ta, tb in zip(a.class_statistics(), b.class_statistics()):
            torch.testing.assert_close(ta, tb, rtol=1e-12, atol=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ma, mb = nc_metrics(a).to_dict(), nc_metrics(b).to_dict()
        for k, v in mb.items():
            if isinstance(v, float):
                assert ma[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (name, k)
        assert ma["normalized"] is normalize


def test_layers_as_modules_and_modes_and_hooks_restored():
    model = small_cnn()
    model.train()
    model[1].eval()  # a mixed-mode model: each module's own mode must come back
    before = {n: m.training for n, m in model.named_modules()}
    running = model[1].running_mean.clone()
    accs = collect(model, make_loader(), [model[4], "7"], num_classes=K, progress=False)
    assert list(accs) == ["4", "7"]
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert torch.equal(model[1].running_mean, running)  # ran in eval mode: BatchNorm statistics untouched


def test_layer_metrics_ncc_nc4_and_suite_match_by_hand():
    model, loader = small_cnn(), make_loader()
    accs = collect(model, loader, ["4", "7"], num_classes=K, reduce="avgpool", progress=False)
    ood = {"7": torch.randn(12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)}
    got = layer_metrics(accs, classifiers={"7": model[8]}, model=model, loader=loader, reduce="avgpool",
                        ood_means=ood, progress=False)
    ref = by_hand(model, loader, ["4", "7"], "avgpool", True)
    W, b = model[8].weight.detach(), model[8].bias.detach()
    feats = {"4": [], "7": []}
    ys = []
    with torch.no_grad():
        for x, y in loader:
            h = x
            for i, mod in enumerate(model):
                h = mod(h)
                if str(i) in feats:
                    feats[str(i)].append(h.mean(dim=(2, 3)) if h.dim() == 4 else h)
            ys.append(y)
    y = torch.cat(ys)
    for name in ("4", "7"):
        H = torch.cat(feats[name])
        # NCC by brute force: nearest class mean of the normalised features
        Hn = H / H.norm(dim=1, keepdim=True).clamp_min(1e-12)
        M = ref[name].class_statistics()[1]
        ncc = torch.cdist(Hn, M).argmin(1)
        assert got[name].ncc_accuracy == pytest.approx(float((ncc == y).double().mean()), abs=1e-15)
        assert got[name].ncc_samples == y.numel()
        if name == "7":
            lin = (H @ W.T + b).argmax(1)
            assert got[name].nc4_agreement == pytest.approx(float((lin == ncc).double().mean()), abs=1e-15)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = nc_metrics(ref[name], W, ood_mean=ood[name])
            for k, v in r.to_dict().items():
                if isinstance(v, float) and k not in ("nc4_agreement", "ncc_accuracy"):
                    assert got[name].to_dict()[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
            assert got[name].gnc2_rho is not None and got[name].gnc2_rho_max_upper is not None
        else:
            assert got[name].nc4_agreement is None and got[name].w_equinorm is None


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(self.shared(x))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 3, batch_first=True)
        self.head = nn.Linear(3, K)

    def forward(self, x):
        out, _ = self.rnn(x[:, None, :])
        return self.head(out[:, -1])


class OnMeta(nn.Module):
    def forward(self, x):
        return x.to("meta")


class TwoDevices(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = OnMeta()

    def forward(self, x):
        out = self.a(x)
        self.b(x)
        return out


class IntOut(nn.Module):
    def forward(self, x):
        return (x > 0).long()


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) if x.shape[0] > 3 else self.b(x)


def _vec_loader(n=3, bs=8, d=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(bs, d, generator=g), torch.randint(0, K, (bs,), generator=g)) for _ in range(n)]


def test_bad_input_names_the_layer_and_leaves_nothing_behind():
    model = small_cnn()
    cases = [
        (dict(layers=["nope"]), ValueError, "layers: 'nope'"),
        (dict(layers=[nn.Linear(2, 2)]), ValueError, "not a submodule"),
        (dict(layers=[]), ValueError, "layers"),
        (dict(layers=["1", "1"]), ValueError, "listed twice"),
        (dict(layers=[3]), TypeError, "layers"),
        (dict(layers=["1"], reduce="max"), ValueError, "reduce"),
        (dict(layers=["1"], num_classes=0), ValueError, "num_classes"),
        (dict(layers=["1"], num_classes=2), ValueError, "labels"),
    ]
    for kw, exc, msg in cases:
        args = dict(num_classes=K, progress=False)
        args.update(kw)
        with pytest.raises(exc, match=msg):
            collect(model, make_loader(2), **args)
    with pytest.raises(TypeError, match="model"):
        collect(lambda x: x, make_loader(2), ["1"], num_classes=K)
    with pytest.raises(TypeError, match="loader"):
        collect(model, 3, ["1"], num_classes=K)
    with pytest.raises(RuntimeError, match="no batches"):
        collect(model, [], ["1"], num_classes=K)
    # a model whose output shape changes between batches (8x8 images, then 6x6): a clear
    # error; the hooks are gone, the modes restored, nothing is returned
    model.train()
    mixed = make_loader(2) + [(torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="'1' changed its output shape between batches"):
        collect(model, mixed, ["1"], num_classes=K)
    assert model.training and all(len(m._forward_hooks) == 0 for m in model.modules())
    # outputs that are not one floating tensor, shared modules, layers that did not run, two devices
    for mdl, layer, msg in [(TupleOut(), "rnn", "'rnn' returned a tuple, not a tensor"),
                            (IntOut(), "", "'' returned a int64 tensor"),
                            (Twice(), "shared", "'shared' ran more than once"),
                            (Skip(), "b", "'b' did not run"),
                            (TwoDevices(), ["a", "b"], "'b' produces its output on meta but 'a' on cpu")]:
        with pytest.raises(ValueError, match=msg):
            collect(mdl, _vec_loader(), layer, num_classes=K)
        assert all(len(m._forward_hooks) == 0 for m in mdl.modules())
    with pytest.raises(ValueError, match="layers: 'b' produces its output on meta"):
        collect(TwoDevices(), _vec_loader(), "b", num_classes=K)


def test_layer_metrics_bad_input():
    model, loader = small_cnn(), make_loader(2)
    accs = collect(model, loader, ["4", "7"], num_classes=K, progress=False)
    with pytest.raises(ValueError, match="classifiers: 'x'"):
        layer_metrics(accs, classifiers={"x": model[8]})
    with pytest.raises(ValueError, match=r"classifiers\['4'\]"):
        layer_metrics(accs, classifiers={"4": model[8]})
    with pytest.raises(TypeError, match=r"classifiers\['7'\]"):
        layer_metrics(accs, classifiers={"7": "fc"})
    with pytest.raises(ValueError, match="loader"):
        layer_metrics(accs, model=model)
    with pytest.raises(ValueError, match="'4' gives 8 features per sample"):
        layer_metrics(accs, model=model, loader=loader, reduce="avgpool")
    with pytest.raises(TypeError, match="accumulators"):
        layer_metrics({})


_DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    from test_nc_layers import small_cnn, make_loader, K
    from gnc_ext.metrics import collect, layer_metrics
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model, loader = small_cnn(), make_loader(5)
    mine = loader[rank::world]                       # rank 0: batches 0, 2, 4; rank 1: 1, 3
    accs = collect(model, mine, ["4", "7"], num_classes=K, reduce="avgpool", sync=True, progress=False)
    res = layer_metrics(accs, classifiers={"7": model[8]}, model=model, loader=mine, reduce="avgpool", sync=True,
                        gnc2=False, progress=False)
    if rank == 0:
        torch.save({n: r.to_dict() for n, r in res.items()}, sys.argv[5])
    dist.destroy_process_group()
""")


def test_collect_ddp_sync_equals_one_process(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = package_subprocess_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "ddp.pt"
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_SCRIPT, str(r), "2", str(port), here, str(out)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
    got = torch.load(out)
    model, loader = small_cnn(), make_loader(5)
    accs = collect(model, loader, ["4", "7"], num_classes=K, reduce="avgpool", progress=False)
    ref = layer_metrics(accs, classifiers={"7": model[8]}, model=model, loader=loader, reduce="avgpool", gnc2=False,
                        progress=False)
    for name, r in ref.items():
        for k, v in r.to_dict().items():
            if isinstance(v, float):
                assert got[name][k] == pytest.approx(v, rel=1e-10, abs=1e-12), (name, k)
            else:
                assert got[name][k] == v, (name, k)


def test_digits_example_runs_and_writes_history_and_plots(tmp_path):
    """examples/nc_layers_digits.py (its docstring's command at 2 epochs): the history
    JSON loads with every layer and epoch, and both plots are written."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from gnc_ext.metrics import NCHistory

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "examples", "nc_layers_digits.py"), "--epochs", "2",
                           "--out", "out"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=package_subprocess_env(OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    h = NCHistory.load(tmp_path / "out" / "nc_history.json")
    assert h.layers == ["block1", "block2", "hidden", "penultimate"] and h.epochs == [1, 2]
    last = h.records[-1]["layers"]
    assert last["penultimate"]["nc2_etf_floor"] == pytest.approx(math.sqrt(2 - 2 * math.sqrt(4 / 9)))
    assert last["penultimate"]["gnc2_rho"] is not None and last["block1"]["gnc2_rho"] is None
    assert all(0.0 <= last[n]["ncc_accuracy"] <= 1.0 for n in h.layers)
    assert "block1          16" in proc.stdout  # average-pooled: d = 16 channels
    for name in ("nc_over_epochs.png", "nc_across_layers.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
