"""The ``gnc`` command. Subcommands print readable tables by default and JSON with
``--json``; ``--plot FILE.png`` draws a picture where one helps. Errors are one clear
line on stderr and a non-zero exit code (1 for bad input, 2 for bad usage).

    gnc info                                   build information
    gnc demo [--out DIR]                       GNC on the bundled digits (d=2), with plots
    gnc distance W.npy [--normalize]           one-vs-rest distances, certificate, rattlers
    gnc metrics --features F --labels Y [--weights W]
    gnc solve softmax-code|tammes --dim d --classes K [--init code.npy] [--save code.npy]
    gnc design --classes K --margin RHO [--plot design.png]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def _print_table(rows: Dict[str, Any]) -> None:
    width = max(len(k) for k in rows) if rows else 0
    for k, v in rows.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        print(f"{k.ljust(width)}  {v}")


def _emit(args, rows: Dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, sort_keys=False, default=str))
    else:
        _print_table(rows)


def load_array(path: str, name: str, *, ndim: int, dtype=None):
    """Load a .npy / .npz (first array) / .pt tensor as a torch tensor, checked."""
    import numpy as np
    import torch

    if not path:
        raise CLIError(f"{name}: no file given")
    if not os.path.isfile(path):
        raise CLIError(f"{name}: no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise CLIError(f"{name}: {path} holds no array")
                t = torch.from_numpy(z[z.files[0]])
        elif ext in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
            if not isinstance(obj, torch.Tensor):
                raise CLIError(f"{name}: {path} does not hold a single tensor")
            t = obj
        else:
            raise CLIError(f"{name}: unsupported file type {ext!r} (use .npy, .npz or .pt)")
    except CLIError:
        raise
    except Exception as exc:  # unreadable / corrupt file: the reason's first line only
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CLIError(f"{name}: cannot read {path}: {type(exc).__name__}: {first}") from None
    if t.dim() != ndim:
        raise CLIError(f"{name}: expected a {ndim}-D array, got shape {tuple(t.shape)} in {path}")
    if dtype == "float":
        if not (t.is_floating_point()):
            raise CLIError(f"{name}: expected floating-point values, got {t.dtype} in {path}")
        if not bool(torch.isfinite(t).all()):
            raise CLIError(f"{name}: contains NaN or Inf values ({path})")
    elif dtype == "int":
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CLIError(f"{name}: expected integer labels, got {t.dtype} in {path}")
        t = t.long()
    return t


def _cmd_info(args) -> int:
    from . import build_info

    _emit(args, build_info())
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    taus = [float(x) for x in args.taus.split(",")] if args.taus else [0.05, 1.0]
    s = run_demo(args.out, taus=taus, epochs=args.epochs, seed=args.seed, device=args.device,
                 plots=not args.no_plot, log=(lambda *a, **k: None) if args.json else print)
    if args.json:
        s = {k: v for k, v in s.items() if k != "histories"}
        print(json.dumps(s, indent=2, default=str))
    return 0


def _cmd_distance(args) -> int:
    import torch

    import gnc_ext

    W = load_array(args.weights, "W", ndim=2, dtype="float")
    if W.dtype not in (torch.float32, torch.float64):
        W = W.double()
    if args.device:
        W = W.to(args.device)
    try:
        r = gnc_ext.one_vs_rest_distance(W, normalize=args.normalize, rattler_tol=args.rattler_tol)
    except ValueError as exc:  # the library's advice in the CLI's terms
        raise CLIError(str(exc).replace("pass normalize=True", "pass --normalize")) from None
    K, d = W.shape
    rows: Dict[str, Any] = {
        "classes K": K, "dim d": d,
        "rho (min distance)": float(r.rho), "rho certified lower bound": float(r.rho_lower),
        "max certificate gap": float(r.gap),
        "argmin class": int(torch.argmin(r.distance)),
        f"rattlers (lower > rho + {args.rattler_tol:g})": int(len(r.rattlers)),
    }
    cf = gnc_ext.theory.rho_closed_form(d, K)
    if cf is not None:
        rows["closed-form optimum (Thm 3.3)"] = cf
    if d >= 2:
        b = gnc_ext.theory.rho_bounds(d, K)
        rows["Thm 3.9 bounds on max rho"] = (f"[{b.lower:.6g}, {b.upper:.6g}]"
                                             + ("" if b.valid else " (K below the theorem's validity range)"))
    nn = gnc_ext.one_vs_one_distance(W if not args.normalize else gnc_ext.normalize_rows(W))
    rows["one-vs-one min distance"] = float(nn.min)
    if args.json:
        rows["distance"] = r.distance.cpu().tolist()
        rows["lower"] = r.lower.cpu().tolist()
        rows["rattler_ids"] = r.rattlers.cpu().tolist()
    else:
        worst = torch.argsort(r.distance)[: min(5, K)].cpu().tolist()
        rows["closest classes"] = ", ".join(f"{k} ({float(r.distance[k]):.4g})" for k in worst)
    _emit(args, rows)
    if args.plot:
        from . import plot

        plot.plot_distances(r, path=args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0


def _cmd_metrics(args) -> int:
    import torch

    import gnc_ext

    H = load_array(args.features, "features", ndim=2, dtype="float").to(torch.float32)
    y = load_array(args.labels, "labels", ndim=1, dtype="int")
    if y.shape[0] != H.shape[0]:
        raise CLIError(f"labels: expected {H.shape[0]} labels (one per feature row), got {y.shape[0]}")
    W = None
    if args.weights:
        W = load_array(args.weights, "weights", ndim=2, dtype="float").to(torch.float32)
        if W.shape[1] != H.shape[1]:
            raise CLIError(f"weights: expected width {H.shape[1]} (the feature width), got {W.shape[1]}")
    K = args.classes or (int(y.max()) + 1 if W is None else W.shape[0])
    try:
        acc = gnc_ext.metrics.GNCAccumulator(K, H.shape[1], normalize=not args.no_normalize)
        for s in range(0, H.shape[0], 65536):
            acc.update(H[s : s + 65536], y[s : s + 65536])
        res = acc.compute(W=W)
        ncc = float(acc.ncc_accuracy(H, y))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    rows: Dict[str, Any] = {"samples": H.shape[0], "classes K": K, "dim d": H.shape[1], "GNC1": float(res.gnc1),
                            "NCC accuracy": ncc}
    if W is not None:
        rows["GNC2 rho(W)"] = float(res.gnc2.rho) if hasattr(res.gnc2, "rho") else res.gnc2
        rows["GNC3"] = float(res.gnc3)
    _emit(args, rows)
    return 0


def _cmd_solve(args) -> int:
    import numpy as np

    import gnc_ext

    kw = dict(seed=args.seed, progress=not args.json)
    if args.restarts is not None:
        kw["restarts"] = args.restarts
    if args.max_iter is not None:
        kw["max_iter"] = args.max_iter
    if args.time_limit is not None:
        kw["time_limit"] = args.time_limit
    if args.init:
        W0 = load_array(args.init, "init", ndim=2, dtype="float")
        if tuple(W0.shape) != (args.classes, args.dim):
            raise CLIError(f"init: expected a ({args.classes}, {args.dim}) code (--classes x --dim), "
                           f"got {tuple(W0.shape)}")
        kw["init"] = W0
        if args.restarts is None:
            kw["restarts"] = 0  # polish the given code only, unless --restarts asks for a search too
    try:
        if args.problem == "softmax-code":
            r = gnc_ext.solvers.softmax_code(args.dim, args.classes, device=args.device, **kw)
        else:
            r = gnc_ext.solvers.tammes(args.dim, args.classes, device=args.device, **kw)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    W = r.W.detach().cpu().double()
    cert = gnc_ext.one_vs_rest_distance(W)
    nn = gnc_ext.one_vs_one_distance(W)
    rows: Dict[str, Any] = {"problem": args.problem, "dim d": args.dim, "classes K": args.classes,
                            "one-vs-rest rho": float(cert.rho), "rho certified lower bound": float(cert.rho_lower),
                            "one-vs-one min distance": float(nn.min),
                            "min angle cosine": 1.0 - float(nn.min) ** 2 / 2.0,
                            "rattlers": int(len(cert.rattlers))}
    cf = gnc_ext.theory.rho_closed_form(args.dim, args.classes)
    if cf is not None:
        rows["closed-form rho (Thm 3.3)"] = cf
    if args.save:
        if args.save.endswith(".pt"):
            import torch

            torch.save(W, args.save)
        else:
            np.save(args.save, W.numpy())
        rows["saved"] = args.save
    _emit(args, rows)
    return 0


def _cmd_design(args) -> int:
    import gnc_ext

    try:
        d = gnc_ext.theory.min_feature_dim(args.classes, args.margin)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from None
    b = gnc_ext.theory.rho_bounds(d, args.classes)
    rows = {"classes K": args.classes, "target margin rho": args.margin,
            "min feature dim d (Thm 3.9 lower bound reaches rho)": d,
            "bounds on max rho at that d": f"[{b.lower:.6g}, {b.upper:.6g}]",
            "Thm 3.9 valid (K >= sqrt(2 pi sqrt(e) d))": bool(b.valid)}
    _emit(args, rows)
    if args.plot:
        from . import plot

        hi = max(8, int(d * 1.6) + 2)
        plot.plot_design_curve(args.classes, args.margin, dims=range(2, hi + 1), path=args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gnc", description="gnc_ext: Generalized Neural Collapse at large K")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="build information (compiler, OpenMP, CUDA archs, GPU usable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("demo", help="train on the bundled digits (d=2) and show GNC emerge, with plots")
    s.add_argument("--out", default="gnc_demo", help="folder for the PNGs and summary.json (default: gnc_demo)")
    s.add_argument("--epochs", type=_positive_int, default=150)
    s.add_argument("--taus", default=None, help="comma-separated temperatures (default: 0.05,1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--no-plot", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("distance", help="one-vs-rest distances of class weights, with certificate and rattlers")
    s.add_argument("weights", metavar="W", help="(K, d) weights as .npy, .npz or .pt")
    s.add_argument("--normalize", action="store_true", help="normalise rows first (else rows must be unit-norm)")
    s.add_argument("--rattler-tol", type=_float, default=1e-6,
                   help="report classes whose certified distance exceeds rho by more than this (default 1e-6)")
    s.add_argument("--device", default=None)
    s.add_argument("--plot", default=None, metavar="FILE.png")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_distance)

    s = sub.add_parser("metrics", help="GNC1/2/3 and NCC accuracy of features (and classifier weights)")
    s.add_argument("--features", required=True, metavar="F", help="(N, d) features (.npy/.npz/.pt)")
    s.add_argument("--labels", required=True, metavar="Y", help="(N,) integer labels")
    s.add_argument("--weights", default=None, metavar="W", help="(K, d) classifier weights (for GNC2, GNC3)")
    s.add_argument("--classes", type=_positive_int, default=None, help="K (default: from W or max label + 1)")
    s.add_argument("--no-normalize", action="store_true", help="do not L2-normalise features")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_metrics)

    s = sub.add_parser("solve", help="solve the Softmax Code or Tammes problem")
    s.add_argument("problem", choices=["softmax-code", "tammes"])
    s.add_argument("--dim", "-d", type=_positive_int, required=True)
    s.add_argument("--classes", "-K", type=_positive_int, required=True)
    s.add_argument("--restarts", type=_positive_int, default=None)
    s.add_argument("--max-iter", type=_positive_int, default=None)
    s.add_argument("--init", default=None, metavar="FILE",
                   help="a (K, d) code (.npy/.pt) to polish (alone, unless --restarts is given)")
    s.add_argument("--time-limit", type=_float, default=None, metavar="SECONDS")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--save", default=None, metavar="FILE", help="save the code (.npy or .pt)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_solve)

    s = sub.add_parser("design", help="feature dimension needed for K classes at margin rho (Thm 3.9)")
    s.add_argument("--classes", "-K", type=_positive_int, required=True)
    s.add_argument("--margin", "-r", type=_float, required=True, metavar="RHO")
    s.add_argument("--plot", default=None, metavar="FILE.png")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_design)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"gnc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f"gnc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"gnc {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
