"""Face-recognition-style training at large K on synthetic data, with gnc_ext.

Each of K identities has a random prototype in input space; a sample is its
prototype plus noise. An MLP backbone maps inputs to d-dimensional embeddings and is
trained with the drop-in spherical cross-entropy (CosFace margin by default), with
either a learned classifier or the CMF classifier (EMA of class means, not trained).
Every few epochs the script measures GNC on held-out samples: GNC1, GNC3, NCC
accuracy and the certified one-vs-rest margin ρ(W) (GNC2).

Single process:
    python examples/face_recognition_synthetic.py --classes 5000 --dim 64
    python examples/face_recognition_synthetic.py --classifier cmf
Class-sharded over a process group (gloo on CPU, NCCL on GPUs), spawned here:
    python examples/face_recognition_synthetic.py --world-size 2 --classes 5000
(with torchrun, pass --torchrun and launch with `torchrun --nproc-per-node N ...`).

Each rank iterates a DistributedSampler's share of the samples (the same number of
steps on every rank, last incomplete batch dropped, as InsightFace does), and the
process group is created with a timeout (``--timeout``, seconds): a rank that misses a
collective makes the others fail with the group's timeout error instead of hanging.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import gnc_ext
from gnc_ext.nn.cmf import CMFClassifier
from gnc_ext.nn.sharded import ShardedSphericalCELoss


def make_data(K: int, per_class: int, d_in: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(K, d_in, generator=g)
    y = torch.arange(K).repeat_interleave(per_class)
    X = protos[y] + noise * torch.randn(y.numel(), d_in, generator=g)
    perm = torch.randperm(y.numel(), generator=g)
    return X[perm], y[perm]


def backbone(d_in: int, d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, d))


@torch.no_grad()
def gnc_report(net, W, X, y, K, device, rank0=True):
    net.eval()
    acc = gnc_ext.metrics.GNCAccumulator(K, W.shape[1], normalize=True, device=device)
    feats = []
    for s in range(0, X.shape[0], 4096):
        h = net(X[s : s + 4096].to(device))
        acc.update(h, y[s : s + 4096].to(device))
        feats.append(h)
    H = torch.cat(feats)
    res = acc.compute(W=W.to(device))
    ncc = float(acc.ncc_accuracy(H, y.to(device)))
    net.train()
    return {"gnc1": res.gnc1, "gnc3": res.gnc3, "ncc": ncc,
            "rho": None if res.gnc2 is None else res.gnc2.rho,
            "rho_gap": None if res.gnc2 is None else res.gnc2.max_gap,
            "classes_seen": res.num_nonempty}


def train(rank: int, world: int, args, init_file: str | None = None) -> None:
    distributed = world > 1
    device = torch.device("cuda", rank % max(torch.cuda.device_count(), 1)) if (
        torch.cuda.is_available() and not args.cpu) else torch.device("cpu")
    if distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        init = f"file://{init_file}" if init_file else "env://"
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=args.timeout))
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.manual_seed(args.seed)  # same backbone init on every rank
    X, y = make_data(args.classes, args.per_class, args.input_dim, args.noise, args.seed)
    # held-out samples: the same prototypes (same seed), fresh noise
    g_ev = torch.Generator().manual_seed(args.seed + 12345)
    yev = torch.arange(args.classes).repeat_interleave(2)
    protos = torch.randn(args.classes, args.input_dim, generator=torch.Generator().manual_seed(args.seed))
    Xev = protos[yev] + args.noise * torch.randn(yev.numel(), args.input_dim, generator=g_ev)
    net = backbone(args.input_dim, args.dim).to(device)
    if distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    cmf = None
    if distributed:
        crit = ShardedSphericalCELoss(args.classes, args.dim, tau=args.tau, margin=args.margin,
                                      sample_rate=args.sample_rate, device=device)
    elif args.classifier == "cmf":
        cmf = CMFClassifier(args.classes, args.dim, momentum=0.9, device=device)
        crit = gnc_ext.nn.SphericalCELoss(args.classes, args.dim, tau=args.tau, margin=args.margin, classifier=cmf)
    else:
        crit = gnc_ext.nn.SphericalCELoss(args.classes, args.dim, tau=args.tau, margin=args.margin).to(device)
    params = list(net.parameters()) + [p for p in crit.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    # every rank gets the same number of samples and steps (no rank skips a collective)
    sampler = torch.utils.data.DistributedSampler(torch.utils.data.TensorDataset(y), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed + 1)
    batches = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=True)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(sampler)} samples per rank")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    if rank == 0:
        print(f"K={args.classes:,} d={args.dim} samples={X.shape[0]:,} world={world} device={device} "
              f"classifier={'sharded' if distributed else args.classifier} tau={args.tau} margin={args.margin}")
    t0 = time.time()
    for ep in range(1, args.epochs + 1):
        sampler.set_epoch(ep)
        bar = tqdm(batches, desc=f"epoch {ep}", disable=rank != 0 or not args.progress, leave=False)
        for idx in bar:
            idx = torch.as_tensor(idx)
            xb, yb = X[idx].to(device), y[idx].to(device)
            feats = net(xb)
            loss = crit(feats, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if cmf is not None:
                cmf.update(feats.detach(), yb)
            bar.set_postfix(loss=f"{loss.detach().item():.3f}")
        if ep % args.eval_every == 0 or ep == args.epochs:
            W = crit.full_weight() if distributed else crit.class_weights().detach()
            inner = net.module if distributed else net
            if rank == 0:
                m = gnc_report(inner, W, Xev, yev, args.classes, device)
                rho = "n/a" if m["rho"] is None else f"{m['rho']:.4f} (gap {m['rho_gap']:.1e})"
                print(f"epoch {ep:3d} loss {loss.detach().item():.4f}  NCC acc {m['ncc']:.4f}  GNC1 {m['gnc1']:.3e}  "
                      f"GNC3 {m['gnc3']:.3e}  rho(W) {rho}  [{time.time() - t0:.0f} s]")
            if distributed:
                dist.barrier()
    if distributed:
        dist.destroy_process_group()
        # Leave the worker without interpreter finalisation, where gloo's threads can
        # abort the process ("terminate called without an active exception", a c10d/gloo
        # teardown race); the results above are printed and flushed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=5000)
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--input-dim", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--noise", type=float, default=1.2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--tau", type=float, default=1 / 32)
    p.add_argument("--margin", type=float, default=0.2, help="CosFace margin")
    p.add_argument("--classifier", choices=["learned", "cmf"], default="learned")
    p.add_argument("--sample-rate", type=float, default=1.0, help="Partial-FC class sampling (sharded only)")
    p.add_argument("--world-size", type=int, default=1, help="spawn this many processes (class-sharded loss)")
    p.add_argument("--torchrun", action="store_true", help="launched by torchrun: read RANK/WORLD_SIZE")
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a collective may wait for the other ranks before failing (distributed runs)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: only when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.torchrun:
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    elif args.world_size > 1:
        init_file = os.path.join(tempfile.mkdtemp(), "init")
        torch.multiprocessing.spawn(train, args=(args.world_size, args, init_file), nprocs=args.world_size)
    else:
        train(0, 1, args)


if __name__ == "__main__":
    main()
