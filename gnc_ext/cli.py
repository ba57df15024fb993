"""The ``gnc`` command. Subcommands print readable tables by default and JSON with
``--json``; ``--plot FILE.png`` draws a picture where one helps.

    gnc info                                   build information
    gnc demo [--out DIR]                       GNC on the bundled digits (d=2), with plots
    gnc distance W.npy [--normalize]           one-vs-rest distances, certificate, rattlers
    gnc metrics --features F --labels Y [--weights W] [--nc]
    gnc solve softmax-code|tammes --dim d --classes K [--init code.npy] [--save code.npy]
    gnc design --classes K --margin RHO [--plot design.png]

``gnc distance`` and ``gnc metrics`` also run under ``torchrun --nproc-per-node N`` (the
one-vs-rest solve, the NC suite's pairwise tiles and its NC4 pass split over the ranks;
rank 0 prints and writes) and take ``--checkpoint DIR`` (resumable one-vs-rest solve,
``--checkpoint-every SECONDS``, default 60).

Input files: ``.npy``, ``.npz`` or ``.pt``/``.pth``. A ``.npz`` (or a ``.pt`` dict) that
holds several arrays needs the key: ``FILE.npz:KEY`` (a path that exists as written is
always taken as a path, so file names containing ``:`` still work).

Exit codes: 0 success; 1 bad input (one line on stderr, ``gnc CMD: error: ...``, naming
the option and file as typed, e.g. ``--labels y.npy: ...``); 2 bad usage (argparse's message); 141 (128 + SIGPIPE) when the
reader of stdout went away (``gnc distance W.npy --json | head``): no message then.

JSON output (``--json``): one object per run, keys in snake_case, numbers as JSON
numbers (a non-finite value as ``null``), lists as JSON arrays, absent values as
``null``. Every object starts with ``"command"`` and ``"schema_version"`` (now 1); a key
is never renamed or removed within a schema version, new keys may be added. The full
schema of each subcommand is in docs/CLI.md; in short:

* ``info``: ``gnc_ext.build_info()`` (version, compiler, cxx_standard, openmp,
  omp_threads, cuda_compiled, cuda_archs, cuda_device_count, torch_version, torch_cuda,
  gpu_usable, omp_num_threads_env).
* ``demo``: rho_opt, seconds, runs (list of {tau, final: {metric: number}, gnc2_over_opt}),
  files (list of str).
* ``distance``: classes, dim, normalized, rho, rho_lower, max_gap (the per-class worst
  certificate gap), argmin_class, rattler_tol, rattlers (list of int), rattler_count,
  one_vs_one_min_distance, theory (object: see below), distance and lower (lists of K numbers).
* ``metrics``: samples, classes, dim, normalized, gnc1, ncc_accuracy, gnc2 (object
  {rho, rho_lower, max_gap, gap (max_gap's former name), rattlers, rattler_count} or
  null without weights), gnc3 (number or null),
  theory (object or null without weights); with ``--nc`` also ``nc``: the fields of
  :class:`gnc_ext.metrics.NCMetrics` (nc1_pinv, nc1_quotient, nc1_cdnv, nc2_*, w_*,
  nc3_*, nc4_agreement, nc5_ood, ...; numbers, or null where not measured).
* ``solve``: problem, dim, classes, rho, rho_lower, one_vs_one_min_distance,
  min_angle_cosine, rattlers (list of int), rattler_count, theory, saved (str or null).

``--device`` (demo, distance, metrics, solve) is checked before any work;
``--progress/--no-progress`` (the same four) forces or silences the bar, which by
default shows on a terminal once a run has taken a second.
* ``design``: classes, margin, dim, dim_source (the construction or bound that gives d),
  theory (at that d).

``theory`` objects: {closed_form (number or null: Thm 3.3), lower, upper, lower_source,
upper_source, thm39_valid} from :func:`gnc_ext.theory.rho_bounds` (for d = 1 the bounds
are the closed form and ``thm39_valid`` is false).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

SCHEMA_VERSION = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def _jsonable(v: Any) -> Any:
    """Numbers as numbers (non-finite floats as None), lists as lists, nested dicts kept."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    try:  # numpy / torch scalars
        import numbers

        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return _jsonable(float(v))
    except Exception:  # pragma: no cover
        pass
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    return str(v)


def _table_rows(rows: Dict[str, Any], prefix: str = "") -> List[tuple]:
    out = []
    for k, v in rows.items():
        if k in ("command", "schema_version"):
            continue
        key = prefix + k
        if isinstance(v, dict):
            out.extend(_table_rows(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out.append((key, ", ".join(map(str, v)) if len(v) <= 8 else f"[{len(v)} values]"))
        elif isinstance(v, float):
            out.append((key, f"{v:.6g}"))
        else:
            out.append((key, "-" if v is None else v))
    return out


def _emit(args, rows: Dict[str, Any], table: Optional[Dict[str, Any]] = None) -> None:
    """JSON (``--json``: ``rows`` with ``command`` and ``schema_version`` first) or a
    two-column table (``table`` when given, else ``rows``; nested keys as ``a.b``). Under
    torchrun only rank 0 prints."""
    if getattr(args, "rank", 0) != 0:
        return
    if getattr(args, "json", False):
        doc = {"command": args.command, "schema_version": SCHEMA_VERSION, **rows}
        print(json.dumps(_jsonable(doc), indent=2, allow_nan=False))
        return
    lines = _table_rows(table if table is not None else rows)
    width = max((len(k) for k, _ in lines), default=0)
    for k, v in lines:
        print(f"{k.ljust(width)}  {v}")


# ---- torchrun / --checkpoint (distance, metrics) ---------------------------------------
class _Ranks:
    """``gnc distance`` / ``gnc metrics`` under ``torchrun --nproc-per-node N``: when the
    command runs with ``WORLD_SIZE`` > 1 in its environment (set by torchrun) it joins the
    default process group (NCCL with ``--device cuda``, each rank on ``cuda:LOCAL_RANK``;
    gloo otherwise), the work is split over the ranks (``group=``), and only rank 0 prints
    and writes files. A context manager: the group is destroyed on exit."""

    def __init__(self, args):
        self.args, self.group, self.own = args, None, False
        args.rank = 0

    def __enter__(self) -> "_Ranks":
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return self
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = str(getattr(self.args, "device", None) or "").startswith("cuda")
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            self.own = True
        self.group = dist.group.WORLD
        self.args.rank = dist.get_rank()
        return self

    def __exit__(self, *exc) -> None:
        if self.own:
            import torch.distributed as dist

            if exc[0] is None:
                dist.barrier()
            dist.destroy_process_group()

    def ovr_kwargs(self) -> Dict[str, Any]:
        """``group=`` / ``checkpoint=`` / ``checkpoint_every=`` for one_vs_rest_distance."""
        kw: Dict[str, Any] = {"group": self.group}
        if self.args.checkpoint:
            kw.update(checkpoint=self.args.checkpoint, checkpoint_every=self.args.checkpoint_every)
        return kw


def _add_rank_options(s) -> None:
    s.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="resumable one-vs-rest run: solved classes are saved in DIR and a rerun resumes")
    s.add_argument("--checkpoint-every", type=_float, default=60.0, metavar="SECONDS",
                   help="at most one checkpoint write per this many seconds (default 60)")


def _theory(d: int, K: int) -> Dict[str, Any]:
    """The ``theory`` object of the JSON schema."""
    from . import theory

    cf = theory.rho_closed_form(d, K)
    if d < 2:
        return {"closed_form": cf, "lower": cf, "upper": cf, "lower_source": "exact (d = 1)",
                "upper_source": "exact (d = 1)", "thm39_valid": False}
    b = theory.rho_bounds(d, K)
    return {"closed_form": cf, "lower": b.lower, "upper": b.upper, "lower_source": b.lower_source,
            "upper_source": b.upper_source, "thm39_valid": b.valid}


NPY_MAGIC = b"\x93NUMPY"


def _split_key(path: str):
    """``FILE:KEY`` -> (FILE, KEY) when FILE exists and ``path`` itself does not."""
    if os.path.exists(path) or ":" not in path:
        return path, None
    base, key = path.rsplit(":", 1)
    if key and os.path.isfile(base):
        return base, key
    return path, None


def _pick(lead: str, path: str, keys: List[str], key: Optional[str], what: str):
    if key is not None:
        if key not in keys:
            raise CLIError(f"{lead}: has no {what} {key!r} (it holds: {', '.join(keys)})")
        return key
    if len(keys) == 1:
        return keys[0]
    if not keys:
        raise CLIError(f"{lead}: holds no {what}")
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    raise CLIError(f"{lead}: holds {len(keys)} {what}s ({shown}); name one as {path}:KEY")


def _lead(option: Optional[str], path: str) -> str:
    """How an error names an input: ``--option FILE`` for an option, ``FILE`` for a
    positional argument (``option`` None)."""
    return path if option is None else f"{option} {path}"


def load_array(path: str, option: Optional[str], *, ndim: int, dtype=None):
    """Load a .npy / .npz / .pt tensor as a torch tensor, checked. ``FILE.npz:KEY`` (or
    ``FILE.pt:KEY`` for a dict of tensors) picks one array of several. Errors name the
    input as the user typed it: ``--option FILE``, or ``FILE`` when ``option`` is None."""
    import numpy as np
    import torch

    if not path:
        raise CLIError(f"{option or 'input'}: no file given")
    typed = path
    path, key = _split_key(path)
    lead = _lead(option, typed)
    if not os.path.isfile(path):
        raise CLIError(f"{lead}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if key is not None and ext == ".npy":
        raise CLIError(f"{lead}: {path} is a .npy file (one array); drop the ':{key}'")
    try:
        if ext == ".npy":
            with open(path, "rb") as f:
                if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                    raise CLIError(f"{lead}: not a NumPy .npy array file (no NPY header)")
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        elif ext == ".npz":
            import zipfile

            if not zipfile.is_zipfile(path):
                raise CLIError(f"{lead}: not a NumPy .npz archive (not a zip file)")
            with np.load(path, allow_pickle=False) as z:
                t = torch.from_numpy(z[_pick(lead, path, list(z.files), key, "array")])
        elif ext in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj[_pick(lead, path, [str(k) for k in obj], key, "entry")] if obj else None
            if not isinstance(obj, torch.Tensor):
                raise CLIError(f"{lead}: does not hold a tensor")
            t = obj
        else:
            raise CLIError(f"{lead}: unsupported file type {ext!r} (use .npy, .npz or .pt)")
    except CLIError:
        raise
    except Exception as exc:  # unreadable / corrupt file: the reason's first line only
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CLIError(f"{lead}: cannot read it: {type(exc).__name__}: {first}") from None
    if t.dim() != ndim:
        raise CLIError(f"{lead}: expected a {ndim}-D array, got shape {tuple(t.shape)}")
    if dtype == "float":
        if not (t.is_floating_point()):
            raise CLIError(f"{lead}: expected floating-point values, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise CLIError(f"{lead}: contains NaN or Inf values")
    elif dtype == "int":
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CLIError(f"{lead}: expected integer labels, got {t.dtype}")
        t = t.long()
    return t


def _in_cli_terms(exc: Exception, names: Dict[str, str]) -> CLIError:
    """A library error (``NAME: ...``, NAME a Python argument) restated with the option or
    file the user typed in place of NAME, and the CLI's flags in place of keyword hints."""
    msg = str(exc)
    head, sep, rest = msg.partition(": ")
    if sep and head in names:
        msg = f"{names[head]}: {rest}"
    for py, flag in (("pass normalize=True", "pass --normalize"), ("rattler_tol", "--rattler-tol")):
        msg = msg.replace(py, flag)
    return CLIError(msg)


def check_device(value: Optional[str]) -> Optional[str]:
    """``--device``: None (the command's default), ``cpu``, ``cuda`` or ``cuda:N``, usable
    here (a GPU torch sees and a gnc_ext built with CUDA kernels); else CLIError."""
    if value is None:
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device: expected cpu, cuda or cuda:N, got {value!r}") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise CLIError(f"--device: {value!r} is not supported (cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise CLIError(f"--device: {value} asked for, but torch {torch.__version__} sees no usable GPU here; "
                       "use --device cpu")
    from . import build_info

    if not build_info()["cuda_compiled"]:
        raise CLIError(f"--device: {value} asked for, but this gnc_ext was built without CUDA kernels "
                       "(`gnc info` shows the build); use --device cpu")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise CLIError(f"--device: {value} asked for, but only {n} GPU(s) are visible")
    return str(dev)


def _cmd_info(args) -> int:
    from . import build_info

    _emit(args, build_info())
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    try:
        taus = [float(x) for x in args.taus.split(",")] if args.taus else [0.05, 1.0]
    except ValueError:
        raise CLIError(f"--taus: expected comma-separated numbers, got {args.taus!r}") from None
    try:
        s = run_demo(args.out, taus=taus, epochs=args.epochs, seed=args.seed, device=args.device,
                     plots=not args.no_plot, log=(lambda *a, **k: None) if args.json else print,
                     progress=args.progress)
    except (ValueError, TypeError) as exc:
        raise _in_cli_terms(exc, {"taus": "--taus", "epochs": "--epochs", "device": "--device"}) from None
    if args.json:
        _emit(args, {k: v for k, v in s.items() if k != "histories"})
    return 0


def _cmd_distance(args) -> int:
    import torch

    W = load_array(args.weights, None, ndim=2, dtype="float")  # errors name the file as typed
    if W.dtype not in (torch.float32, torch.float64):
        W = W.double()
    if args.device:
        W = W.to(args.device)
    with _Ranks(args) as ranks:
        return _distance_report(args, W, ranks)


def _distance_report(args, W, ranks: "_Ranks") -> int:
    import torch

    import gnc_ext

    src = args.weights
    try:
        r = gnc_ext.one_vs_rest_distance(W, normalize=args.normalize, rattler_tol=args.rattler_tol,
                                         progress=args.progress if args.rank == 0 else False,
                                         **ranks.ovr_kwargs())
    except (ValueError, TypeError) as exc:  # the library's advice in the CLI's terms
        raise _in_cli_terms(exc, {"W": src, "checkpoint": f"--checkpoint {args.checkpoint}",
                                  "checkpoint_every": "--checkpoint-every"}) from None
    K, d = W.shape
    nn = gnc_ext.one_vs_one_distance(W if not args.normalize else gnc_ext.normalize_rows(W))
    rows: Dict[str, Any] = {
        "classes": K, "dim": d, "normalized": bool(args.normalize),
        "rho": float(r.rho), "rho_lower": float(r.rho_lower), "max_gap": float(r.max_gap),
        "argmin_class": int(torch.argmin(r.distance)),
        "rattler_tol": float(args.rattler_tol), "rattlers": r.rattlers.cpu().tolist(),
        "rattler_count": int(r.rattlers.numel()),
        "one_vs_one_min_distance": float(nn.min),
        "theory": _theory(d, K),
        "distance": r.distance.cpu().tolist(), "lower": r.lower.cpu().tolist(),
    }
    worst = torch.argsort(r.distance)[: min(5, K)].cpu().tolist()
    table = {k: v for k, v in rows.items() if k not in ("distance", "lower", "rattlers", "rattler_count")}
    table["rattlers"] = rows["rattler_count"]
    table["closest classes"] = ", ".join(f"{k} ({float(r.distance[k]):.4g})" for k in worst)
    _emit(args, rows, table)
    if args.plot and args.rank == 0:
        from . import plot

        plot.plot_distances(r, path=args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0


def _metrics_inputs(args):
    """Features, labels, weights and K of ``gnc metrics``, cross-checked; every refusal
    names the option and file the user typed."""
    import torch

    fl, ll = _lead("--features", args.features), _lead("--labels", args.labels)
    H = load_array(args.features, "--features", ndim=2, dtype="float").to(torch.float32)
    y = load_array(args.labels, "--labels", ndim=1, dtype="int")
    N, d = H.shape
    if N == 0:
        raise CLIError(f"{fl}: holds no rows (no samples)")
    if y.shape[0] != N:
        if y.shape[0] == d:
            raise CLIError(f"{fl}: shape {tuple(H.shape)} looks transposed: its {d} columns match the "
                           f"{y.shape[0]} labels of {args.labels}; features must be (N, d), one row per label")
        raise CLIError(f"{ll}: holds {y.shape[0]} labels, but {fl} has {N} rows (one label per row)")
    W = None
    if args.weights:
        wl = _lead("--weights", args.weights)
        W = load_array(args.weights, "--weights", ndim=2, dtype="float").to(torch.float32)
        if W.shape[1] != d:
            hint = " (it looks transposed: save it as (K, d))" if W.shape[0] == d else ""
            raise CLIError(f"{wl}: width {W.shape[1]} does not match the feature width {d} of "
                           f"{args.features}{hint}")
    if args.classes is not None:
        K, source = args.classes, f"--classes {args.classes}"
        if W is not None and W.shape[0] != K:
            raise CLIError(f"--classes: {K} does not match the {W.shape[0]} rows of {args.weights}")
    elif W is not None:
        K, source = W.shape[0], f"the {W.shape[0]} rows of {args.weights}"
    else:
        K, source = None, None
    if args.classes is not None and K < 2:
        raise CLIError(f"--classes: {K}; GNC needs at least 2 classes")
    if K is not None and K < 2:
        raise CLIError(f"{_lead('--weights', args.weights)}: holds {K} class row; GNC needs at least 2 classes")
    bad = (y < 0) if K is None else (y < 0) | (y >= K)
    if bool(bad.any()):
        n, pos = int(bad.sum()), int(torch.nonzero(bad)[0])
        where = f"outside 0..{K - 1} ({source})" if K is not None else "negative (labels are class indices)"
        raise CLIError(f"{ll}: {n} of {N} labels {'is' if n == 1 else 'are'} {where}, "
                       f"e.g. {int(y[pos])} at position {pos}")
    if K is None:
        K = int(y.max()) + 1
        present = int(torch.unique(y).numel())
        if present < K:
            raise CLIError(f"{ll}: the labels run from 0 to {K - 1}, but only {present} of those {K} classes "
                           "occur; pass --classes K (or --weights) to say how many classes there are")
        if K < 2:
            raise CLIError(f"{ll}: every label is 0 (one class); GNC needs at least 2 classes")
    return H, y, W, K


def _cmd_metrics(args) -> int:
    H, y, W, K = _metrics_inputs(args)
    with _Ranks(args) as ranks:
        return _metrics_report(args, H, y, W, K, ranks)


def _metrics_report(args, H, y, W, K, ranks: "_Ranks") -> int:
    import torch

    import gnc_ext
    from . import _progress

    names = {"features": f"--features {args.features}", "labels": f"--labels {args.labels}",
             "W": f"--weights {args.weights}", "num_classes": "--classes", "acc": f"--labels {args.labels}",
             "kernel": "--kernel", "cdnv_exponent": "--cdnv-exponent", "device": "--device",
             "ood_mean": f"--ood-features {args.ood_features}", "checkpoint": f"--checkpoint {args.checkpoint}",
             "checkpoint_every": "--checkpoint-every"}
    dev = args.device or "cpu"
    chunk = 65536
    steps = -(-H.shape[0] // chunk) + 2 + bool(args.nc)
    bar = _progress.bar(args.progress if args.rank == 0 else False, steps, "gnc metrics")
    try:
        acc = gnc_ext.metrics.GNCAccumulator(K, H.shape[1], normalize=not args.no_normalize, device=dev)
        for s in range(0, H.shape[0], chunk):
            acc.update(H[s : s + chunk].to(dev), y[s : s + chunk].to(dev))
            if bar is not None:
                bar.update(1)
        Wd = None if W is None else W.to(dev)
        split = ranks.group is not None or bool(args.checkpoint)
        res = acc.compute(W=Wd, gnc2=False if split else "auto")
        g2 = res.gnc2
        if split and Wd is not None:  # GNC2 over the ranks and/or resumable
            g2 = gnc_ext.metrics.gnc2(Wd, **ranks.ovr_kwargs())
        if bar is not None:
            bar.update(1)
        ncc = float(acc.ncc_accuracy(H.to(dev), y.to(dev)))
        if bar is not None:
            bar.update(1)
        nc = None
        if args.nc:
            ood = None
            if args.ood_features:
                ood = load_array(args.ood_features, "--ood-features", ndim=2, dtype="float").to(torch.float64)
                if ood.shape[1] != H.shape[1]:
                    raise CLIError(f"--ood-features {args.ood_features}: width {ood.shape[1]} does not match "
                                   f"the feature width {H.shape[1]} of {args.features}")
                if not args.no_normalize:
                    ood = torch.nn.functional.normalize(ood, dim=1)
                ood = ood.mean(0).to(dev)
            # NC4's data pass: each rank counts its own share of the rows
            mine = H if ranks.group is None else H[args.rank :: torch.distributed.get_world_size()]
            nc = gnc_ext.metrics.nc_metrics(acc, Wd, ood_mean=ood, kernel=args.kernel,
                                            cdnv_exponent=args.cdnv_exponent,
                                            features=mine.to(dev) if W is not None else None,
                                            gnc2=g2 if g2 is not None else False, group=ranks.group).to_dict()
            if bar is not None:
                bar.update(1)
    except (ValueError, TypeError) as exc:
        raise _in_cli_terms(exc, names) from None
    finally:
        if bar is not None:
            bar.close()
    rows: Dict[str, Any] = {
        "samples": H.shape[0], "classes": K, "dim": H.shape[1], "normalized": not args.no_normalize,
        "gnc1": float(res.gnc1), "ncc_accuracy": ncc,
        "gnc2": None if g2 is None else {
            "rho": float(g2.rho), "rho_lower": float(g2.rho_lower), "max_gap": float(g2.max_gap),
            "gap": float(g2.max_gap),  # the former name of max_gap, kept within schema version 1
            "rattlers": g2.rattlers.cpu().tolist(), "rattler_count": int(g2.rattlers.numel())},
        "gnc3": None if res.gnc3 is None else float(res.gnc3),
        "theory": _theory(H.shape[1], K) if W is not None else None,
    }
    if args.nc:
        rows["nc"] = nc
    _emit(args, rows)
    return 0


_SOLVE_NAMES = {"d": "--dim", "dim": "--dim", "K": "--classes", "num_classes": "--classes",
                "classes": "--classes", "restarts": "--restarts", "max_iter": "--max-iter",
                "time_limit": "--time-limit", "seed": "--seed", "device": "--device"}


def _cmd_solve(args) -> int:
    import numpy as np

    import gnc_ext

    kw = dict(seed=args.seed, progress=args.progress)
    if args.restarts is not None:
        kw["restarts"] = args.restarts
    if args.max_iter is not None:
        kw["max_iter"] = args.max_iter
    if args.time_limit is not None:
        kw["time_limit"] = args.time_limit
    if args.save and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        raise CLIError(f"--save {args.save}: cannot write it: no such directory")  # before the search
    names = dict(_SOLVE_NAMES)
    if args.init:
        W0 = load_array(args.init, "--init", ndim=2, dtype="float")
        if tuple(W0.shape) != (args.classes, args.dim):
            raise CLIError(f"--init {args.init}: expected a ({args.classes}, {args.dim}) code "
                           f"(--classes x --dim), got {tuple(W0.shape)}")
        kw["init"] = W0
        names["init"] = f"--init {args.init}"
        if args.restarts is None:
            kw["restarts"] = 0  # polish the given code only, unless --restarts asks for a search too
    try:
        if args.problem == "softmax-code":
            r = gnc_ext.solvers.softmax_code(args.dim, args.classes, device=args.device, **kw)
        else:
            r = gnc_ext.solvers.tammes(args.dim, args.classes, device=args.device, **kw)
    except (ValueError, TypeError) as exc:
        raise _in_cli_terms(exc, names) from None
    W = r.W.detach().cpu().double()
    cert = gnc_ext.one_vs_rest_distance(W)
    nn = gnc_ext.one_vs_one_distance(W)
    if args.save:
        try:
            if args.save.endswith(".pt"):
                import torch

                torch.save(W, args.save)
            else:
                np.save(args.save, W.numpy())
        except OSError as exc:
            raise CLIError(f"--save {args.save}: cannot write it: {exc.strerror or exc}") from None
    rows: Dict[str, Any] = {
        "problem": args.problem, "dim": args.dim, "classes": args.classes,
        "rho": float(cert.rho), "rho_lower": float(cert.rho_lower),
        "one_vs_one_min_distance": float(nn.min), "min_angle_cosine": 1.0 - float(nn.min) ** 2 / 2.0,
        "rattlers": cert.rattlers.cpu().tolist(), "rattler_count": int(cert.rattlers.numel()),
        "theory": _theory(args.dim, args.classes), "saved": args.save,
    }
    _emit(args, rows)
    return 0


def _cmd_design(args) -> int:
    import gnc_ext

    try:
        des = gnc_ext.theory.design_dim(args.classes, args.margin)
    except (ValueError, TypeError) as exc:
        raise _in_cli_terms(exc, {"rho": "--margin", "K": "--classes", "num_classes": "--classes"}) from None
    rows = {"classes": args.classes, "margin": args.margin, "dim": des.d, "dim_source": des.source,
            "theory": _theory(des.d, args.classes)}
    _emit(args, rows)
    if args.plot:
        from . import plot

        hi = max(8, int(des.d * 1.6) + 2)
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


def _add_progress(s: argparse.ArgumentParser) -> None:
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: on a terminal, once the run has taken a moment)")


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
    _add_progress(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("distance", help="one-vs-rest distances of class weights, with certificate and rattlers")
    s.add_argument("weights", metavar="W", help="(K, d) weights as .npy, .npz or .pt (FILE.npz:KEY picks one array)")
    s.add_argument("--normalize", action="store_true", help="normalise rows first (else rows must be unit-norm)")
    s.add_argument("--rattler-tol", type=_float, default=1e-6,
                   help="report classes whose certified distance exceeds rho by more than this (default 1e-6)")
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: where W is, the CPU)")
    s.add_argument("--plot", default=None, metavar="FILE.png")
    _add_progress(s)
    s.add_argument("--json", action="store_true")
    _add_rank_options(s)
    s.set_defaults(func=_cmd_distance)

    s = sub.add_parser("metrics", help="GNC1/2/3 and NCC accuracy of features (and classifier weights)")
    s.add_argument("--features", required=True, metavar="F", help="(N, d) features (.npy/.npz/.pt)")
    s.add_argument("--labels", required=True, metavar="Y", help="(N,) integer labels")
    s.add_argument("--weights", default=None, metavar="W", help="(K, d) classifier weights (for GNC2, GNC3)")
    s.add_argument("--classes", type=_positive_int, default=None, help="K (default: from W or max label + 1)")
    s.add_argument("--no-normalize", action="store_true", help="do not L2-normalise features")
    s.add_argument("--nc", action="store_true",
                   help="also the neural-collapse suite NC1-NC5 (gnc_ext.metrics.nc_metrics; NC3/NC4 need --weights)")
    s.add_argument("--kernel", choices=["log", "riesz", "distance"], default="log",
                   help="kernel of the NC2 hyperspherical-uniformity statistics (with --nc)")
    s.add_argument("--cdnv-exponent", type=_float, default=1.0, metavar="P",
                   help="p in the CDNV's |mu_i - mu_j|^(2p) (with --nc; > 0)")
    s.add_argument("--ood-features", default=None, metavar="F",
                   help="(M, d) out-of-distribution features for NC5 (with --nc)")
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    _add_progress(s)
    s.add_argument("--json", action="store_true")
    _add_rank_options(s)
    s.set_defaults(func=_cmd_metrics)

    s = sub.add_parser("solve", help="solve the Softmax Code or Tammes problem")
    s.add_argument("problem", choices=["softmax-code", "tammes"])
    s.add_argument("--dim", "-d", type=_positive_int, required=True)
    s.add_argument("--classes", "-K", type=_positive_int, required=True)
    s.add_argument("--restarts", type=_positive_int, default=None)
    s.add_argument("--max-iter", type=_positive_int, default=None)
    s.add_argument("--init", default=None, metavar="FILE",
                   help="a (K, d) code (.npy/.npz/.pt) to polish (alone, unless --restarts is given)")
    s.add_argument("--time-limit", type=_float, default=None, metavar="SECONDS")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    s.add_argument("--save", default=None, metavar="FILE", help="save the code (.npy or .pt)")
    _add_progress(s)

    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_solve)

    s = sub.add_parser("design", help="feature dimension that guarantees K classes at margin rho "
                                      "(Thm 3.3 constructions, Thm 3.9 lower bound)")
    s.add_argument("--classes", "-K", type=_positive_int, required=True)
    s.add_argument("--margin", "-r", type=_float, required=True, metavar="RHO")
    s.add_argument("--plot", default=None, metavar="FILE.png")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_design)
    return p


def subcommands() -> List[str]:
    """The names of the subcommands, in the order ``gnc --help`` lists them."""
    for a in build_parser()._actions:
        if isinstance(a, argparse._SubParsersAction):
            return list(a.choices)
    return []  # pragma: no cover


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        try:
            if hasattr(args, "device"):
                args.device = check_device(args.device)
            rc = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows up here at the latest
            return rc
        except CLIError as exc:
            msg = str(exc)
        except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
            msg = str(exc)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            msg = str(exc)
        print(f"gnc {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly. Point stdout at /dev/null
        # so the interpreter's final flush cannot raise again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover
            pass
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
