"""Mixed precision on the CPU: one training step of the face-recognition head (ArcFace,
s = 64, m = 0.5, InsightFace's straight-through convention; forward + backward w.r.t.
the features and the fp32 master weights) inside ``torch.autocast("cpu", bfloat16)``
against the same step in float32, and against InsightFace's head written in plain torch
(arcface_torch's PartialFC_V2 + CombinedMarginLoss: normalize and linear under autocast,
the logits cast to float32, clamp, margin, ×s, cross-entropy) under the same autocast.

    python benchmarks/bench_autocast.py

Under autocast the features arrive in bf16 (a backbone's output there); gnc_ext runs its
cosine GEMMs on bf16 operands (fp32 accumulation) and the softmax/margin in fp32/fp64,
and returns the weight gradient in float32.
"""
import torch
import torch.nn.functional as F

import gnc_ext  # noqa: E402
from harness import Case, main  # noqa: E402

S, M = 64.0, 0.5


def _setup(B, d, K):
    def setup(device):
        torch.manual_seed(0)
        W = torch.randn(K, d, device=device)
        y = torch.randint(0, K, (B,), device=device)
        H = 0.5 * W[y] + torch.randn(B, d, device=device)
        return H, W, y
    return setup


def _gnc(amp: bool):
    def run(inp):
        H, W, y = inp
        h = (H.bfloat16() if amp else H).detach().requires_grad_(True)
        w = W.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = gnc_ext.spherical_cross_entropy(h, w, y, tau=1 / S, margin=M, margin_type="arcface",
                                                   margin_grad="straight_through", ignore_index=-1)
        loss.backward()
        return h.grad, w.grad
    return run


def _insightface(amp: bool):
    def run(inp):
        H, W, y = inp
        h = (H.bfloat16() if amp else H).detach().requires_grad_(True)
        w = W.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = F.linear(F.normalize(h), F.normalize(w))
        logits = logits.float().clamp(-1, 1)
        idx = torch.arange(y.shape[0])
        with torch.no_grad():  # ArcFace: cos(θ + m) at the target, gradient as if unchanged
            target = logits[idx, y]
            delta = torch.cos(torch.arccos(target) + M) - target
        logits = logits.index_put((idx, y), target + delta)
        F.cross_entropy(logits * S, y, ignore_index=-1).backward()
        return h.grad, w.grad
    return run


CASES = [Case(f"ArcFace step B={B}, d={d}, K={K}", _setup(B, d, K),
              {"gnc_ext fp32": _gnc(False), "gnc_ext autocast bf16": _gnc(True),
               "InsightFace head fp32": _insightface(False), "InsightFace head autocast bf16": _insightface(True)},
              baseline="gnc_ext fp32", devices=("cpu",), warmup=1, repeats=5)
         for B, d, K in [(128, 256, 50_000)]]

if __name__ == "__main__":
    main(CASES, "autocast bf16 vs fp32 vs InsightFace's head, one step (fwd+bwd), CPU")
