"""The ``int8`` part of the benchmark, mixed into its runner: the two int8 paths of the fusion model side by side
with fp32, in the same interleaved rounds (random minivlm-base weights, batch 1).

- ``int8 torch.ao``: ``optimize_for_inference(model, int8=True)`` (``torch.ao`` dynamic quantisation, fused QKV,
  8-bit activations where the CPU allows; an inference-only copy, :mod:`minivlm_hf.fast.int8`);
- ``int8 torchao``: ``quantize_int8(model)`` (transformers' ``TorchAoConfig``, a model that saves, reloads and
  pushes; :mod:`minivlm_hf.fast.torchao_int8`), alone and with the other fast paths (the TEE's folded batch norms
  and channels_last) applied on top.

Rows: fusion + VQA head from precomputed regions (where int8 acts), image → answer and image → greedy caption (TEE
included). The results go to ``result["fast"]`` (groups prefixed ``int8 paths:``) with the speed-up against fp32.
torchao's eager int8 Linear quantises its input in several small ops per call; under ``torch.compile`` (torchao's
intended CPU use) they fuse. With ``--compile`` the fusion encoder of a torchao int8 model is compiled too
(``nn.Module.compile``: parameter names, hence saving, unchanged; compile time reported separately).
"""

from __future__ import annotations

import importlib.util

import torch

from .accounting import total_flops
from .fast_parts import FastPathParts

TORCH_AO = "int8 torch.ao (quantize_dynamic, fused QKV; inference-only)"
TORCHAO = "int8 torchao (TorchAoConfig; saveable)"
TORCHAO_WEIGHT_ONLY = "int8 torchao weight-only (TorchAoConfig; saveable)"
COMPILED_TORCHAO = "int8 torchao + torch.compile of the fusion encoder (saveable)"
FAST_TORCH_AO = "fast int8 torch.ao (TEE fused BN + channels_last, fusion int8 torch.ao)"
FAST_TORCHAO = "fast int8 torchao (TEE fused BN + channels_last, fusion int8 torchao; saveable)"
GROUP = "int8 paths: "


class Int8Part(FastPathParts):
    """``part_int8`` of the benchmark runner (``suite._Runner``)."""

    def part_int8(self):
        if importlib.util.find_spec("torchao") is None:
            self.log("  skipped: torchao is not installed (pip install 'minivlm-hf[int8]')")
            self.result["int8"] = {"skipped": "torchao is not installed"}
            return
        from ..fast import enable_cpu_fast_paths, optimize_for_inference, quantize_int8

        def torchao_int8(model, weight_only=False):
            quantized = quantize_int8(model, weight_only=weight_only)
            enable_cpu_fast_paths(quantized)  # the float Linears get the kernels the fp32 model has
            return quantized

        m = self.minivlm
        vqa_torchao = torchao_int8(m.vqa)
        # --- fusion + VQA head from regions ---------------------------------------------------------------------
        with torch.inference_mode():
            regions = m.regions(m.vqa, m.pixel_values, m.pixel_mask)
        variants = {
            "fp32": m.vqa,
            TORCH_AO: optimize_for_inference(m.vqa, int8=True),
            TORCHAO: vqa_torchao,
            TORCHAO_WEIGHT_ONLY: torchao_int8(m.vqa, weight_only=True),
        }
        compile_times: dict[str, float] = {}
        if self.s.compile:
            compiled = torchao_int8(m.vqa)
            compiled.minivlm.encoder.compile()
            compile_times[COMPILED_TORCHAO] = self._compiled_first_call(m.vqa_from_regions(regions, compiled))
            variants[COMPILED_TORCHAO] = compiled
        self._int8_group("fusion + VQA head from regions", {k: m.vqa_from_regions(regions, v)
                                                             for k, v in variants.items()}, compile_times=compile_times)
        # --- image → answer --------------------------------------------------------------------------------------
        variants = {
            "fp32": m.vqa,
            FAST_TORCH_AO: optimize_for_inference(m.vqa, int8=True),
            TORCHAO: vqa_torchao,
            FAST_TORCHAO: optimize_for_inference(vqa_torchao),
        }
        if self.s.compile:
            variants[COMPILED_TORCHAO] = compiled  # the same shapes as above: compiled already
        self._int8_group("image → VQA answer", {k: m.vqa_call(v) for k, v in variants.items()})
        # --- image → caption, greedy ------------------------------------------------------------------------------
        captioner_torchao = torchao_int8(m.captioner)
        variants = {
            "fp32": m.captioner,
            "fast int8 torch.ao": optimize_for_inference(m.captioner, int8=True),
            TORCHAO: captioner_torchao,
            "fast int8 torchao": optimize_for_inference(captioner_torchao),
        }
        calls = {k: m.caption_call(1, v) for k, v in variants.items()}
        with torch.inference_mode():
            tokens = {k: fn() for k, fn in calls.items()}
        group = f"image → {self.scale.caption_tokens}-token caption, greedy"
        self._int8_group(group, calls, logits=False)
        for entry in self.result["fast"]:
            if entry["group"] == GROUP + group and entry["variant"] != "fp32":
                out, ref = tokens[entry["variant"]], tokens["fp32"]
                entry["parity"] = {"identical_tokens": bool(out.shape == ref.shape and torch.equal(out, ref)),
                                   "token_agreement": float((out == ref).float().mean()) if out.shape == ref.shape
                                   else None}

    def _int8_group(self, group: str, calls: dict, logits: bool = True, compile_times=None) -> None:
        outputs = None
        if logits:
            with torch.inference_mode():
                outputs = {k: fn() for k, fn in calls.items()}
        flops = total_flops(calls["fp32"]) if self.s.flops else None
        self._fast_group(GROUP + group, calls, flops, outputs=outputs, logits=logits, compile_times=compile_times)
