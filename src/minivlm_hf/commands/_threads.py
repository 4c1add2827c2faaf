"""OpenMP wait policy for the long-running commands (``train``, ``demo``).

PyTorch's CPU kernels use GNU OpenMP, whose worker threads busy-wait between parallel regions by default. On a CPU
shared with other processes that busy-waiting is pathological: a training step becomes many times slower when one
other job runs, and ``OMP_WAIT_POLICY=PASSIVE`` brings most of it back. On an idle machine, though, the passive
policy makes every step slower (figures in docs/results.md, "The demo preset"), so it is opt-in: set
``MINIVLM_HF_PASSIVE_OPENMP=1`` on a shared machine. libgomp reads the policy only when it is loaded (at ``import
torch``), so the console script then re-executes itself once with ``OMP_WAIT_POLICY=PASSIVE``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def ensure_passive_openmp() -> None:
    """With ``MINIVLM_HF_PASSIVE_OPENMP=1``: re-exec the ``minivlm-hf`` console script with
    ``OMP_WAIT_POLICY=PASSIVE`` (once; never in-process callers, torchrun workers, or when the variable is set)."""
    if os.environ.get("MINIVLM_HF_PASSIVE_OPENMP", "") not in ("1", "true", "yes"):
        return
    if os.environ.get("OMP_WAIT_POLICY") or "LOCAL_RANK" in os.environ:
        return
    if Path(sys.argv[0]).name != "minivlm-hf" or not os.access(sys.argv[0], os.X_OK):
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.argv[0], sys.argv)
