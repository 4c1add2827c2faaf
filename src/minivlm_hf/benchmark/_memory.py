"""Resident-memory probes (standard library only; Linux ``/proc`` where available).

Kept free of torch and of the package so that :func:`main` can run as a bare script in a fresh
interpreter: ``python _memory.py RESULT_PATH`` reads a pickled job on stdin and writes a pickled
result to ``RESULT_PATH`` (see ``machine.measure_peak_memory_isolated``). Importing the package (transformers, torch)
in the child would cost seconds and megabytes that are not the measured call's.
"""

from __future__ import annotations

import os
import pickle
import platform
import resource
import sys
from typing import Any, Callable


def peak_rss_bytes() -> int:
    """Process-wide peak resident set size so far (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if platform.system() == "Darwin" else maxrss * 1024)


def current_rss_bytes() -> int | None:
    """Current resident set size from ``/proc/self/statm`` (None where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def vm_hwm_bytes() -> int | None:
    """``VmHWM`` (peak RSS since start or since the last reset) from ``/proc/self/status``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None) -> dict[str, Any]:
    """Run ``fn(*args, **kwargs)`` once; ``{"before", "peak", "delta", "reset", "method"}`` in bytes."""
    reset = reset_peak_rss()
    before = current_rss_bytes()
    fn(*args, **(kwargs or {}))
    hwm = vm_hwm_bytes() if reset else None
    method = "clear_refs"
    if hwm is None:
        hwm, method = peak_rss_bytes(), "ru_maxrss"
    before = before or 0
    return {"before": before, "peak": hwm, "delta": max(0, hwm - before), "reset": reset, "method": method}


def main() -> int:
    """Child side of the isolated measurement: stdin = pickle(sys_path), pickle((fn, args, kwargs, setup));
    the result, ``("ok", dict)`` or ``("error", message)``, is pickled to ``sys.argv[1]``."""
    result_path = sys.argv[1]
    stdin = sys.stdin.buffer
    sys.path[:] = pickle.load(stdin)
    try:
        fn, args, kwargs, setup = pickle.load(stdin)
        if setup is not None:
            state = setup()
            args = (state, *args)
        result = ("ok", measure(fn, args, kwargs))
    except BaseException as err:  # report any failure to the parent
        result = ("error", f"{type(err).__name__}: {err}")
    with open(result_path, "wb") as f:
        pickle.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
