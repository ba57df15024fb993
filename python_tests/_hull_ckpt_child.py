"""Child process for test_checkpoint_hull.py: one_vs_rest_distance on a seeded W with a
checkpoint directory, saving the result tensors to OUT. Modes: ``run`` (plain),
``hang_in_write`` (the second checkpoint write stops half-way, announces itself through
a marker file and waits to be killed)."""
import io
import json
import os
import sys
import time

import torch


def main(cfg_json: str) -> None:
    cfg = json.loads(cfg_json)
    torch.set_num_threads(1)
    import gnc_ext

    g = torch.Generator().manual_seed(cfg.get("seed", 11))
    W = torch.nn.functional.normalize(torch.randn(cfg["K"], cfg["d"], generator=g, dtype=torch.float64), dim=1)
    if cfg.get("mode") == "hang_in_write":
        real_save = torch.save
        calls = {"n": 0}

        def slow_save(obj, f, *a, **k):
            calls["n"] += 1
            if calls["n"] < 2:
                return real_save(obj, f, *a, **k)
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            open(cfg["marker"], "w").close()
            time.sleep(120)

        torch.save = slow_save
    res = gnc_ext.one_vs_rest_distance(W, checkpoint=cfg.get("checkpoint"),
                                       checkpoint_every=cfg.get("every", 0.0))
    torch.save({"distance": res.distance, "lower": res.lower, "projection": res.projection,
                "support": res.support, "weights": res.weights, "rho": res.rho,
                "resumed": res.stats.get("resumed_classes", 0), "writes": res.stats.get("checkpoint_writes", 0)},
               cfg["out"])


if __name__ == "__main__":
    main(sys.argv[1])
