"""Progress bars for long work: scene generation, feature extraction, evaluation, the benchmark.

tqdm bars (with rate and ETA) on stderr, shown only when stderr is a terminal and nothing asked for quiet: the
commands' ``--quiet`` (:func:`set_quiet`) or ``MINIVLM_HF_QUIET=1``. Logs and CI output get no bar lines.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

_QUIET = False


def set_quiet(quiet: bool = True) -> None:
    """``--quiet``: no progress bars from this package, nor from datasets, transformers or huggingface_hub."""
    global _QUIET
    _QUIET = bool(quiet)
    if quiet:
        os.environ["MINIVLM_HF_QUIET"] = "1"  # for subprocesses (the benchmark's memory probes, torchrun ranks)
        import datasets
        import huggingface_hub.utils
        import transformers

        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def is_quiet() -> bool:
    return _QUIET or os.environ.get("MINIVLM_HF_QUIET", "").lower() in ("1", "true", "yes")


def progress_enabled(requested: bool = True) -> bool:
    """Whether to draw a bar: asked for, not quiet, and stderr is a terminal."""
    return bool(requested) and not is_quiet() and sys.stderr.isatty()


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), disabled per :func:`progress_enabled`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(enabled),
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


@contextmanager
def datasets_progress(enabled: bool = True):
    """``datasets``' own bars (``Dataset.map`` shows one with an ETA) follow the same rule inside the block."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    switch_off = not progress_enabled(enabled) and not are_progress_bars_disabled()
    if switch_off:
        disable_progress_bars()
    try:
        yield
    finally:
        if switch_off:
            enable_progress_bars()


__all__ = ["datasets_progress", "is_quiet", "progress", "progress_enabled", "set_quiet"]
