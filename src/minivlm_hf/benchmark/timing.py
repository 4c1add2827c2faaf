"""Wall-clock comparison of callables, interleaved so that machine noise hits every contender alike.

On a shared machine the load changes from second to second; timing A ten times and then B ten times
lets a burst of someone else's work land on one side only. :func:`compare` therefore runs the
contenders in rounds (A, B, A, B, ...) after a warm-up, each run timed with ``time.perf_counter``
under ``torch.inference_mode``, and reports the median (robust to bursts) together with min, max and
mean. Nothing here asserts anything about speed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

from ..progress import progress as progress_bar

__all__ = ["TimingStats", "compare", "time_callable", "ratio", "set_threads", "thread_info"]


@dataclass
class TimingStats:
    """Per-run wall times (seconds) of one callable and their summary statistics."""

    name: str
    runs: list[float] = field(default_factory=list)
    warmup: int = 0
    threads: int | None = None
    #: Wall times of the untimed warm-up calls (first-call costs: kernel selection, allocation).
    warmup_runs: list[float] = field(default_factory=list)

    def _check(self) -> None:
        if not self.runs:
            raise ValueError(f"no timed runs recorded for {self.name!r}")

    @property
    def median(self) -> float:
        self._check()
        return float(statistics.median(self.runs))

    @property
    def min(self) -> float:
        self._check()
        return float(min(self.runs))

    @property
    def max(self) -> float:
        self._check()
        return float(max(self.runs))

    @property
    def mean(self) -> float:
        self._check()
        return float(statistics.fmean(self.runs))

    @property
    def stdev(self) -> float:
        self._check()
        return float(statistics.stdev(self.runs)) if len(self.runs) > 1 else 0.0

    def format(self, unit: str = "ms", digits: int = 1) -> str:
        """``"123.4 ms (110.2–140.0)"``: median and (min–max)."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        return (
            f"{self.median * scale:.{digits}f} {unit} "
            f"({self.min * scale:.{digits}f}–{self.max * scale:.{digits}f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "mean_s": self.mean,
            "stdev_s": self.stdev,
            "runs_s": list(self.runs),
            "warmup": self.warmup,
            "warmup_runs_s": list(self.warmup_runs),
            "threads": self.threads,
        }

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        if not self.runs:
            return f"TimingStats({self.name!r}, no runs)"
        return f"TimingStats({self.name!r}, {self.format()}, n={len(self.runs)})"


def ratio(a: TimingStats | float, b: TimingStats | float) -> float:
    """``a / b`` of medians (or of plain numbers): < 1 means ``a`` is faster/smaller than ``b``.

    Returns ``nan`` when ``b`` is zero.
    """
    va = a.median if isinstance(a, TimingStats) else float(a)
    vb = b.median if isinstance(b, TimingStats) else float(b)
    return va / vb if vb != 0 else math.nan


@contextlib.contextmanager
def set_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count afterwards.

    ``None`` leaves the count alone. Yields the count in effect. (Inter-op threads cannot be changed
    once torch has started parallel work, so only the intra-op count is set.)
    """
    previous = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def thread_info() -> str:
    """One line for reports: intra-op and inter-op thread counts."""
    return f"torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(
    callables: Mapping[str, Callable[[], Any]],
    runs: int = 10,
    warmup: int = 2,
    interleave: bool = True,
    *,
    inference_mode: bool = True,
    disable_gc: bool = True,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, TimingStats]:
    """Time zero-argument callables; returns ``{name: TimingStats}`` in the input order.

    ``warmup`` untimed rounds run first (also interleaved), then ``runs`` timed rounds. With
    ``interleave=True`` each round calls every callable once, in order (A, B, A, B, ...); with
    ``False`` all runs of A come before all runs of B. Runs happen under ``torch.inference_mode``
    (unless ``inference_mode=False``), with Python's garbage collector collected once and then
    paused for the whole schedule (``disable_gc``), and with ``threads`` intra-op threads when
    given (see :func:`set_threads`). ``progress``: a bar over the calls, on a terminal only (it advances between
    the timed calls, outside what is measured).
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(callables)
    if not names:
        raise ValueError("no callables to compare")

    mode = torch.inference_mode() if inference_mode else contextlib.nullcontext()
    gc_was_enabled = gc.isenabled()
    with set_threads(threads) as n_threads, mode:
        stats = {name: TimingStats(name=name, warmup=warmup, threads=n_threads) for name in names}
        if interleave:
            schedule = [(r, name) for r in range(warmup + runs) for name in names]
        else:
            schedule = [(r, name) for name in names for r in range(warmup + runs)]
        if disable_gc:
            gc.collect()
            gc.disable()
        try:
            for r, name in progress_bar(schedule, desc=f"timing {', '.join(names)}"[:60], unit="call",
                                        enabled=progress):
                elapsed = _timed(callables[name])
                (stats[name].runs if r >= warmup else stats[name].warmup_runs).append(elapsed)
        finally:
            if gc_was_enabled:
                gc.enable()
    return stats


def time_callable(
    fn: Callable[[], Any], runs: int = 10, warmup: int = 2, *, name: str = "fn", **kwargs
) -> TimingStats:
    """Time one zero-argument callable (same rules as :func:`compare`)."""
    return compare({name: fn}, runs=runs, warmup=warmup, **kwargs)[name]
