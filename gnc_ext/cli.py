"""The ``gnc`` command. Subcommands print readable tables by default and JSON with
``--json``. Errors are one clear line on stderr and a non-zero exit code."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional


def _print_table(rows: Dict[str, Any]) -> None:
    width = max(len(k) for k in rows) if rows else 0
    for k, v in rows.items():
        print(f"{k.ljust(width)}  {v}")


def _cmd_info(args) -> int:
    from . import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_table(info)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gnc", description="gnc_ext: Generalized Neural Collapse at large K")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("info", help="build information (compiler, OpenMP, CUDA archs, GPU usable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
        print(f"gnc {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
