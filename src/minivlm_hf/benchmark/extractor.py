"""Feature-extraction benchmark: MiniVLM's TEE at 512x512 against the R101 Faster R-CNN at 600x1000.

This is the paper's "TEE cuts feature-extraction time by 95% (FLOPs by 99%)" comparison, run on
this machine in one process, with the two extractors timed interleaved (see
:func:`minivlm_hf.benchmark.timing.compare`) so that load from other processes hits both alike.
Both models have random weights: speed, FLOPs and parameters do not depend on the weight values
(apart from how many proposals survive NMS, which the baseline fixes and the TEE caps).
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .baseline import BASELINE_IMAGE_SIZE, build_baseline_extractor
from .flops import count_flops, count_parameters, format_count
from .machine import machine_info, measure_machine_gflops, measure_peak_memory, measure_peak_memory_isolated
from .report import BenchmarkReport, ComparisonRow
from .timing import compare, set_threads

__all__ = ["call_region_extractor", "default_tee_factory", "region_features_of", "run_extractor_benchmark"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_tee_factory() -> nn.Module:
    """``TEEModel(TEEConfig())`` from ``minivlm_hf.modeling`` (EfficientNet-B0 TEE, random weights)."""
    try:
        from minivlm_hf.modeling.configuration_minivlm_tee import TEEConfig
        from minivlm_hf.modeling.modeling_minivlm_tee import TEEModel
    except ImportError as err:  # pragma: no cover - depends on the tree's state
        raise ImportError(
            "the TEE model (minivlm_hf.modeling.modeling_minivlm_tee.TEEModel) is not importable; "
            "pass tee_factory=... to run_extractor_benchmark"
        ) from err
    from ..fast.cpu import enable_cpu_fast_paths

    tee = TEEModel(TEEConfig())
    enable_cpu_fast_paths(tee)
    return tee


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def call_region_extractor(model: Callable, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> Any:
    """Call a TEE-like model the transformers way when it takes ``pixel_values`` (and ``pixel_mask``
    if it accepts one), positionally otherwise."""
    forward = model.forward if isinstance(model, nn.Module) else model
    if _accepts(forward, "pixel_values"):
        kwargs = {"pixel_values": pixel_values}
        if pixel_mask is not None and _accepts(forward, "pixel_mask"):
            kwargs["pixel_mask"] = pixel_mask
        return model(**kwargs)
    return model(pixel_values)


def region_features_of(output: Any) -> Tensor:
    """``region_features`` of a model output (ModelOutput / dict / attribute), its first element if a
    tuple, or the tensor itself."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "region_features" in output:
        return output["region_features"]
    feats = getattr(output, "region_features", None)
    if isinstance(feats, Tensor):
        return feats
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find region features in an output of type {type(output).__name__}")


def _tee_memory_job(model, image_size: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    pixel_values = torch.rand(1, 3, image_size, image_size)
    pixel_mask = torch.ones(1, image_size, image_size, dtype=torch.long)
    with torch.inference_mode():
        call_region_extractor(model, pixel_values, pixel_mask)


def _baseline_memory_job(model, image_size: tuple[int, int], threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        model(torch.rand(3, *image_size))


def _memory_of(factory, job, size, threads, in_process_call) -> dict[str, Any]:
    """Peak RSS growth of one call: in a fresh subprocess (model built there by ``factory``) when
    the factory pickles, else in this process (see the caveats in ``machine.py``)."""
    try:
        pickle.dumps(factory)
    except Exception:
        return measure_peak_memory(in_process_call).to_dict()
    return measure_peak_memory_isolated(job, size, threads, setup=factory).to_dict()


def _param_depth(model: nn.Module) -> tuple[nn.Module, int]:
    # The baseline wraps a torchvision FasterRCNN; report its stages (backbone.body, backbone.fpn, ...).
    detector = getattr(model, "detector", None)
    return (detector, 2) if isinstance(detector, nn.Module) else (model, 1)


def run_extractor_benchmark(
    tee_factory: Callable[[], Callable] | None = None,
    runs: int = 10,
    threads: int | None = 2,
    image_size: int = 512,
    *,
    warmup: int = 2,
    baseline_factory: Callable[[], Callable] = build_baseline_extractor,
    baseline_image_size: tuple[int, int] = BASELINE_IMAGE_SIZE,
    interleave: bool = True,
    measure_flops: bool = True,
    measure_gflops: bool = True,
    gflops_n: int = 2048,
    gflops_seconds: float = 1.0,
    measure_memory: bool = False,
    seed: int = 0,
    verbose: bool = True,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Benchmark the TEE (``tee_factory()``, default :func:`default_tee_factory`) on one
    ``[1, 3, image_size, image_size]`` image against the baseline (``baseline_factory()``, default
    :func:`build_baseline_extractor`) on one ``[3, *baseline_image_size]`` image, both under
    ``threads`` intra-op threads.

    Measures parameters (per module), FLOPs (per module, one extra call each), the machine's matmul
    GFLOP/s (fp32 and bf16; the report's lower bounds use fp32), and ``runs`` interleaved timed calls
    of each after ``warmup`` rounds; optionally (``measure_memory``) the peak RSS growth of one
    call, each model built and run in a fresh subprocess when its factory pickles (in-process
    otherwise, which under-estimates after earlier calls freed memory). Prints the markdown
    report (``verbose``), writes JSON to ``json_path`` if given, and returns a JSON-friendly dict:
    ``markdown``, ``machine``, ``threads``, ``timing`` (per side), ``params``, ``flops``,
    ``flops_per_module``, ``gflops``, ``ratios`` (``time``, ``params``, ``flops``: MiniVLM/baseline),
    ``shapes``, ``memory``, plus ``report`` (the :class:`BenchmarkReport`).
    """
    tee_factory = tee_factory or default_tee_factory
    a_name, b_name = "minivlm_tee", "baseline_r101_fpn"
    with set_threads(threads) as n_threads:
        info = machine_info()
        tee = tee_factory()
        baseline = baseline_factory()
        for model in (tee, baseline):
            if isinstance(model, nn.Module):
                model.eval()
        # Models are built outside inference mode (their parameters stay ordinary tensors).
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(seed)
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            # The TEE gets processor output (normalised pixels + mask); the baseline normalises itself.
            pixel_values = (torch.rand(1, 3, image_size, image_size, generator=gen) - mean) / std
            pixel_mask = torch.ones(1, image_size, image_size, dtype=torch.long)
            base_image = torch.rand(3, *baseline_image_size, generator=gen)

            def tee_call():
                return call_region_extractor(tee, pixel_values, pixel_mask)

            def baseline_call():
                return baseline(base_image)

            tee_feats = region_features_of(tee_call())
            base_feats = region_features_of(baseline_call())
            shapes = {a_name: list(tee_feats.shape), b_name: list(base_feats.shape)}

            params: dict[str, dict[str, int]] = {}
            for name, model in ((a_name, tee), (b_name, baseline)):
                if isinstance(model, nn.Module):
                    root, depth = _param_depth(model)
                    params[name] = count_parameters(root, depth=depth)

            flops: dict[str, int | None] = {a_name: None, b_name: None}
            flops_per_module: dict[str, dict[str, int]] = {}
            if measure_flops:
                flops[a_name], flops_per_module[a_name] = count_flops(tee_call, depth=1)
                flops[b_name], flops_per_module[b_name] = count_flops(baseline_call, depth=2)

            gflops = measure_machine_gflops(n=gflops_n, seconds=gflops_seconds) if measure_gflops else {}

            memory = {}
            if measure_memory:
                memory = {
                    a_name: _memory_of(tee_factory, _tee_memory_job, image_size, n_threads, tee_call),
                    b_name: _memory_of(
                        baseline_factory, _baseline_memory_job, baseline_image_size, n_threads, baseline_call
                    ),
                }

            timing = compare(
                {a_name: tee_call, b_name: baseline_call}, runs=runs, warmup=warmup, interleave=interleave
            )

    report = BenchmarkReport(
        title="Feature extraction: TEE vs R101-FPN Faster R-CNN",
        machine=info,
        gflops=gflops,
        threads=n_threads,
        labels=("TEE", "R101 Faster R-CNN"),
    )
    row = report.add_row(
        ComparisonRow(
            task=(
                f"region features, TEE {image_size}×{image_size} → {tuple(tee_feats.shape[1:])} vs "
                f"baseline {baseline_image_size[0]}×{baseline_image_size[1]} → {tuple(base_feats.shape[1:])}"
            ),
            minivlm=timing[a_name],
            baseline=timing[b_name],
            minivlm_flops=flops[a_name],
            baseline_flops=flops[b_name],
        )
    )
    report.params = {"TEE": params.get(a_name, {}), "R101 Faster R-CNN": params.get(b_name, {})}
    param_ratio = None
    if params.get(a_name) and params.get(b_name):
        param_ratio = params[a_name]["total"] / params[b_name]["total"]
    ratios = {"time": row.time_ratio, "params": param_ratio, "flops": row.flops_ratio}
    for name, per_module in flops_per_module.items():
        report.notes.append(
            f"FLOPs of {name} by module: " + ", ".join(f"{k} {format_count(v)}" for k, v in per_module.items())
        )
    report.notes += [
        f"ratios TEE/baseline: time {_r(ratios['time'])}, parameters {_r(ratios['params'])}, "
        f"FLOPs {_r(ratios['flops'])}",
        f"warm-up times (s): TEE {[round(t, 3) for t in timing[a_name].warmup_runs]}, "
        f"baseline {[round(t, 3) for t in timing[b_name].warmup_runs]}",
        "random weights; FLOPs count matmul/conv work only (not NMS, RoIAlign, element-wise ops); "
        "the baseline's time includes its own input normalisation, the TEE's input is pre-normalised",
        f"load average at start {info.get('load_average')}: on a shared machine timings are noisy",
    ]
    if memory:
        report.notes.append(
            "peak RSS growth of one call (see machine.py for the caveats): "
            + ", ".join(f"{k} {v['delta'] / 2**20:.0f} MiB ({v['method']})" for k, v in memory.items())
        )
    markdown = report.to_markdown()
    if verbose:
        print(markdown)
    result: dict[str, Any] = {
        "markdown": markdown,
        "machine": info,
        "threads": n_threads,
        "timing": {k: v.to_dict() for k, v in timing.items()},
        "params": params,
        "flops": flops,
        "flops_per_module": flops_per_module,
        "gflops": gflops,
        "ratios": ratios,
        "shapes": shapes,
        "memory": memory,
        "report": report,
    }
    if json_path is not None:
        from .report import to_json

        to_json({k: v for k, v in result.items() if k != "report"} | {"report": report.to_dict()}, json_path)
    return result


def _r(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
