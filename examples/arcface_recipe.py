"""An arcface_torch ``train_v2.py``-shaped training recipe with gnc_ext's sharded loss.

What train_v2.py does, with gnc_ext in place of PartialFC_V2 + CombinedMarginLoss:
a backbone (here a small MLP with BatchNorm on synthetic identities: each identity a
random prototype plus noise) under ``torch.autocast`` (fp16 with a GradScaler on CUDA,
bf16 on the CPU), ``ShardedSphericalCELoss`` with InsightFace's ArcFace convention
(s = 64, m = 0.5, straight-through margin, label -1 ignored) and PartialFC class
sampling (``--sample-rate``), one SGD optimizer (momentum 0.9, weight decay 5e-4) for
backbone and classifier with a polynomial learning-rate decay (power 2), the
backbone's gradient norm clipped at 5, DDP for the backbone, a DistributedSampler (the
same number of steps on every rank), a process group created with a timeout, and a
checkpoint every ``--ckpt-every`` steps that ``--resume`` continues from.

The checkpoint is a folder per step: the classifier (and its optimizer state) through
``gnc_ext.nn.checkpoint.save_loss_checkpoint`` (torch.distributed.checkpoint: it loads
at another world size too), and ``trainer.pt`` with what every rank holds alike
(backbone, the rest of the optimizer, scheduler, scaler, step); ``latest`` names the
newest complete one.

    python examples/arcface_recipe.py --steps 60 --ckpt-every 20
    python examples/arcface_recipe.py --world-size 2 --steps 60 --ckpt-every 20
    python examples/arcface_recipe.py --world-size 2 --steps 60 --ckpt-every 20 --resume

(``--world-size N`` spawns N processes on gloo (CPU) or NCCL (one GPU each); with
torchrun pass ``--torchrun``.) A run stopped after a checkpoint and resumed ends with
the same losses as an uninterrupted run (same world size: the sampling generators are
restored too).
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from gnc_ext.nn import ShardedSphericalCELoss
from gnc_ext.nn.checkpoint import load_loss_checkpoint, save_loss_checkpoint


def make_data(K: int, per_class: int, d_in: int, noise: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(K, d_in, generator=g)
    y = torch.arange(K).repeat_interleave(per_class)
    return protos[y] + noise * torch.randn(y.numel(), d_in, generator=g), y


def backbone(d_in: int, d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 256), nn.BatchNorm1d(256), nn.PReLU(256), nn.Linear(256, d),
                         nn.BatchNorm1d(d))


def save(folder: str, rank: int, step: int, net, crit, opt, sched, scaler) -> None:
    path = os.path.join(folder, f"step_{step:08d}")
    save_loss_checkpoint(os.path.join(path, "loss"), crit, opt)  # collective
    if rank == 0:
        sd = opt.state_dict()  # the classifier's state is in the loss checkpoint (sharded)
        head = len(opt.param_groups[0]["params"])  # state_dict numbers the parameters group after group
        sd["state"] = {i: s for i, s in sd["state"].items() if i != head}
        torch.save({"step": step, "backbone": net.state_dict(), "optimizer": sd, "scheduler": sched.state_dict(),
                    "scaler": None if scaler is None else scaler.state_dict()}, os.path.join(path, "trainer.pt"))
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:  # written last: names a complete checkpoint
        with open(os.path.join(folder, "latest.tmp"), "w") as f:
            f.write(os.path.basename(path))
        os.replace(os.path.join(folder, "latest.tmp"), os.path.join(folder, "latest"))


def resume(folder: str, net, crit, opt, sched, scaler) -> int:
    with open(os.path.join(folder, "latest")) as f:
        path = os.path.join(folder, f.read().strip())
    tr = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=False)
    net.load_state_dict(tr["backbone"])
    opt.load_state_dict(tr["optimizer"])
    load_loss_checkpoint(os.path.join(path, "loss"), crit, opt)  # collective; restores the shard's momentum
    sched.load_state_dict(tr["scheduler"])
    if scaler is not None and tr["scaler"] is not None:
        scaler.load_state_dict(tr["scaler"])
    return tr["step"]


def train(rank: int, world: int, args, init_file: str | None = None) -> None:
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}" if init_file else "env://",
                                rank=rank, world_size=world, timeout=datetime.timedelta(seconds=args.timeout))
    if not cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.manual_seed(args.seed)  # the same backbone on every rank
    X, y = make_data(args.classes, args.per_class, args.input_dim, args.noise, args.seed)
    net = backbone(args.input_dim, args.dim).to(device)
    ddp = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None) if world > 1 else net
    crit = ShardedSphericalCELoss(args.classes, args.dim, tau=1 / 64, margin=0.5, margin_type="arcface",
                                  margin_grad="straight_through", ignore_index=-1, sample_rate=args.sample_rate,
                                  seed=args.seed, device=device)
    opt = torch.optim.SGD([{"params": net.parameters()}, {"params": crit.parameters()}], lr=args.lr, momentum=0.9,
                          weight_decay=5e-4)
    sampler = torch.utils.data.DistributedSampler(torch.utils.data.TensorDataset(y), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=args.seed)
    batches = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=True)
    per_epoch = len(batches)
    if per_epoch == 0:
        raise SystemExit(f"--batch-size {args.batch_size} exceeds the {len(sampler)} samples per rank")
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=args.steps, power=2.0)
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if cuda and args.amp else None
    start = resume(args.ckpt_dir, net, crit, opt, sched, scaler) if args.resume else 0
    if rank == 0:
        print(f"K={args.classes} d={args.dim} samples={len(y)} world={world} device={device} "
              f"steps/epoch={per_epoch} amp={amp_dtype if args.amp else None} start={start}", flush=True)
    step = start
    while step < args.steps:
        epoch, skip = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        for i, idx in enumerate(batches):
            if i < skip:
                continue  # resumed inside this epoch: the batches already trained on
            idx = torch.as_tensor(idx)
            xb, yb = X[idx].to(device), y[idx].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                loss = crit(ddp(xb), yb)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
            sched.step()
            step += 1
            if rank == 0:
                print(f"step {step} loss {float(loss.detach()):.8f}", flush=True)
            if args.ckpt_every and step % args.ckpt_every == 0:
                save(args.ckpt_dir, rank, step, net, crit, opt, sched, scaler)
                if step == args.kill_after:  # testing: die like a killed job, right after the checkpoint
                    os.kill(os.getpid(), signal.SIGKILL)
            if step >= args.steps:
                break
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # past gloo's teardown race ("terminate called without an active exception")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--per-class", type=int, default=6)
    p.add_argument("--input-dim", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--sample-rate", type=float, default=0.5)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="train in float32")
    p.add_argument("--ckpt-dir", default="arcface_recipe_ckpt")
    p.add_argument("--ckpt-every", type=int, default=20, help="steps between checkpoints (0: none)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    p.add_argument("--kill-after", type=int, default=-1, help=argparse.SUPPRESS)  # tests: SIGKILL after this step
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a collective may wait (distributed)")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--torchrun", action="store_true", help="launched by torchrun: read RANK/WORLD_SIZE")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.makedirs(args.ckpt_dir, exist_ok=True)
    if args.torchrun:
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    elif args.world_size > 1:
        with tempfile.TemporaryDirectory() as tmp:
            torch.multiprocessing.spawn(train, args=(args.world_size, args, os.path.join(tmp, "init")),
                                        nprocs=args.world_size)
    else:
        train(0, 1, args)


if __name__ == "__main__":
    main()
