"""CPU inference fast paths for MiniVLM, applied from outside the model definitions.

Entry point::

    from minivlm_hf.fast import optimize_for_inference

    fast = optimize_for_inference(model)                 # TEE: conv+BN folded, channels_last; fusion: fused QKV
    fast = optimize_for_inference(model, bf16=True)      # + fusion transformer in bfloat16
    fast = optimize_for_inference(model, int8=True)      # + int8 dynamic quantisation of the fusion Linear layers
    fast = optimize_for_inference(model, int8=True, int8_calibration=batches)  # + calibrated outlier channels
    fast = optimize_for_inference(model, compile=True)   # + torch.compile of the TEE's EfficientNet + BiFPN

``model`` may be a ``TEEModel``, a ``MiniVLMModel`` or any MiniVLM task head; the input model is not modified
(``inplace=False``). The building blocks are in :mod:`.tee` (conv+BN folding, channels_last, bf16 / compiled dense
part), :mod:`.fusion` (QKV fusion, bf16) and :mod:`.int8` (dynamic int8, calibrated outlier channels). Parity of
each path is covered by ``tests/test_fast_paths.py``; speed by ``minivlm-hf benchmark --part fast`` and quality on
the scenes test split by ``minivlm-hf benchmark --part parity --model-dir DEMO_OUT [--parity-num-test 300]``.

Quality: fused BN + channels_last gives identical detections and bf16 stays within a point of fp32 on every metric;
plain int8 loses more than a point on some metrics because a few input channels of the FFN down-projections are far
larger than the rest and coarsen the per-tensor activation scale. Calibrated int8 (``int8_calibration``: those
channels scaled into range, 8-bit activations on VNNI / AMX CPUs) keeps every metric within a point. Without
calibration data prefer bf16 (or fp32) where quality matters. Every parity table and speed-up: docs/results.md.

Saveable int8 (:mod:`.torchao_int8`, needs torchao): ``from_pretrained(..., quantization_config=
int8_quantization_config())`` or ``quantize_int8(model)`` give an int8 model through transformers' ``TorchAoConfig``
that ``save_pretrained`` / ``push_to_hub`` keep and ``from_pretrained`` reloads; the copies made here cannot be saved.

Notes:
- ``int8=True`` needs ``torch.ao.quantization.quantize_dynamic`` (deprecated upstream in favour of torchao, still
  working in torch 2.14); the quantised model runs on the CPU only.
- bf16 is fast only on CPUs with bf16 matmul instructions (AVX512-BF16 / AMX); elsewhere it is emulated and slower.
  ``minivlm_hf.benchmark.machine.machine_info()["bf16_hardware"]`` says which.
"""

from .._lazy import lazy_attributes

# public name -> submodule that defines it; imported on first use (PEP 562)
_LAZY = {
    **dict.fromkeys((
        "enable_cpu_fast_paths", "FewRowsLinear", "FP32TrainingDepthwiseConv2d",
    ), "cpu"),
    **dict.fromkeys((
        "OptimizationSummary", "optimize_for_inference",
    ), "optimize"),
    **dict.fromkeys((
        "bf16_dense_part", "compile_dense_part", "find_conv_bn_pairs", "find_tees", "fuse_conv_bn", "is_tee",
        "to_channels_last",
    ), "tee"),
    **dict.fromkeys((
        "find_fusion_models", "fuse_qkv_projections", "fusion_linear_names", "fusion_to_bf16", "is_fusion_model",
    ), "fusion"),
    **dict.fromkeys((
        "OUTLIER_FFN_CHANNELS", "OUTLIER_OTHER_CHANNELS", "FullRangeInt8Linear", "OutlierScaledInt8Linear",
        "full_range_activations_are_safe", "linear_input_ranges", "outlier_input_scale", "quantize_fusion_int8",
    ), "int8"),
    **dict.fromkeys((
        "INT8_MODULES_TO_NOT_CONVERT", "int8_quantization_config", "quantize_int8", "require_torchao",
    ), "torchao_int8"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
