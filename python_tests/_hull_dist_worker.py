"""Worker for test_distributed_hull.py: one rank of a gloo group on CPU running
one_vs_rest_distance(W, group=...) and comparing it with the single-process call on the
same W (computed independently on every rank), or provoking a failure (another W or
other options on one rank, a rank that dies part-way). Writes a JSON report."""
import datetime
import json
import os
import sys

import torch
import torch.distributed as dist


def main(rank: int, world: int, init_file: str, out_file: str, cfg_json: str) -> None:
    import gnc_ext
    from gnc_ext.geometry import one_vs_rest as ovr

    cfg = json.loads(cfg_json)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=cfg.get("timeout", 60)))
    torch.set_num_threads(1)
    K, d = cfg["K"], cfg["d"]
    g = torch.Generator().manual_seed(cfg.get("seed", 7))
    W = torch.nn.functional.normalize(torch.randn(K, d, generator=g, dtype=torch.float64), dim=1)
    opts = dict(cfg.get("opts", {}))
    mode = cfg["mode"]
    last = rank == world - 1
    if mode == "other_W" and last:
        W = W.clone()
        W[5] = torch.nn.functional.normalize(W[5] + 1e-9, dim=0)
    if mode == "other_option" and last:
        opts["tol"] = 1e-9
    if mode == "die" and last:
        def die(*a, **k):  # the rank dies after the agreement, inside its first block
            os._exit(3)
        ovr._solve_block = die
    report = {"rank": rank}
    try:
        res = gnc_ext.one_vs_rest_distance(W, group=dist.group.WORLD, checkpoint=cfg.get("checkpoint"), **opts)
    except Exception as e:  # noqa: BLE001 - the test reads the error
        report.update(error=type(e).__name__, message=str(e), mro=[c.__name__ for c in type(e).__mro__])
    else:
        ref = gnc_ext.one_vs_rest_distance(W, **opts)
        report.update(
            dist_err=float((res.distance - ref.distance).abs().max()),
            lower_err=float((res.lower - ref.lower).abs().max()),
            proj_err=float((res.projection - ref.projection).abs().max()),
            rho=res.rho, rho_ref=ref.rho, rho_lower=res.rho_lower, rho_lower_ref=ref.rho_lower,
            argmin=int(res.distance.argmin()), argmin_ref=int(ref.distance.argmin()),
            gap=res.max_gap, tol=res.stats["tol"], rattlers_equal=bool(torch.equal(res.rattlers, ref.rattlers)),
            support_equal=bool(res.support.shape == ref.support.shape and torch.equal(res.support, ref.support)),
            stats={k: res.stats[k] for k in ("world_size", "rank_busy_s", "rank_classes", "steps", "blocks",
                                             "resumed_classes", "converged")},
            digest=gnc_ext.distributed.digest(torch.cat([res.distance, res.lower])),
        )
    with open(out_file, "w") as f:
        json.dump(report, f)
    if "error" not in report:
        dist.barrier()
    dist.destroy_process_group() if "error" not in report else None


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    # as in _sharded_worker.py: skip interpreter finalisation (gloo teardown race)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
