"""Worker for test_distributed_nc.py: one rank of a gloo group on CPU. Each rank
accumulates its share of a seeded data set, syncs the accumulator, and runs
nc_metrics(..., group=) with its share of the NC4 data; the single-process reference
(all data in one accumulator) is computed on every rank. Writes a JSON report."""
import dataclasses
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, init_file: str, out_file: str, cfg_json: str) -> None:
    from gnc_ext.metrics import GNCAccumulator, nc_metrics

    cfg = json.loads(cfg_json)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    K, d, n = cfg["K"], cfg["d"], cfg["n"]
    g = torch.Generator().manual_seed(5)
    M = torch.randn(K, d, generator=g, dtype=torch.float64)
    y = torch.arange(K).repeat_interleave(n)
    H = M[y] + 0.3 * torch.randn(K * n, d, generator=g, dtype=torch.float64)
    W = M + 0.1 * torch.randn(K, d, generator=g, dtype=torch.float64)
    b = 0.01 * torch.randn(K, generator=g, dtype=torch.float64)
    perm = torch.randperm(K * n, generator=g)
    mine = perm[rank::world]
    if cfg.get("other_W") and rank == world - 1:
        W = W.clone()
        W[0, 0] += 1e-12
    acc = GNCAccumulator(K, d)
    acc.update(H[mine], y[mine])
    acc.sync(dist.group.WORLD)
    report = {}
    try:
        got = nc_metrics(acc, W, bias=b, kernel=cfg["kernel"], features=[(H[mine], y[mine])],
                         group=dist.group.WORLD)
    except Exception as e:  # noqa: BLE001 - the test reads the error
        report.update(error=type(e).__name__, message=str(e))
    else:
        full = GNCAccumulator(K, d)
        full.update(H, y)
        ref = nc_metrics(full, W, bias=b, kernel=cfg["kernel"], features=[(H, y)])
        report["got"] = dataclasses.asdict(got)
        report["ref"] = dataclasses.asdict(ref)
        # both tile paths of pairwise_class_stats (native: the CPU one; torch: the CUDA one)
        from gnc_ext.ops.metrics import pairwise_class_stats

        X = torch.nn.functional.normalize(M, dim=1)
        r = 1 + torch.rand(K, generator=g, dtype=torch.float64)
        s = torch.rand(K, generator=g, dtype=torch.float64)
        for impl in ("native", "torch"):
            a = pairwise_class_stats(X, radii=r, spreads=s, kernel=cfg["kernel"], impl=impl, block=256,
                                     group=dist.group.WORLD)
            b = pairwise_class_stats(X, radii=r, spreads=s, kernel=cfg["kernel"], impl=impl, block=256)
            report[f"pairs_{impl}"] = {
                "max_cos": float((a.max_cos - b.max_cos).abs().max()),
                **{f: abs(float(getattr(a, f)) - float(getattr(b, f))) / abs(float(getattr(b, f)))
                   for f in ("cdnv_mean", "kernel_mean", "kernel_var", "min_dist2")}}
    with open(out_file, "w") as f:
        json.dump(report, f)
    if "error" not in report:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
