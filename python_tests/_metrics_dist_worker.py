"""Worker for test_metrics.py::test_sync_gloo_two_processes (not a test module).

    python _metrics_dist_worker.py RANK WORLD PORT DATA.pt OUT.pt
Rank r accumulates the rows i with (7919·i mod 5) in its share (rank 0: residues 0-1,
rank 1: residues 2-4, so shards are uneven and interleaved), calls sync() on the gloo
backend, then rank 0 saves compute() results and the synced state.
"""
import os
import sys

import torch
import torch.distributed as dist

from gnc_ext.metrics import GNCAccumulator


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = torch.load(sys.argv[4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        H, y, K = data["H"], data["y"], data["K"]
        acc = GNCAccumulator(K, H.shape[1])
        res = (torch.arange(H.shape[0]) * 7919) % 5
        mine = torch.nonzero(res < 2 if rank == 0 else res >= 2).flatten()
        for s in range(0, mine.numel(), 37):
            b = mine[s:s + 37]
            acc.update(H[b], y[b])
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
