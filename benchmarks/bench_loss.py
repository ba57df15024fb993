"""Fused spherical cross-entropy / HardMax vs the eager PyTorch recipe, torch.compile of
that recipe, torch.nn.functional.linear_cross_entropy (where present) and, on GPU,
Cut Cross-Entropy and Liger's fused linear CE where importable. One training step
(forward + backward w.r.t. H and W) per call.

    python benchmarks/bench_loss.py [--device cpu|cuda] [--only TEXT] [--out DIR]

"gnc_ext" is the default strategy ("auto"); "gnc_ext stored" / "gnc_ext recompute" force
gnc_ext.config.sce_strategy ("stored bf16": the store in bfloat16 for float32 inputs,
config.sce_stored_dtype). On GPU also, for float32, "gnc_ext tf32" (the fast TF32 mode,
gnc_ext.config.cuda_fp32_mode = "tf32") and, for HardMax, "gnc_ext TF32-screened"
(gnc_ext.config.hardmax_screen = "on").

The eager recipe: F.normalize(H), F.normalize(W), matmul, / tau, F.cross_entropy.
Peers without fused normalisation (linear_cross_entropy, CCE, Liger) get the
normalisation done by torch before them, as a user would. CPU memory is the growth of
max RSS in a fresh process (the harness); GPU memory is peak allocated above inputs.
"""
import importlib.util

import torch
import torch.nn.functional as F

import gnc_ext  # noqa: E402
from harness import Case, main  # noqa: E402

TAU = 0.05


def _setup(B, d, K, dtype):
    def setup(device):
        torch.manual_seed(0)
        H = torch.randn(B, d, device=device, dtype=dtype)
        W = torch.randn(K, d, device=device, dtype=dtype)
        y = torch.randint(0, K, (B,), device=device)
        return H, W, y
    return setup


def _step(loss_fn):
    def run(inp):
        H, W, y = inp
        h = H.detach().requires_grad_(True)
        w = W.detach().requires_grad_(True)
        loss_fn(h, w, y).backward()
        return h.grad, w.grad
    return run


def eager_sce(h, w, y):
    return F.cross_entropy(F.normalize(h, dim=1) @ F.normalize(w, dim=1).T / TAU, y)


def eager_hardmax(h, w, y):
    S = F.normalize(h, dim=1) @ F.normalize(w, dim=1).T
    tgt = S.gather(1, y[:, None])
    masked = S.scatter(1, y[:, None], float("-inf"))
    return (masked.max(dim=1).values - tgt[:, 0]).max()


def gnc_sce(h, w, y):
    return gnc_ext.spherical_cross_entropy(h, w, y, tau=TAU)


def gnc_hardmax(h, w, y):
    return gnc_ext.hardmax_loss(h, w, y, reduction="max")


def _step_config(loss_fn, **settings):
    """gnc_ext with ``gnc_ext.config`` settings held for the whole step (the backward
    runs inside .backward(), so the settings must outlive the forward)."""
    def run(inp):
        with gnc_ext.config.override(**settings):
            return _step(loss_fn)(inp)
    return run


_compiled = {}


def compiled(fn):
    def run(h, w, y):
        if fn not in _compiled:
            _compiled[fn] = torch.compile(fn)
        return _compiled[fn](h, w, y)
    return run


def linear_ce(h, w, y):
    return F.linear_cross_entropy(F.normalize(h, dim=1) / TAU, F.normalize(w, dim=1), y)


def _peers_gpu():
    peers = {}
    notes = []
    if importlib.util.find_spec("cut_cross_entropy") is not None:
        from cut_cross_entropy import linear_cross_entropy as cce

        peers["Cut Cross-Entropy"] = lambda h, w, y: cce(F.normalize(h, dim=1) / TAU, F.normalize(w, dim=1), y)
    else:
        notes.append("Cut Cross-Entropy not importable")
    if importlib.util.find_spec("liger_kernel") is not None:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        lf = LigerFusedLinearCrossEntropyLoss()
        peers["Liger FLCE"] = lambda h, w, y: lf(F.normalize(w, dim=1), F.normalize(h, dim=1) / TAU, y)
    else:
        notes.append("Liger not importable")
    return peers, "; ".join(notes)


def _sce_impls(device_peers):
    impls = {"torch eager": _step(eager_sce), "torch.compile": _step(compiled(eager_sce)),
             "gnc_ext": _step(gnc_sce),
             "gnc_ext stored": _step_config(gnc_sce, sce_strategy="stored"),
             "gnc_ext stored bf16": _step_config(gnc_sce, sce_strategy="stored", sce_stored_dtype="bfloat16"),
             "gnc_ext recompute": _step_config(gnc_sce, sce_strategy="recompute")}
    if hasattr(F, "linear_cross_entropy"):
        impls["F.linear_cross_entropy"] = _step(linear_ce)
    for k, f in device_peers.items():
        impls[k] = _step(f)
    return impls


def _sce_impls_gpu(device_peers, fp32=False):
    impls = _sce_impls(device_peers)
    if fp32:  # the fast fp32 GEMM mode (opt-in)
        impls["gnc_ext tf32"] = _step_config(gnc_sce, cuda_fp32_mode="tf32")
    return impls


CASES = []
for B, d, K in [(256, 512, 100_000), (64, 128, 1_000_000)]:
    CASES.append(Case(f"CE B={B}, d={d}, K={K}, float32", _setup(B, d, K, torch.float32), _sce_impls({}),
                      baseline="torch eager", devices=("cpu",), warmup=1, repeats=3))

if torch.cuda.is_available():  # GPU cases (the harness skips them on --device cpu)
    peers, note = _peers_gpu()
    for B, d, K, dt in [(512, 512, 1_000_000, torch.bfloat16), (512, 512, 1_000_000, torch.float32),
                        (8192, 2048, 131_072, torch.bfloat16), (512, 512, 100_000, torch.bfloat16),
                        (8192, 2048, 100_000, torch.bfloat16)]:
        CASES.append(Case(f"CE B={B}, d={d}, K={K}, {str(dt)[6:]}", _setup(B, d, K, dt),
                          _sce_impls_gpu(peers, fp32=dt == torch.float32),
                          baseline="torch eager", devices=("cuda",), notes=note))
    for dt in (torch.float32, torch.bfloat16):
        CASES.append(Case(f"HardMax B=512, d=512, K=1000000, {str(dt)[6:]}", _setup(512, 512, 1_000_000, dt),
                          {"torch eager": _step(eager_hardmax), "torch.compile": _step(compiled(eager_hardmax)),
                           "gnc_ext": _step(gnc_hardmax),
                           **({"gnc_ext TF32-screened": _step_config(gnc_hardmax, hardmax_screen="on")}
                              if dt == torch.float32 else {})},
                          baseline="torch eager", devices=("cuda",)))

if __name__ == "__main__":
    main(CASES, "spherical cross-entropy / HardMax, forward+backward")
