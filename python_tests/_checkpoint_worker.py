"""Worker for test_checkpoint.py: one rank of a gloo group on CPU (or a single process
without a group at world size 1). "save": two SGD steps of a ShardedSphericalCELoss,
save_loss_checkpoint, then the next two steps' losses as the reference. "load": a fresh
loss (another seed, so nothing matches by chance) loads the checkpoint and runs the
same next two steps. The global batch of every step is the same at every world size
(rows split across ranks, ragged)."""
import json
import os
import sys

import torch
import torch.distributed as dist

K, D, K_SUB, B = 23, 6, 2, 10


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(B, D, generator=g), torch.randint(0, K, (B,), generator=g)


def local_rows(x, rank, world):
    # ragged: rank r takes rows [bounds[r], bounds[r + 1]); at world 3 the middle rank gets 3 of 10
    bounds = [round(i * B / world) for i in range(world + 1)]
    return x[bounds[rank] : bounds[rank + 1]]


def run(rank, world, ckpt, mode, module):
    from gnc_ext.nn import SphericalCELoss, ShardedSphericalCELoss
    from gnc_ext.nn.checkpoint import load_loss_checkpoint, save_loss_checkpoint

    opts = dict(tau=0.1, margin=0.3, margin_type="arcface", margin_grad="straight_through", num_subcenters=K_SUB)
    if module == "single":
        crit = SphericalCELoss(K, D, **opts)
    else:
        crit = ShardedSphericalCELoss(K, D, seed=0 if mode == "save" else 99, **opts)
    opt = torch.optim.SGD(crit.parameters(), lr=0.5, momentum=0.9)

    def step(i, update=True):
        H, y = batch(i)
        loss = crit(local_rows(H, rank, world), local_rows(y, rank, world))
        if update:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss)

    def full():
        return crit.full_weight() if module == "sharded" else crit.weight.detach().clone()

    out = {}
    if mode == "save":
        step(0)
        step(1)
        save_loss_checkpoint(ckpt, crit, opt)
        W = full()
        if rank == 0:
            torch.save(W, ckpt + ".full_weight.pt")
    else:
        load_loss_checkpoint(ckpt, crit, opt)
        W = full()
        out["bitwise"] = bool(torch.equal(W, torch.load(ckpt + ".full_weight.pt")))
    out["loss2"] = step(2)  # uses the loaded weights
    out["loss3"] = step(3, update=False)  # uses the loaded momentum too
    return out


def main(rank, world, init_file, ckpt, out_file, mode, modules):
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out = {m: run(rank, world, ckpt, mode, m) for m in modules.split(",")}
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(out, f)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:8])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past gloo's teardown race (see _sharded_worker.py)
