"""Up-front memory checks: every entry point that allocates in proportion to K, K·d, B·K
or d² raises gnc_ext.resources.InsufficientMemoryError (a MemoryError) for a size that
cannot fit, before allocating. Checked in a child process whose address space is capped
(RLIMIT_AS) at 1.5 GiB above what it uses after importing torch: an allocation attempted
first would fail with torch's own error instead (the last case shows that it does)."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import gnc_ext
from gnc_ext import resources
from conftest import package_subprocess_env

CHILD = textwrap.dedent(r"""
    import json, resource, sys
    import torch
    import gnc_ext
    from gnc_ext import resources
    from gnc_ext.metrics import GNCAccumulator, nc_metrics
    from gnc_ext.nn import SphericalCELoss, HardMaxLoss, CMFClassifier, ShardedSphericalCELoss
    from gnc_ext.solvers import tammes, softmax_code, train_ufm

    torch.set_num_threads(1)
    W_big = torch.nn.functional.normalize(torch.randn(400_000, 128), dim=1)  # 205 MB; the solve needs > 1.5 GB
    vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize:")][0].split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 1536 * 2**20, resource.RLIM_INFINITY))
    avail = resources.available_bytes("cpu")
    H = torch.randn(4, 8, requires_grad=True)
    y = torch.zeros(4, dtype=torch.int64)
    # a (10^9, 8) classifier that costs nothing to hold (a stride-0 view); its gradient would be 32 GB
    W_view = torch.ones(1, 8).expand(10**9, 8).detach().requires_grad_(True)
    gnc_ext.config.check_finite = False  # no scan of the 10^9 rows
    acc_d = GNCAccumulator(2, 7000)  # 392 MB of d x d state; the NC suite needs four such matrices more
    acc_d.update(torch.randn(4, 7000, dtype=torch.float64), torch.tensor([0, 0, 1, 1]))
    cases = {
        "one_vs_rest_distance": lambda: gnc_ext.one_vs_rest_distance(W_big),
        "SphericalCELoss": lambda: SphericalCELoss(10**15, 512),
        "HardMaxLoss": lambda: HardMaxLoss(10**9, 512),
        "CMFClassifier": lambda: CMFClassifier(10**9, 128),
        "ShardedSphericalCELoss": lambda: ShardedSphericalCELoss(10**12, 128),
        "tammes": lambda: tammes(3, 10**9, restarts=1, batch=1),
        "softmax_code": lambda: softmax_code(64, 10**8, restarts=1, batch=1),
        "train_ufm": lambda: train_ufm(512, 10**6, 10, steps=1),
        "GNCAccumulator": lambda: GNCAccumulator(10**9, 512),
        "GNCAccumulator_d2": lambda: GNCAccumulator(2, 20_000),
        "nc_metrics": lambda: nc_metrics(acc_d),
        "spherical_cross_entropy": lambda: gnc_ext.spherical_cross_entropy(H, W_view, y),
        "hardmax_loss": lambda: gnc_ext.hardmax_loss(H, W_view, y),
    }
    out = {"avail": avail}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = ["no error", ""]
        except BaseException as e:
            out[name] = [type(e).__name__, str(e)]
    # the same address-space cap without the check: torch's allocator fails instead
    try:
        torch.empty(2**31, dtype=torch.float32)
        out["plain_torch"] = ["no error", ""]
    except BaseException as e:
        out["plain_torch"] = [type(e).__name__, str(e)]
    print(json.dumps(out))
""")


def test_impossible_sizes_raise_before_allocating(tmp_path):
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, env=package_subprocess_env(OMP_NUM_THREADS="1"),
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["avail"] is not None and out["avail"] <= 1536 * 2**20, out
    avail = out.pop("avail")
    plain = out.pop("plain_torch")
    for name, (err, msg) in out.items():
        assert err == "InsufficientMemoryError", (name, err, msg)
        assert "needs at least" in msg and "only" in msg and "is available" in msg, msg
    assert "GiB" in out["one_vs_rest_distance"][1]  # 1.6 GiB needed, moderate: the cap is what refuses it
    assert len(out) == 13 and avail > 0
    assert plain[0] != "InsufficientMemoryError" and plain[0] != "no error", plain  # the allocator's own error, for contrast


def test_error_is_a_memory_error_naming_sizes():
    e = resources.InsufficientMemoryError("f(K=3)", 3 * 2**40, 2**30, torch.device("cpu"))
    assert isinstance(e, MemoryError)
    assert str(e).startswith("f(K=3) needs at least 3 TiB on cpu, but only 1 GiB is available")


def test_ensure_fits_passes_what_fits_and_refuses_what_does_not():
    avail = resources.available_bytes("cpu")
    if avail is None:  # pragma: no cover - not Linux
        pytest.skip("available memory unknown on this platform")
    resources.ensure_fits(1024, what="small", device="cpu")
    resources.ensure_fits(0, what="nothing")
    with pytest.raises(resources.InsufficientMemoryError, match=r"^big needs at least"):
        resources.ensure_fits(avail * 4 + 2**40, what="big", device="cpu")


def test_loss_gradient_check_uses_the_inputs():
    # a loss call whose inputs exist passes (the gradients of small inputs fit)
    H = torch.randn(4, 3, requires_grad=True)
    W = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    gnc_ext.spherical_cross_entropy(H, W, y).backward()
    assert W.grad is not None


def test_format_bytes():
    assert resources.format_bytes(512) == "512 B"
    assert resources.format_bytes(1536) == "1.5 KiB"
    assert resources.format_bytes(3 * 2**50) == "3 PiB"
