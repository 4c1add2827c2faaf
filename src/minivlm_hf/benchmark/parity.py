"""Quality parity of the fast paths on the scenes test split, with trained models (``minivlm-hf demo`` output).

``run_parity(DEMO_OUT)`` reloads every saved model of a demo run, rebuilds the demo's data (``demo_config.json``;
scenes are generated deterministically from their seed) and evaluates each fast path against fp32 with the
project's own evaluation loops and metric functions (``minivlm_hf.training.evaluation``, ``minivlm_hf.metrics``):

- detector (TEE): COCO mAP / mAP@0.5 / mAP@0.75 for fp32, fused BN + channels_last, and + bf16 dense part;
- VQA, captioning, retrieval, NLVR (fusion models on the demo's precomputed-feature protocol: the fp32 TEE
  extracts the regions once): every metric for fp32, bf16, int8, int8 with calibrated outlier input channels
  scaled into range (calibration on the validation split), and with ``int8_torchao`` the saveable int8 of
  transformers' ``TorchAoConfig`` (:func:`minivlm_hf.fast.quantize_int8`; needs torchao);
- VQA again with the regions extracted by the fast TEE (fused BN + channels_last), i.e. the whole fast path.

Deltas are in points: every metric is a fraction (accuracy, recall, mAP, BLEU) or CIDEr-D on its raw scale, so one
point is 0.01 (CIDEr 1.198 = "119.8"); median ranks are reported but not judged. ``within_1_point`` is ``|Δ| ≤ 1 point`` for every metric of a variant;
for int8 the criterion is a loss of at most 1 point (gains are allowed).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..fast.int8 import OUTLIER_FFN_CHANNELS, OUTLIER_OTHER_CHANNELS

__all__ = ["run_parity", "TEE_VARIANTS", "FUSION_VARIANTS", "TORCHAO_INT8", "parity_markdown"]

TEE_VARIANTS = {
    "fp32": None,
    "fused BN + channels_last": {},
    "fused BN + channels_last + bf16": dict(bf16_vision=True),
}
INT8_SCALED_CHANNELS = f"int8, {OUTLIER_FFN_CHANNELS} FFN / {OUTLIER_OTHER_CHANNELS} other input channels scaled into range"
FUSION_VARIANTS = {
    "fp32": None,
    "bf16": dict(bf16=True),
    "int8": dict(int8=True),
    INT8_SCALED_CHANNELS: dict(int8=True),  # + int8_calibration: validation batches (see _calibration_batches)
}
FUSION_TASKS = ("vqa", "caption", "retrieval", "nlvr")
#: The saveable int8 model (``minivlm_hf.fast.quantize_int8``), evaluated with ``run_parity(int8_torchao=True)``.
TORCHAO_INT8 = "int8 torchao (TorchAoConfig, saveable)"
POINT = 0.01
_NOT_METRICS = {"num_candidates", "num_groups"}


def _metrics_only(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if k not in _NOT_METRICS and isinstance(v, (int, float))}


def _deltas(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    ref = results.get("fp32", {})
    return {variant: {k: v - ref[k] for k, v in metrics.items() if k in ref}
            for variant, metrics in results.items() if variant != "fp32"}


def _judged(name: str) -> bool:
    """Median ranks (``*_medr``) are ranks, not fractions: reported, not judged in points."""
    return not name.endswith("medr")


def _verdict(variant: str, deltas: dict[str, float]) -> bool:
    deltas = {k: v for k, v in deltas.items() if _judged(k)}
    if not deltas:
        return True
    if variant.startswith("int8"):
        return all(d >= -POINT - 1e-9 for d in deltas.values())
    return all(abs(d) <= POINT + 1e-9 for d in deltas.values())


def run_parity(model_dir, *, limit: int | None = None, num_test: int | None = None, cache_dir=None,
               tasks=("detector", *FUSION_TASKS), log: Callable[[str], None] = print,
               trust_remote_code: bool = False, int8_torchao: bool = False) -> dict[str, Any]:
    """Evaluate fp32 and every fast path on the test split of the demo output ``model_dir`` (see module doc).
    ``limit`` caps the test examples per task (None: the demo's own evaluation settings).
    ``num_test``: a larger test split of the same generator instead of the demo's (its first scenes are the demo's
    test scenes; NLVR pairs grow in the same proportion; retrieval is averaged over ``num_test // num_candidates``
    groups of the demo's candidate count), so that a delta of one point is not one or two test items.
    ``int8_torchao``: also evaluate the saveable torchao int8 model of each fusion task (``TORCHAO_INT8`` rows)."""
    from ..fast import full_range_activations_are_safe, optimize_for_inference, quantize_int8, require_torchao
    from ..training.data_setup import RecipeData
    from ..training.demo import load_processor, load_with_auto_class, stage_config
    from ..training.recipes import evaluate_stage

    model_dir = Path(model_dir)
    config_path = model_dir / "demo_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --model-dir must be the output folder of `minivlm-hf demo`")
    if not (model_dir / "detector" / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir / 'detector'} holds no trained detector")
    settings = json.loads(config_path.read_text())
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="minivlm-parity-")
        cache_dir = tmp.name
    settings["common"].setdefault("data", {})["cache_dir"] = str(cache_dir)
    # Every variant is evaluated as it is: no bf16 autocast from the demo's evaluation settings.
    overrides = {"evaluation": {"bf16": False, **({"limit": limit} if limit else {})}}
    if num_test is not None:
        data_settings = settings["common"]["data"]
        base_test = int(data_settings.get("num_test", num_test))
        if num_test < base_test:
            raise ValueError(f"num_test ({num_test}) must be at least the demo's test split ({base_test})")
        candidates = int(settings["common"].get("evaluation", {}).get("num_candidates", 100))
        overrides["data"] = {"num_test": int(num_test)}
        if data_settings.get("nlvr_num_test"):
            overrides["data"]["nlvr_num_test"] = int(data_settings["nlvr_num_test"]) * int(num_test) // base_test
        overrides["evaluation"]["retrieval_groups"] = max(1, int(num_test) // candidates)

    def cfg(stage):
        return stage_config(settings, stage, **overrides)

    if int8_torchao:
        require_torchao()  # before minutes of data preparation
    start = time.perf_counter()
    data = RecipeData(cfg("data"), progress=False)
    detector, _ = load_with_auto_class("detector", model_dir / "detector", trust_remote_code=trust_remote_code)
    data.image_processor = load_processor("detector", model_dir / "detector")
    data._detector = detector  # noqa: SLF001 - the demo's protocol: this TEE extracts the fusion stages' regions
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, dict[str, float]] = {}

    def evaluate(task, stage, model, variant, data_=None):
        t0 = time.perf_counter()
        with torch.inference_mode():
            test, _ = evaluate_stage(stage, model, cfg(stage), data_ or data, progress=False)
        metrics.setdefault(task, {})[variant] = _metrics_only(test)
        seconds.setdefault(task, {})[variant] = time.perf_counter() - t0
        log(f"    {task} / {variant}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[task][variant].items()))

    if "detector" in tasks:
        for variant, options in TEE_VARIANTS.items():
            model = detector if options is None else optimize_for_inference(detector, **options)
            evaluate("detector", "detector", model, variant)
    for task in FUSION_TASKS:
        if task not in tasks or not (model_dir / task / "config.json").is_file():
            continue
        model, _ = load_with_auto_class(task, model_dir / task, trust_remote_code=trust_remote_code)
        for variant, options in FUSION_VARIANTS.items():
            if variant == INT8_SCALED_CHANNELS:
                options = {**options, "int8_calibration": _calibration_batches(task, cfg(task), data, model)}
            evaluate(task, task, model if options is None else optimize_for_inference(model, **options), variant)
        if int8_torchao:
            evaluate(task, task, quantize_int8(model), TORCHAO_INT8)
        if task == "vqa":
            # The whole fast path: regions from the fast TEE (fresh feature extraction), then the int8 fusion model.
            fast_data = RecipeData(cfg("data"), progress=False)
            fast_data.image_processor = data.image_processor
            fast_data._detector = optimize_for_inference(detector)  # noqa: SLF001
            evaluate(task, task, model, "fp32, regions from the fast TEE", fast_data)
            evaluate(task, task, optimize_for_inference(model, **FUSION_VARIANTS["int8"]),
                     "int8, regions from the fast TEE", fast_data)
        del model
    deltas = {task: _deltas(per) for task, per in metrics.items()}
    verdicts = {task: {v: _verdict(v, d) for v, d in per.items()} for task, per in deltas.items()}
    result = {
        "model_dir": str(model_dir),
        "limit": limit,
        "num_test": num_test,
        "metrics": metrics,
        "deltas": deltas,
        "within_1_point": verdicts,
        "all_within_1_point": all(all(v.values()) for v in verdicts.values()),
        "seconds": seconds,
        "total_s": time.perf_counter() - start,
        "criterion": "|Δ| ≤ 0.01 (1 point) on every metric; int8: loss ≤ 1 point",
        # int8 rounding depends on the CPU: which engine's kernels ran and how many bits the activations had
        "int8": {"engines": [torch.backends.quantized.engine],
                 "activation_bits": 8 if full_range_activations_are_safe() else 7},
    }
    result["markdown"] = parity_markdown(result)
    if tmp is not None:
        tmp.cleanup()
    return result


def _calibration_batches(task: str, config: dict, data, model, rows: int = 32, batches: int = 2) -> list[dict]:
    """Up to ``batches`` collated batches of the task's validation rows (never the test split): the calibration
    inputs of the calibrated int8 variant."""
    from ..training.recipes import build_collators, stage_datasets

    collator = build_collators(task, config, data, model, "validation")
    examples = stage_datasets(task, data, "validation")
    n = min(len(examples), rows * batches)
    if n == 0:
        raise ValueError(f"parity: the {task} validation split is empty; the calibrated int8 variant needs it")
    return [collator([examples[i] for i in range(start, min(n, start + rows))]) for start in range(0, n, rows)]


def parity_markdown(result: dict[str, Any]) -> str:
    lines = ["| Task | Variant | Metrics | Δ vs fp32 (points) | Within 1 point |", "|---|---|---|---|---|"]
    for task, per in result["metrics"].items():
        for variant, values in per.items():
            metric_text = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
            d = result["deltas"].get(task, {}).get(variant)
            delta_text = "—" if d is None else ", ".join(
                f"{k} {v / POINT:+.2f}" if _judged(k) else f"{k} {v:+.1f} (rank)" for k, v in d.items())
            ok = "—" if d is None else ("yes" if result["within_1_point"][task][variant] else "NO")
            lines.append(f"| {task} | {variant} | {metric_text} | {delta_text} | {ok} |")
    if result.get("int8"):
        lines += ["", f"int8 ran on {' + '.join(result['int8']['engines'])} kernels with "
                      f"{result['int8']['activation_bits']}-bit activations (both depend on the CPU)."]
    return "\n".join(lines)
