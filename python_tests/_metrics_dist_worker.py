"""Worker for test_metrics.py::test_sync_gloo_two_processes (not a test module).

    python _metrics_dist_worker.py RANK WORLD PORT DATA.pt OUT.pt [mismatch]
Rank r accumulates the rows i with (7919·i mod 5) in its share (rank 0: residues 0-1,
rank 1: residues 2-4, so shards are uneven and interleaved), calls sync() on the gloo
backend, then rank 0 saves compute() results and the synced state. With "mismatch",
rank 1 builds its accumulator with normalize=False and each rank writes the message of
the ValueError that sync() must raise to OUT.pt.RANK instead. With "torchmetrics"
(test_torchmetrics_adapter_ddp_equals_sync) each rank feeds the same shard to a
GNCMetric as well, and rank 0 saves GNCMetric.compute() (torchmetrics syncs) next to
sync() + compute/nc_metrics of the accumulator, as floats.
"""
import os
import sys

import warnings

import torch
import torch.distributed as dist

from gnc_ext.metrics import GNCAccumulator, nc_metrics


def torchmetrics_mode(acc, metric, W, out):
    got = {k: float(v) for k, v in metric.compute().items()}
    acc.sync()
    r = acc.compute(W, gnc2=False)
    synced = {"gnc1": r.gnc1, "gnc3": r.gnc3}
    synced.update({k: v for k, v in nc_metrics(acc, W, gnc2=False).to_dict().items()
                   if isinstance(v, float) and k != "cdnv_exponent"})
    if dist.get_rank() == 0:
        torch.save({"metric": got, "synced": synced}, out)


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = torch.load(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        H, y, K = data["H"], data["y"], data["K"]
        mode = sys.argv[6] if len(sys.argv) > 6 else ""
        mismatch = mode == "mismatch"
        acc = GNCAccumulator(K, H.shape[1], normalize=not (mismatch and rank == 1))
        metric = None
        if mode == "torchmetrics":
            from gnc_ext.metrics import GNCMetric

            warnings.simplefilter("ignore")
            metric = GNCMetric(K, H.shape[1], W=data["W"])
        res = (torch.arange(H.shape[0]) * 7919) % 5
        mine = torch.nonzero(res < 2 if rank == 0 else res >= 2).flatten()
        for s in range(0, mine.numel(), 37):
            b = mine[s:s + 37]
            acc.update(H[b], y[b])
            if metric is not None:
                metric.update(H[b], y[b])
        if metric is not None:
            torchmetrics_mode(acc, metric, data["W"], sys.argv[5])
            return
        if mismatch:
            try:
                acc.sync()
                msg = "no error"
            except ValueError as e:
                msg = str(e)
            with open(f"{sys.argv[5]}.{rank}", "w") as f:
                f.write(msg)
            return
        acc.sync()
        r = acc.compute()
        if rank == 0:
            torch.save({"gnc1": r.gnc1, "counts": r.counts, "spread": r.within_class_spread,
                        "norms": r.class_mean_norms, "state": acc.state_dict()}, sys.argv[5])
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Results are written and the process group is destroyed: leave without interpreter
    # finalisation, where gloo's worker threads can abort the process ("terminate called
    # without an active exception", seen once in CI; a known c10d/gloo teardown race).
    # Errors above still exit non-zero through the normal exception path.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
