"""CPU inference fast paths for MiniVLM, applied from outside the model definitions.

Entry point::

    from minivlm_hf.fast import optimize_for_inference

    fast = optimize_for_inference(model)                 # TEE: conv+BN folded, channels_last (default)
    fast = optimize_for_inference(model, int8=True)      # + int8 dynamic quantisation of the fusion Linear layers
    fast = optimize_for_inference(model, bf16=True)      # + fusion transformer in bfloat16
    fast = optimize_for_inference(model, compile=True)   # + torch.compile of the TEE's EfficientNet + BiFPN

``model`` may be a ``TEEModel``, a ``MiniVLMModel`` or any MiniVLM task head; the input model is not modified
(``inplace=False``). The building blocks are in :mod:`.tee` (conv+BN folding, channels_last, bf16 / compiled dense
part), :mod:`.fusion` (QKV fusion, bf16, compiled encoder) and :mod:`.int8` (dynamic int8: per-call engine choice,
calibrated outlier channels). Parity of each path is covered by ``tests/test_fast_paths.py``; speed by
``minivlm-hf benchmark --part fast`` and quality on the scenes test split by ``minivlm-hf benchmark --part parity
--model-dir DEMO_OUT [--parity-num-test 300]``.

Measured quality (``--part parity --parity-num-test 300`` on a full ``minivlm-hf demo`` run; points vs fp32, see
the README for every figure): fused BN + channels_last gives identical detections; bf16 stays within 1 point
except a VQA relation gain of 1.4; plain int8 loses VQA 1.4, retrieval R@1 2.3-2.7 and NLVR 1.8; int8 with the 16
calibrated outlier input channels of each FFN down-projection in float (``int8_outlier_ffn_channels=16,
int8_calibration=...``) VQA +0.1, CIDEr-D -0.8, text->image R@5 -2.7, NLVR -1.0; with also 8 channels of every
other Linear (``int8_outlier_other_channels=8``) every metric within 1 point (but 1.18x instead of 1.6x faster than
fp32). Those figures are with 7-bit activations on an Intel Xeon with AMX. With 8-bit activations (the default on
VNNI / AMX CPUs, ``int8_reduce_range``), on an AMD EPYC, the same 16 / 8 channels scaled into range instead of kept
in float (``int8_outlier_mode="scale"``) kept every metric within 1 point at 2.07-2.29x fp32's speed, where plain
int8 lost 1.5 points of VQA count and 1.3 of NLVR consistency. Without calibration data prefer bf16 (or fp32)
where quality matters.

Notes:
- int8 needs ``torch.ao.quantization.quantize_dynamic`` (deprecated upstream in favour of torchao, still working
  in torch 2.14); the quantised model runs on the CPU only.
- bf16 is fast only on CPUs with bf16 matmul instructions (AVX512-BF16 / AMX); elsewhere it is emulated and slower.
  ``minivlm_hf.benchmark.machine.machine_info()["bf16_hardware"]`` says which.
"""

from .fusion import (
    compile_fusion_encoder,
    find_fusion_models,
    fuse_qkv_projections,
    fusion_linear_names,
    fusion_to_bf16,
    is_fusion_model,
)
from .int8 import (
    INT8_ENGINES,
    FullRangeInt8Linear,
    OutlierScaledInt8Linear,
    OutlierSplitInt8Linear,
    RowDispatchInt8Linear,
    ffn_input_ranges,
    full_range_activations_are_safe,
    int8_engines,
    linear_input_ranges,
    outlier_input_scale,
    quantize_fusion_int8,
)
from .optimize import OptimizationSummary, optimize_for_inference
from .tee import (
    bf16_dense_part,
    compile_dense_part,
    find_conv_bn_pairs,
    find_tees,
    fuse_conv_bn,
    is_tee,
    to_channels_last,
)

__all__ = [
    "OptimizationSummary",
    "optimize_for_inference",
    "bf16_dense_part",
    "compile_dense_part",
    "compile_fusion_encoder",
    "find_conv_bn_pairs",
    "find_fusion_models",
    "find_tees",
    "fuse_conv_bn",
    "fuse_qkv_projections",
    "fusion_linear_names",
    "fusion_to_bf16",
    "INT8_ENGINES",
    "RowDispatchInt8Linear",
    "FullRangeInt8Linear",
    "full_range_activations_are_safe",
    "OutlierSplitInt8Linear",
    "OutlierScaledInt8Linear",
    "outlier_input_scale",
    "ffn_input_ranges",
    "linear_input_ranges",
    "int8_engines",
    "is_fusion_model",
    "is_tee",
    "quantize_fusion_int8",
    "to_channels_last",
]
