"""The search skeleton shared by the code solvers (:func:`~gnc_ext.solvers.tammes` and
:func:`~gnc_ext.solvers.softmax_code`).

Both solvers run the same outer loop: validate the common arguments, draw random
starts from one seeded generator in batches, polish the best of each batch, keep the
best configuration so far, show a progress bar, and stop at a deadline or when a known
optimum is reached. This module holds that loop's parts; the solvers keep only their
objective, smoothed phase and polish.

* :func:`check_args` validates the arguments both solvers take (naming each one) and
  the optional ``init`` codes.
* :class:`Search` holds the state of one run: the start time and deadline, the seeded
  ``torch.Generator``, the progress bar, and the best value with its payload (always
  *maximised*: the Tammes solver offers minus the largest cosine), plus the history of
  best values.

Private to :mod:`gnc_ext.solvers` (the package's solvers share it; nothing outside
imports it).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, List, Optional

import torch

from .. import _progress, _validate
from . import _sphere


@dataclasses.dataclass
class SearchArgs:
    """The validated common arguments (see :func:`check_args`)."""

    d: int
    K: int
    restarts: int
    max_iter: int
    batch: int
    polish_top: int
    polish_iter: int
    tol: float
    time_limit: Optional[float]
    seed: Optional[int]
    progress: bool
    device: torch.device
    inits: list


def check_args(d, K, *, restarts, max_iter, batch, polish_top, polish_iter, tol, time_limit, seed,
               progress, device, init) -> SearchArgs:
    """Validate what both solvers take, in this order, raising ``TypeError`` /
    ``ValueError`` naming the argument: sizes ``d >= 1`` and ``K >= 2``; ``restarts >= 0``
    (0 only with ``init`` codes); ``max_iter``, ``batch``, ``polish_top >= 1``;
    ``polish_iter >= 0``; ``tol >= 0``; ``time_limit`` None or > 0; ``seed`` None or an
    integer; ``progress`` None / True / False (resolved: None is "stderr is a
    terminal"); ``device``; ``init`` None or (K, d) codes (returned normalised, as
    float64 numpy arrays, in ``inits``)."""
    d = _validate.integer(d, "d", minimum=1)
    K = _validate.integer(K, "K", minimum=2)
    restarts = _validate.integer(restarts, "restarts", minimum=0)
    max_iter = _validate.integer(max_iter, "max_iter", minimum=1)
    batch = _validate.integer(batch, "batch", minimum=1)
    polish_top = _validate.integer(polish_top, "polish_top", minimum=1)
    polish_iter = _validate.integer(polish_iter, "polish_iter", minimum=0)
    tol = _validate.positive_float(tol, "tol", allow_zero=True)
    if time_limit is not None:
        time_limit = _validate.positive_float(time_limit, "time_limit")
    seed = _validate.seed(seed)
    progress = _progress.enabled(progress)
    dev = _validate.device(device)
    inits = _sphere.initial_codes(init, K, d, restarts)
    return SearchArgs(d, K, restarts, max_iter, batch, polish_top, polish_iter, tol, time_limit, seed,
                      progress, dev, inits)


def generator(seed: Optional[int]) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (None: from a nondeterministic source)."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


class Search:
    """State of one solver run.

    Args:
        t0: the run's start (``time.perf_counter()``).
        time_limit: seconds after ``t0`` at which :meth:`out_of_time` turns True (None: never).
        target: the best value at which the search may stop (:meth:`reached`); None when
            no optimum is known.
        margin: an offered value must exceed the best by more than this to replace it.

    Attributes:
        value: the best value so far (``-inf`` before the first offer).
        best: the payload offered with it (a dict).
        history: values appended by :meth:`record`.
        deadline: ``t0 + time_limit`` or None.
        bar: the progress bar of :meth:`open_bar` (None when not shown).
    """

    def __init__(self, t0: float, time_limit: Optional[float], target: Optional[float] = None,
                 margin: float = 0.0):
        self.t0 = t0
        self.deadline = None if time_limit is None else t0 + time_limit
        self.target = target
        self.margin = margin
        self.value = -math.inf
        self.best: Dict[str, Any] = {}
        self.history: List[float] = []
        self.bar = None

    # -- best so far ------------------------------------------------------------
    def offer(self, value: float, **payload) -> bool:
        """Keep ``payload`` as the best when ``value`` beats the best by more than
        ``margin``; returns whether it did."""
        if value > self.value + self.margin:
            self.set(value, **payload)
            return True
        return False

    def set(self, value: float, **payload) -> None:
        """Make ``value`` / ``payload`` the best unconditionally (fields not given are kept)."""
        self.value = value
        self.best.update(payload)

    def reached(self) -> bool:
        """Whether the best value has reached ``target``."""
        return self.target is not None and self.value >= self.target

    def record(self, value: Optional[float] = None) -> None:
        """Append ``value`` (default: the best value) to ``history``."""
        self.history.append(self.value if value is None else value)

    # -- time --------------------------------------------------------------------
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    # -- progress bar -------------------------------------------------------------
    def open_bar(self, progress: bool, total: int, desc: str) -> None:
        self.bar = _progress.bar(progress, total, desc)

    def advance(self, n: int, **postfix) -> None:
        """Move the bar by ``n`` and show ``postfix`` (no-op without a bar)."""
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix)

    def note(self, text: str) -> None:
        """Show ``text`` as the bar's postfix (no-op without a bar)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Search":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
