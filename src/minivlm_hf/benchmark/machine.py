"""What the machine can do: achieved matmul GFLOP/s, peak memory, CPU facts.

Peak memory, honestly
---------------------
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (:func:`peak_rss_bytes`) is the *process-wide*
high-water mark of resident memory since the process started: after a large model has run once it
no longer says anything about a smaller one run later. Two per-call measurements are provided:

* :func:`measure_peak_memory` (in-process, Linux): resets the kernel's peak-RSS counter by writing
  ``5`` to ``/proc/self/clear_refs``, runs the callable, and reads ``VmHWM`` from
  ``/proc/self/status``. Caveats: it measures *resident* memory of the whole process (other threads'
  allocations count too), and memory the allocator already holds from earlier, freed work is reused
  without raising RSS, so the delta can *under*-estimate the call's true working set. If the reset
  is not permitted (non-Linux, locked-down ``/proc``), the result says ``reset=False`` and the peak
  is the process-wide one, not the call's.
* :func:`measure_peak_memory_isolated`: the same measurement inside a fresh Python subprocess
  (a clean heap, so no reuse of earlier memory, and the parent's high-water mark is untouched).
  The callable and its arguments must be picklable (module-level functions, ``functools.partial``);
  model construction can be done in the child with ``setup``. ``fork`` is not used: after torch
  has used its OpenMP pool, a forked child hangs in its first parallel op.

``tracemalloc`` is not used: torch's CPU allocator bypasses Python's allocator, so tensors are
invisible to it.
"""

from __future__ import annotations

import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from . import _memory
from ._memory import current_rss_bytes, peak_rss_bytes

__all__ = [
    "MemoryStats",
    "current_rss_bytes",
    "machine_info",
    "measure_machine_gflops",
    "measure_matmul_gflops",
    "measure_peak_memory",
    "measure_peak_memory_isolated",
    "peak_rss_bytes",
]

CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


# ----------------------------------------------------------------------------- throughput


def measure_matmul_gflops(
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    seconds: float = 1.0,
    *,
    threads: int | None = None,
    min_iters: int = 3,
) -> float:
    """Achieved GFLOP/s of square ``n x n`` matmuls in ``dtype`` on the CPU (2·n³ FLOPs each).

    One untimed warm-up product, then products until ``seconds`` have passed (at least
    ``min_iters``). bf16 uses ``torch.bfloat16`` tensors (oneDNN picks AMX / AVX512-BF16 kernels
    where the CPU has them). ``threads`` temporarily sets torch's intra-op thread count. On a shared
    machine this is what the machine *gives* now, not its peak.
    """
    from .timing import set_threads

    if n < 1 or seconds <= 0:
        raise ValueError("n must be >= 1 and seconds > 0")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(dtype)
    b = torch.rand(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    with set_threads(threads), torch.inference_mode():
        torch.mm(a, b, out=out)
        iters = 0
        start = time.perf_counter()
        elapsed = 0.0
        while iters < min_iters or elapsed < seconds:
            torch.mm(a, b, out=out)
            iters += 1
            elapsed = time.perf_counter() - start
    return 2.0 * n**3 * iters / elapsed / 1e9


def measure_machine_gflops(
    n: int = 2048, seconds: float = 1.0, *, threads: int | None = None, dtypes=(torch.float32, torch.bfloat16)
) -> dict[str, float]:
    """``{"float32": GFLOP/s, "bfloat16": GFLOP/s}`` (see :func:`measure_matmul_gflops`)."""
    return {
        str(dt).replace("torch.", ""): measure_matmul_gflops(dt, n=n, seconds=seconds, threads=threads)
        for dt in dtypes
    }


# ----------------------------------------------------------------------------- memory


@dataclass
class MemoryStats:
    """Resident memory around one call (bytes).

    ``delta`` = ``peak`` − ``before``: what the call added at its peak. ``reset`` tells whether the
    peak counter could be reset before the call (if not, ``peak`` is the process-wide peak and
    ``delta`` may be meaningless). ``method``: ``"clear_refs"`` or ``"ru_maxrss"``, plus
    ``"+subprocess"`` when isolated.
    """

    before: int
    peak: int
    delta: int
    reset: bool
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        return f"+{self.delta / 2**20:.1f} MiB at peak (RSS {self.peak / 2**20:.1f} MiB, {self.method})"


def measure_peak_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MemoryStats:
    """Peak resident memory of one ``fn(*args, **kwargs)`` call, in this process (see module doc)."""
    return MemoryStats(**_memory.measure(fn, args, kwargs))


def measure_peak_memory_isolated(
    fn: Callable[..., Any],
    *args: Any,
    setup: Callable[[], Any] | None = None,
    timeout: float = 600.0,
    **kwargs: Any,
) -> MemoryStats:
    """:func:`measure_peak_memory` of ``fn`` run in a fresh Python subprocess.

    With ``setup``, the child first builds ``state = setup()`` (not measured) and then measures
    ``fn(state, *args, **kwargs)``. ``fn``, ``setup`` and the arguments must be picklable; the
    child gets this process's ``sys.path`` and imports only what unpickling them needs (the probe
    itself is standard-library only). Raises ``RuntimeError`` if the child fails or exceeds
    ``timeout`` seconds.
    """
    job = pickle.dumps(sys.path) + pickle.dumps((fn, args, kwargs, setup))
    with tempfile.TemporaryDirectory(prefix="minivlm-mem-") as tmp:
        result_path = os.path.join(tmp, "result.pkl")
        try:
            proc = subprocess.run(
                [sys.executable, _memory.__file__, result_path], input=job, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"memory-measurement subprocess gave no result within {timeout} s") from err
        if not os.path.exists(result_path):
            raise RuntimeError(f"memory-measurement subprocess died (exit code {proc.returncode})")
        with open(result_path, "rb") as f:
            status, payload = pickle.load(f)
    if status != "ok":
        raise RuntimeError(f"memory-measurement subprocess failed: {payload}")
    payload["method"] += "+subprocess"
    return MemoryStats(**payload)


# ----------------------------------------------------------------------------- facts


def _cpuinfo() -> tuple[str, set[str]]:
    model: str | None = None
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, torch/library versions, thread counts, relevant ISA flags.

    ``load_average`` is included because on a shared machine it says how much the timings can be
    trusted.
    """
    model, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = None
    info: dict[str, Any] = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_total_bytes": _mem_total_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": capability,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
        "bf16_hardware": bool({"amx_bf16", "avx512_bf16"} & flags),
        "load_average": load,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return info

