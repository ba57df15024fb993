"""Progress bars, shown only where someone is watching.

Every function of the package that can show a tqdm bar takes ``progress``:

* ``None`` (the default): a bar only when stderr is a terminal (``sys.stderr.isatty()``),
  so logs, pipes and CI output get no bar text, and only once the work has run for
  ``AUTO_DELAY_S`` seconds (tqdm's ``delay``), so every long run shows one and a short
  run shows none, whatever its size;
* ``True``: always a bar (on stderr, wherever it goes);
* ``False``: never.

``enabled(progress)`` resolves that choice; ``bar(progress, total, desc)`` returns a
tqdm bar or None (also None when tqdm is not installed). Callers update a bar only
when it is not None and close it in a ``finally``.
"""
from __future__ import annotations

import sys
from typing import Optional

__all__ = ["enabled", "bar", "AUTO_DELAY_S"]

AUTO_DELAY_S = 1.0


def enabled(progress, name: str = "progress") -> bool:
    """``progress`` (None, True or False) resolved to whether a bar is shown.

    Raises ``TypeError`` naming ``name`` for anything else (e.g. ``1``)."""
    if progress is None:
        try:
            return bool(sys.stderr is not None and sys.stderr.isatty())
        except (AttributeError, ValueError):  # a closed or replaced stderr
            return False
    if not isinstance(progress, bool):
        raise TypeError(f"{name}: expected None (a bar when stderr is a terminal), True or False, "
                        f"got {type(progress).__name__}")
    return progress


def bar(progress, total: Optional[int], desc: str, **kw):
    """A ``tqdm.auto.tqdm`` bar (``leave=False`` unless given) when :func:`enabled`, else None.
    ``progress`` must already be validated or is validated here; with ``None`` the bar
    appears only after ``AUTO_DELAY_S`` seconds (unless ``delay`` is given)."""
    if progress is None:
        kw.setdefault("delay", AUTO_DELAY_S)
    if not enabled(progress):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    kw.setdefault("leave", False)
    return tqdm(total=total, desc=desc, **kw)
