"""Migrating an InsightFace (arcface_torch) training loop to gnc_ext: one line changes.

An InsightFace-style loop: a small residual backbone (conv stem, IR-style residual
blocks with BN/PReLU, BN-FC-BN embedding) on synthetic identities (each identity a
random 3×16×16 prototype image plus noise), SGD with momentum and weight decay, a
polynomial learning-rate decay. Two copies of the same model (same initial weights,
same batches) are trained side by side:

* "insightface": the classification head written here in plain torch as arcface_torch
  does it (``CombinedMarginLoss``: normalise, linear, clamp, ArcFace margin under
  ``no_grad`` or CosFace margin, ×s, cross-entropy over the full classifier);
* "gnc_ext": the same head swapped for ONE line,
  ``gnc_ext.nn.ShardedSphericalCELoss(K, d, tau=1/s, margin=m, margin_type="arcface",
  margin_grad="straight_through", ignore_index=-1)`` (the logits never exist as a
  B × K matrix; the classifier is sharded by class over the process group).

Both losses are printed side by side for the first steps: they agree to float32
rounding (the straight-through ArcFace convention is InsightFace's).

    python examples/insightface_migration.py                    # one process
    python examples/insightface_migration.py --world-size 2     # 2 processes, gloo
    python examples/insightface_migration.py --margin-type cosface --margin 0.4

With ``--world-size N`` each rank feeds its own batch; features are gathered for the
global batch (as PartialFC does), both heads compute the loss of the global batch,
and the backbone gradients are summed over the ranks (so both models see the exact
gradient of the global loss). Add ``--sample-rate 0.5`` for PartialFC-style class
sampling on the gnc_ext side (the InsightFace-style head here is the full softmax, so
the two columns then differ by the sampling approximation).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import gnc_ext


# ------------------------------------------------------------- backbone (IR style) --
class IRBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.PReLU(cout),
                                  nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return self.body(x) + self.down(x)


class SmallIResNet(nn.Module):
    def __init__(self, embedding_dim: int, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))
        self.blocks = nn.Sequential(IRBlock(width, width, 2), IRBlock(width, 2 * width, 2))
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width * 4 * 4, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)

    def forward(self, x):
        x = self.bn(self.blocks(self.stem(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


# ----------------------------------------------- the InsightFace-style head (before) --
class InsightFaceHead(nn.Module):
    """arcface_torch's CombinedMarginLoss(s, 1.0, m2, m3) + cross-entropy over a full
    classifier, on the global batch (features of the other ranks enter as constants)."""

    def __init__(self, W0: torch.Tensor, s: float, m2: float, m3: float):
        super().__init__()
        self.weight = nn.Parameter(W0.clone())
        self.s, self.m2, self.m3 = s, m2, m3

    def forward(self, emb, labels):
        logits = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1, 1)
        idx = torch.where(labels != -1)[0]
        target = logits[idx, labels[idx]]
        if self.m2 > 0:  # ArcFace: the margin is added under no_grad
            with torch.no_grad():
                theta = logits.arccos()
                theta[idx, labels[idx]] = target.arccos() + self.m2
                new = theta.cos()
            logits = logits + (new - logits).detach()
        elif self.m3 > 0:  # CosFace
            logits = logits.clone()
            logits[idx, labels[idx]] = target - self.m3
        return F.cross_entropy(logits * self.s, labels, ignore_index=-1)


def gather_global(x: torch.Tensor, world: int) -> torch.Tensor:
    """The global batch with this rank's rows differentiable, the others' constants."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def make_data(K: int, per_class: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(K, 3, 16, 16, generator=g)
    y = torch.arange(K).repeat_interleave(per_class)
    X = protos[y] + noise * torch.randn(y.numel(), 3, 16, 16, generator=g)
    return X, y


def train(rank: int, world: int, args, init_file: str | None) -> None:
    if world > 1:
        # with a timeout: a rank that misses a collective fails the others instead of hanging them
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=args.timeout))
    torch.manual_seed(args.seed)
    X, y = make_data(args.classes, args.per_class, args.noise, args.seed)
    s = 1.0 / args.tau
    m2, m3 = (args.margin, 0.0) if args.margin_type == "arcface" else (0.0, args.margin)
    W0 = torch.randn(args.classes, args.dim, generator=torch.Generator().manual_seed(args.seed + 1))

    nets, heads = {}, {}
    for name in ("insightface", "gnc_ext"):
        torch.manual_seed(args.seed)  # the same initial backbone for both
        nets[name] = SmallIResNet(args.dim)
    heads["insightface"] = InsightFaceHead(W0, s, m2, m3)
    # ---- the one-line swap: ----------------------------------------------------------
    heads["gnc_ext"] = gnc_ext.nn.ShardedSphericalCELoss(
        args.classes, args.dim, tau=args.tau, margin=args.margin, margin_type=args.margin_type,
        margin_grad="straight_through", ignore_index=-1, sample_rate=args.sample_rate)
    # ----------------------------------------------------------------------------------
    heads["gnc_ext"].load_full_weight(W0)  # the same initial classifier, for the comparison

    opts, scheds = {}, {}
    for name in nets:
        opts[name] = torch.optim.SGD([{"params": nets[name].parameters()}, {"params": heads[name].parameters()}],
                                     lr=args.lr, momentum=0.9, weight_decay=5e-4)
        scheds[name] = torch.optim.lr_scheduler.PolynomialLR(opts[name], total_iters=args.steps, power=2.0)

    g = torch.Generator().manual_seed(args.seed + 100 + rank)  # each rank its own batches
    if rank == 0:
        print(f"world_size={world}, K={args.classes}, d={args.dim}, {args.margin_type} m={args.margin}, s={s:g}, "
              f"batch {args.batch}/rank")
        print(f"{'step':>4} {'lr':>9} {'insightface':>12} {'gnc_ext':>12} {'|diff|':>9}")
    for step in range(args.steps):
        sel = torch.randint(0, X.shape[0], (args.batch,), generator=g)
        xb, yb = X[sel], y[sel]
        losses = {}
        for name in nets:
            opts[name].zero_grad(set_to_none=True)
            emb = nets[name](xb)
            if name == "insightface":
                loss = heads[name](gather_global(emb, world), gather_global(yb, world))
            else:
                loss = heads[name](emb, yb)
            losses[name] = float(loss.detach())
            loss.backward()
            if world > 1:  # the exact gradient of the global loss for the (replicated) backbone
                for p in nets[name].parameters():
                    dist.all_reduce(p.grad)
            lr = scheds[name].get_last_lr()[0]  # the rate of this step
            opts[name].step()
            scheds[name].step()
        if rank == 0 and step < args.print_steps:
            print(f"{step:>4} {lr:>9.5f} {losses['insightface']:>12.6f} {losses['gnc_ext']:>12.6f} "
                  f"{abs(losses['insightface'] - losses['gnc_ext']):>9.2e}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        # Leave the worker without interpreter finalisation, where gloo's threads can
        # abort the process ("terminate called without an active exception", a c10d/gloo
        # teardown race); the results above are printed and flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--print-steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--tau", type=float, default=1 / 64)
    p.add_argument("--margin", type=float, default=0.5)
    p.add_argument("--margin-type", choices=("arcface", "cosface"), default="arcface")
    p.add_argument("--noise", type=float, default=0.5)
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a collective may wait (world size > 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, args.world_size)))
    if args.world_size == 1:
        train(0, 1, args, None)
        return
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(train, args=(args.world_size, args, os.path.join(tmp, "init")), nprocs=args.world_size)


if __name__ == "__main__":
    main()
