"""Resumable one-vs-rest runs: a checkpoint directory of solved class blocks.

Layout of ``PATH/``:

* ``meta.json`` — the format tag and the problem: ``K``, ``d``, ``dtype``, the digest of
  ``W``, every option that changes a class's solution, and the block size. Written once,
  atomically, when the directory is created.
* ``part-000001.pt``, ``part-000002.pt``, … — each holds the blocks solved since the
  previous part (per block: distances, lower bounds, projections, supports, convex
  weights, solver status and iterations, and the block's counters). Written to a
  temporary name in the same directory, flushed to disk (``fsync``), then renamed
  (``os.replace``, atomic on POSIX): a process killed while writing leaves only a
  ``.tmp`` file, which the next writer removes, and never a truncated part.

A run with other inputs refuses the directory and names what differs. Only one process
writes (rank 0 of a group); every rank reads on resume, so with several nodes ``PATH``
must be on a shared file system (the ranks check that they loaded the same blocks).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict

import torch

FORMAT = "gnc_ext.one_vs_rest.checkpoint/1"
_PART = re.compile(r"^part-(\d{6})\.pt$")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    tmp = f"{os.path.join(os.path.dirname(path), '.' + os.path.basename(path))}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(path))


class HullCheckpoint:
    """The checkpoint directory of one problem (see the module docstring).

    ``problem`` maps field names to JSON-able values that identify the problem; a directory
    written for other values is refused with ``ValueError`` naming the fields that differ.
    ``writer`` (one process of a group) creates the directory and writes parts."""

    def __init__(self, path, problem: Dict[str, Any], *, writer: bool = True, name: str = "checkpoint"):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
        self.path = os.fspath(path)
        if not self.path:
            raise ValueError(f"{name}: expected a non-empty path")
        self.problem = dict(problem)
        self.writer = writer
        self.name = name
        self._saved: set = set()
        self._seq = 0

    def _meta_path(self) -> str:
        return os.path.join(self.path, "meta.json")

    def open(self) -> Dict[int, Dict[str, Any]]:
        """Check or create the directory; return the solved blocks found (block start → data,
        CPU tensors)."""
        p, name = self.path, self.name
        if os.path.exists(p) and not os.path.isdir(p):
            raise ValueError(f"{name}: {p!r} exists and is not a directory (a one_vs_rest checkpoint is a directory)")
        meta_path = self._meta_path()
        if os.path.isdir(p) and os.path.exists(meta_path):
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{name}: cannot read {meta_path!r}: {e}") from e
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{name}: {p!r} is not a one_vs_rest_distance checkpoint (format "
                                 f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
            old = meta.get("problem", {})
            diff = [f"{k} ({old.get(k)!r} in the checkpoint, {v!r} now)"
                    for k, v in self.problem.items() if old.get(k) != v]
            if diff:
                raise ValueError(f"{name}: {p!r} was written for another problem; these differ: " + ", ".join(diff)
                                 + ". Use another path, or delete it to start afresh")
        elif os.path.isdir(p) and any(not e.startswith(".") for e in os.listdir(p)):
            raise ValueError(f"{name}: {p!r} is a non-empty directory without meta.json, not a one_vs_rest_distance "
                             "checkpoint; use a new or empty directory")
        elif self.writer:
            os.makedirs(p, exist_ok=True)
            body = json.dumps({"format": FORMAT, "problem": self.problem}, indent=1, sort_keys=True).encode()
            _atomic_write(meta_path, lambda f: f.write(body))
        blocks: Dict[int, Dict[str, Any]] = {}
        if not os.path.isdir(p):
            return blocks
        for entry in sorted(os.listdir(p)):
            full = os.path.join(p, entry)
            if entry.startswith(".") and ".tmp." in entry:
                if self.writer:  # left by a process killed while writing
                    try:
                        os.unlink(full)
                    except OSError:
                        pass
                continue
            m = _PART.match(entry)
            if not m:
                continue
            self._seq = max(self._seq, int(m.group(1)))
            try:
                part = torch.load(full, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - a damaged file is named, not half-used
                raise ValueError(f"{name}: cannot read {full!r} ({type(e).__name__}: {e}); delete it to redo "
                                 "its classes") from e
            if part.get("problem") != self.problem:
                raise ValueError(f"{name}: {full!r} belongs to another problem than {meta_path!r}")
            for start, data in part["blocks"].items():
                blocks[int(start)] = data
        self._saved = set(blocks)
        return blocks

    def save(self, blocks: Dict[int, Dict[str, Any]]) -> int:
        """Write the blocks not written yet as one new part (atomically). Returns how many."""
        new = {int(k): v for k, v in blocks.items() if int(k) not in self._saved}
        if not new or not self.writer:
            return 0
        self._seq += 1
        cpu = {k: {f: (t.detach().cpu() if isinstance(t, torch.Tensor) else t) for f, t in v.items()}
               for k, v in new.items()}
        part = {"format": FORMAT, "problem": self.problem, "blocks": cpu}
        _atomic_write(os.path.join(self.path, f"part-{self._seq:06d}.pt"), lambda f: torch.save(part, f))
        self._saved.update(new)
        return len(new)
