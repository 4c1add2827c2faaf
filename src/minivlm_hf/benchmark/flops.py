"""FLOP and parameter counts, per module.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts the matrix work
(``mm``/``addmm``/``bmm``, convolutions, scaled-dot-product attention, ...) at 2 FLOPs per
multiply-accumulate. It does *not* count element-wise ops, softmax, normalisation, pooling, or
torchvision's custom ops (RoIAlign, NMS): for CNN/transformer models those are a small share of the
arithmetic but may be a visible share of the time, which the "measured / FLOP lower bound" column of
the report makes visible.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters", "format_count"]

OTHER = "(other)"
OWN = "(own)"


def _module_depth(name: str) -> int:
    return name.count(".")


def count_flops(
    fn: Callable[..., Any], *args: Any, depth: int = 1, inference_mode: bool = True, **kwargs: Any
) -> tuple[int, dict[str, int]]:
    """Run ``fn(*args, **kwargs)`` once and count its FLOPs.

    Returns ``(total_flops, per_module)``. ``per_module`` maps the modules ``depth`` levels below
    the outermost module(s) that ran (``depth=1``: the top-level children, e.g. ``backbone``,
    ``rpn``, ``roi_heads``; ``depth=0``: the outermost modules themselves, by class name; ``depth=2``:
    ``backbone.body``, ...) to their FLOPs. When one outermost module ran, its name is dropped from
    the keys; when several did (``fn`` calls two models) keys keep it (``ClassName.child``).
    A deeper module that ran without its depth-``depth`` ancestor's own forward running (a driver
    that calls ``roi_heads.box_head`` directly) is attributed to that ancestor's path.
    FLOPs spent outside modules of that depth are reported under ``"(other)"`` when non-zero, so
    the values always sum to the total. ``depth`` is keyword-only; to pass a ``depth`` argument to
    ``fn``, wrap it in ``functools.partial``.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    counter = FlopCounterMode(display=False, depth=None)
    ctx = torch.inference_mode() if inference_mode else torch.no_grad()
    with ctx, counter:
        fn(*args, **kwargs)
    total = int(counter.get_total_flops())
    counts = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items() if name != "Global"}
    roots = {name for name in counts if _module_depth(name) == 0}

    def has_counted_ancestor(name: str) -> bool:
        # An ancestor at depth >= `depth` whose FLOPs already include this module's.
        parts = name.split(".")
        return any(".".join(parts[:i]) in counts for i in range(depth + 1, len(parts)))

    per_module: dict[str, int] = {}
    for name, flops in counts.items():
        d = _module_depth(name)
        if d < depth:
            continue
        prefix = ".".join(name.split(".")[: depth + 1])
        if d > depth and (prefix in counts or has_counted_ancestor(name)):
            continue  # already inside a counted module
        # d == depth, or a deeper module called directly (its depth-`depth` ancestor never ran
        # its own forward, e.g. a stage-by-stage driver calling roi_heads.box_head): attribute
        # it to that ancestor's path.
        key = prefix.split(".", 1)[1] if (len(roots) <= 1 and depth > 0) else prefix
        per_module[key] = per_module.get(key, 0) + flops
    attributed = sum(per_module.values())
    if total - attributed > 0:
        per_module[OTHER] = total - attributed
    return total, per_module


def count_parameters(module: nn.Module, depth: int = 1, *, include_buffers: bool = False) -> dict[str, int]:
    """Parameter counts per submodule ``depth`` levels down, plus ``"total"``.

    Keys are dotted submodule paths truncated to ``depth`` components (``depth=1``: named children;
    ``depth=2``: ``backbone.body``, ``backbone.fpn``, ...). Parameters that live higher up than
    ``depth`` are counted under their own (shorter) path, or ``"(own)"`` for the module itself.
    Shared (tied) parameters are counted once. ``include_buffers`` also counts buffers (e.g. frozen
    batch-norm statistics), which are not parameters.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    out: dict[str, int] = {}
    tensors = list(module.named_parameters())
    if include_buffers:
        tensors += list(module.named_buffers())
    for name, tensor in tensors:
        parts = name.split(".")[:-1]
        key = ".".join(parts[:depth]) if parts else OWN
        out[key] = out.get(key, 0) + tensor.numel()
    out["total"] = sum(out.values())
    return out


def format_count(n: float | int | None, unit: str = "") -> str:
    """``1234567 -> "1.23M"``; ``None -> "n/a"``."""
    if n is None:
        return "n/a"
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
