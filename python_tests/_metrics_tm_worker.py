"""Worker for test_metrics.py::test_torchmetrics_adapter_ddp_equals_sync (not a test module).

    python _metrics_tm_worker.py RANK WORLD PORT DATA.pt OUT.pt
Rank r feeds the rows i with (7919·i mod 5) in its share (rank 0: residues 0-1, rank 1:
2-4) to both a GNCMetric and a GNCAccumulator; then GNCMetric.compute() (torchmetrics
syncs) and GNCAccumulator.sync() + compute/nc_metrics; rank 0 saves both as floats.
"""
import os
import sys
import warnings

import torch
import torch.distributed as dist

from gnc_ext.metrics import GNCAccumulator, GNCMetric, nc_metrics


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = torch.load(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    warnings.simplefilter("ignore")
    try:
        H, y, K, W = data["H"], data["y"], data["K"], data["W"]
        metric = GNCMetric(K, H.shape[1], W=W)
        acc = GNCAccumulator(K, H.shape[1])
        res = (torch.arange(H.shape[0]) * 7919) % 5
        mine = torch.nonzero(res < 2 if rank == 0 else res >= 2).flatten()
        for s in range(0, mine.numel(), 37):
            b = mine[s:s + 37]
            metric.update(H[b], y[b])
            acc.update(H[b], y[b])
        got = {k: float(v) for k, v in metric.compute().items()}
        acc.sync()
        r = acc.compute(W, gnc2=False)
        synced = {"gnc1": r.gnc1, "gnc3": r.gnc3}
        synced.update({k: v for k, v in nc_metrics(acc, W).to_dict().items()
                       if isinstance(v, float) and k != "cdnv_exponent"})
        if rank == 0:
            torch.save({"metric": got, "synced": synced}, sys.argv[5])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # as _metrics_dist_worker.py: skip interpreter finalisation (gloo teardown race)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
