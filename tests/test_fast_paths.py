"""CPU inference fast paths (minivlm_hf.fast): parity with the fp32 models on tiny random models.

Fused-BN / channels_last TEE = fp32 within 1e-4; bf16 within bf16 tolerance; int8 logits close with argmax
agreement >= 90%. Nothing here times anything.
"""

import tempfile

import pytest
import torch
from torch import nn

from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from tee_utils import tiny_tee_config

from minivlm_hf.fast import (
    find_conv_bn_pairs,
    fuse_conv_bn,
    fusion_linear_names,
    optimize_for_inference,
)
from minivlm_hf.fast.fusion import is_plain_linear
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial eval statistics and affine parameters, so folding has something to fold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.fixture(scope="module")
def tee():
    torch.manual_seed(0)
    model = TEEModel(tiny_tee_config()).eval()
    _randomise_batch_norms(model)
    return model


@pytest.fixture(scope="module")
def pixels():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 128, 128, generator=gen)


def _bn_count(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _assert_same_regions(a, b, atol=1e-4):
    assert a.region_mask.shape == b.region_mask.shape and torch.equal(a.region_mask, b.region_mask)
    assert torch.equal(a.region_labels, b.region_labels)
    for name in ("region_features", "region_boxes", "region_scores", "logits", "attribute_logits"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------ TEE


def test_fused_bn_tee_equals_fp32(tee, pixels):
    fast = optimize_for_inference(tee)
    summary = fast.minivlm_optimizations
    assert summary.folded_batch_norms == _bn_count(tee) > 0  # every BN of this TEE follows a conv
    assert _bn_count(fast) == 0
    assert _bn_count(tee) == summary.folded_batch_norms  # the input model is untouched (inplace=False)
    with torch.inference_mode():
        _assert_same_regions(fast(pixel_values=pixels), tee(pixel_values=pixels))
        maps_fast = fast(pixel_values=pixels, output_hidden_states=True).feature_maps
        maps_ref = tee(pixel_values=pixels, output_hidden_states=True).feature_maps
    for a, b in zip(maps_fast, maps_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_fused_bn_channels_last_tee_equals_fp32(tee, pixels):
    fast = optimize_for_inference(tee)
    assert fast.minivlm_optimizations.channels_last
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    mask = torch.ones(2, 128, 128, dtype=torch.long)
    mask[1, :, 100:] = 0  # a padded image in the batch
    with torch.inference_mode():
        _assert_same_regions(fast(pixel_values=pixels, pixel_mask=mask), tee(pixel_values=pixels, pixel_mask=mask))


def test_fast_paths_reach_the_tee_of_a_detector_and_of_a_fusion_model(tee):
    detector = TEEForObjectDetection(tiny_tee_config()).eval()
    fast = optimize_for_inference(detector)
    assert fast.minivlm_optimizations.tees == ["tee"] and _bn_count(fast) == 0
    vqa = MiniVLMForQuestionAnswering(tiny_fusion_config(vision_config=tiny_tee_config())).eval()
    fast = optimize_for_inference(vqa)
    assert fast.minivlm_optimizations.tees == ["minivlm.vision_model"]
    assert fast.minivlm_optimizations.fusion_models == ["minivlm"]
    assert _bn_count(fast) == 0 and _bn_count(vqa) > 0


def test_bf16_dense_tee_keeps_float32_after_the_bifpn(tee, pixels):
    fast = optimize_for_inference(tee, bf16_vision=True)
    assert fast.backbone.body.conv_stem.weight.dtype == torch.bfloat16
    assert fast.box_head.fc1.weight.dtype == torch.float32
    with torch.inference_mode():
        out = fast(pixel_values=pixels, output_hidden_states=True)
        ref = tee(pixel_values=pixels, output_hidden_states=True)
    assert out.region_features.dtype == torch.float32 and torch.isfinite(out.region_features).all()
    for a, b in zip(out.feature_maps, ref.feature_maps):
        assert a.dtype == torch.float32
        scale = b.abs().max()
        assert (a - b).abs().max() <= 0.05 * scale + 1e-3  # bf16: ~3 significant digits through the network


def test_folding_needs_eval_mode_and_follows_the_data_flow():
    class NotFollowing(nn.Module):
        """conv and bn registered next to each other, but the bn normalises the input, not the conv output."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(x) + self.bn(x)

    class Following(NotFollowing):
        def forward(self, x):
            return self.bn(self.conv(x))

    x = torch.randn(1, 4, 5, 5)
    for cls, expected in ((NotFollowing, 0), (Following, 1)):
        model = cls()
        _randomise_batch_norms(model)
        with pytest.raises(ValueError, match="eval mode"):
            fuse_conv_bn(model)
        model.eval()
        assert len(find_conv_bn_pairs(model)) == 1  # structurally both look foldable
        assert len(find_conv_bn_pairs(model, run=lambda: model(x))) == expected
        reference = model(x)
        assert fuse_conv_bn(model, run=lambda: model(x)) == expected
        torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ fusion


def _vqa_model(**overrides):
    torch.manual_seed(0)
    config = tiny_fusion_config(
        hidden_size=64, intermediate_size=128, id2label={i: f"a{i}" for i in range(40)}, **overrides
    )
    return MiniVLMForQuestionAnswering(config).eval()


def _vqa_inputs(batch=64, seed=0):
    inputs = {**text_inputs(batch=batch, seed=seed), **region_inputs(batch=batch, seed=seed + 1)}
    gen = torch.Generator().manual_seed(seed + 2)
    inputs["tag_ids"] = torch.randint(4, 120, (batch, 3), generator=gen)
    inputs["tag_attention_mask"] = torch.ones(batch, 3, dtype=torch.long)
    return inputs


def test_int8_fusion_logits_close_and_argmax_agrees():
    model = _vqa_model()
    linear_names = fusion_linear_names(model)
    fast = optimize_for_inference(model, int8=True)
    layers = len(model.minivlm.encoder.layer)
    assert fast.minivlm_optimizations.fused_qkv_layers == layers  # 3 Linears -> 1 per layer, then quantised
    assert fast.minivlm_optimizations.int8_linear_layers == len(linear_names) - 2 * layers > 0
    float_linears = [n for n, m in fast.named_modules() if is_plain_linear(m)]
    assert float_linears == ["minivlm.region_embeddings.projection"]  # kept in float on purpose
    inputs = _vqa_inputs()
    with torch.inference_mode():
        ref = model(**inputs).logits
        out = fast(**inputs).logits
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()
    agreement = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agreement >= 0.9, f"int8 argmax agreement {agreement:.2f}"


def test_int8_weights_have_one_scale_per_output_channel():
    from minivlm_hf.fast import quantize_fusion_int8

    model = _vqa_model()
    linear = model.minivlm.encoder.layer[0].output.dense
    with torch.no_grad():  # rows of very different magnitude, as trained layers have
        rows = torch.logspace(-2, 0, linear.out_features).unsqueeze(1)
        linear.weight.mul_(rows[torch.randperm(linear.out_features, generator=torch.Generator().manual_seed(0))])
    reference = linear.weight.detach().clone()
    weight = quantize_fusion_int8(model).minivlm.encoder.layer[0].output.dense.weight()
    assert weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert weight.q_per_channel_scales().numel() == weight.shape[0]
    # every row keeps its own resolution: the relative rounding error of the smallest rows stays below 1%
    assert ((weight.dequantize() - reference).norm(dim=1) / reference.norm(dim=1)).max() < 0.01
    with pytest.raises(ValueError, match="eval mode"):
        quantize_fusion_int8(_vqa_model().train())


def test_calibrated_int8_scales_the_outlier_channels_into_range():
    """``int8_calibration``: the calibration ranges (``linear_input_ranges``) find the planted outlier channels of
    every FFN down-projection; those are scaled into the others' range (weight columns scaled up, all int8), and the
    error is far below plain int8's."""
    from minivlm_hf.fast import OutlierScaledInt8Linear, linear_input_ranges, quantize_fusion_int8

    model = _vqa_model()
    planted = torch.tensor([3, 17, 40, 41])
    with torch.no_grad():  # 4 intermediate channels 200x larger, compensated in the down-projection: same function
        for layer in model.minivlm.encoder.layer:
            up, down = layer.intermediate.dense, layer.output.dense
            up.weight[planted] *= 200.0
            up.bias[planted] *= 200.0
            down.weight[:, planted] /= 200.0
    calibration = _vqa_inputs(batch=4)
    down = [f"minivlm.encoder.layer.{i}.output.dense" for i in range(len(model.minivlm.encoder.layer))]
    fused = optimize_for_inference(model)  # fused QKV, as optimize_for_inference calibrates it
    ranges = linear_input_ranges(fused, {**calibration, "labels": torch.zeros(4, dtype=torch.long)})
    assert sorted(ranges) == sorted(fusion_linear_names(fused))
    for name in down:
        assert ranges[name].shape == (model.get_submodule(name).in_features,)
        assert sorted(ranges[name].topk(4).indices.tolist()) == planted.tolist()
    full = optimize_for_inference(model, int8=True)
    scaled = quantize_fusion_int8(fused, ranges, outlier_ffn_channels=4, outlier_other_channels=0)
    layer = scaled.minivlm.encoder.layer[0].output.dense
    assert isinstance(layer, OutlierScaledInt8Linear) and layer.outlier_index.tolist() == planted.tolist()
    assert (layer.inverse_scale[planted] < 0.1).all() and int((layer.inverse_scale == 1).sum()) == layer.in_features - 4
    assert type(scaled.minivlm.encoder.layer[0].intermediate.dense) is not OutlierScaledInt8Linear
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        ref = model(**inputs).logits
        err_full = (full(**inputs).logits - ref).abs().mean()
        assert (scaled(**inputs).logits - ref).abs().mean() < 0.7 * err_full
    # through optimize_for_inference: every quantised Linear scaled (default 16 FFN / 8 other channels)
    calibrated = optimize_for_inference(model, int8=True, int8_calibration=calibration)
    summary = calibrated.minivlm_optimizations
    assert summary.int8_calibrated and summary.int8_linear_layers == full.minivlm_optimizations.int8_linear_layers
    quantised = [m for m in calibrated.modules() if isinstance(m, OutlierScaledInt8Linear)]
    assert len(quantised) == summary.int8_linear_layers
    with torch.inference_mode():
        assert (calibrated(**inputs).logits - ref).abs().mean() < err_full
    with pytest.raises(ValueError, match="pass int8=True"):
        optimize_for_inference(model, int8_calibration=calibration)
    with pytest.raises(ValueError, match="no calibration range"):
        quantize_fusion_int8(optimize_for_inference(model), {down[0]: ranges[down[0]]})


def test_fused_qkv_is_exact_in_fp32_and_skips_models_without_support():
    from minivlm_hf.fast import fuse_qkv_projections

    model = _vqa_model()
    fused = optimize_for_inference(model)
    attention = fused.minivlm.encoder.layer[0].attention.self
    assert fused.minivlm_optimizations.fused_qkv_layers == len(model.minivlm.encoder.layer)
    assert not hasattr(attention, "query") and attention.qkv.out_features == 3 * attention.qkv.in_features
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        torch.testing.assert_close(fused(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)

    class OtherAttention(nn.Module):  # query / key / value Linears but no `project_qkv` to route them through
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    other = nn.Sequential(OtherAttention())
    assert fuse_qkv_projections(other) == 0 and type(other[0].query) is nn.Linear


def test_int8_leaves_the_tee_alone_and_excludes_bf16():
    model = MiniVLMForQuestionAnswering(tiny_fusion_config(vision_config=tiny_tee_config())).eval()
    fast = optimize_for_inference(model, int8=True)
    assert type(fast.minivlm.vision_model.box_head.fc1) is nn.Linear  # the TEE keeps float Linear layers
    assert type(fast.minivlm.encoder.layer[0].attention.self.qkv) is not nn.Linear  # fused, then quantised
    with pytest.raises(ValueError, match="choose one"):
        optimize_for_inference(model, int8=True, bf16=True)


def test_bf16_fusion_outputs_close():
    model = _vqa_model(vision_config=tiny_tee_config(box_head_dim=16), tag_token_ids={i: [10 + i] for i in range(4)})
    fast = optimize_for_inference(model, bf16=True)
    assert fast.minivlm.encoder.layer[0].output.dense.weight.dtype == torch.bfloat16
    assert fast.minivlm.vision_model.box_head.fc1.weight.dtype == torch.float32  # TEE stays fp32
    inputs = _vqa_inputs(batch=16)
    with torch.inference_mode():
        ref = model(**inputs).logits
        out = fast(**inputs).logits.float()
        torch.testing.assert_close(out, ref, atol=0.05 * float(ref.abs().max()), rtol=0.05)
        # From pixels: the fp32 TEE feeds the bf16 fusion model.
        pixel_values = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        text = text_inputs(batch=2)
        a = model(**text, pixel_values=pixel_values).logits
        b = fast(**text, pixel_values=pixel_values).logits.float()
    torch.testing.assert_close(b, a, atol=0.05 * float(a.abs().max()), rtol=0.05)


def test_fast_captioning_generates():
    """bf16: cached and uncached decoding give the same tokens. int8 (dynamic quantisation) need not: each Linear
    quantises its input with a scale taken from that input, and a cached step feeds one token where an uncached one
    feeds the whole sequence. Its tokens must still mostly agree with fp32."""
    torch.manual_seed(0)
    config = tiny_fusion_config()
    model = MiniVLMForImageCaptioning(config).eval()
    inputs = {**region_inputs(batch=2), **tag_inputs()}
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1)
    prompt = torch.full((2, 1), config.cls_token_id)
    with torch.inference_mode():
        reference = model.generate(input_ids=prompt, **inputs, **kwargs)
        fast = optimize_for_inference(model, bf16=True)
        cached = fast.generate(input_ids=prompt, **inputs, use_cache=True, **kwargs)
        assert torch.equal(cached, fast.generate(input_ids=prompt, **inputs, use_cache=False, **kwargs))
        tokens = optimize_for_inference(model, int8=True).generate(input_ids=prompt, **inputs, **kwargs)
    assert tokens.shape == reference.shape
    assert (tokens == reference).float().mean() >= 0.7
    assert "cls.predictions.decoder" in fusion_linear_names(model)


def test_compile_option_only_marks_the_dense_parts(tee):
    fast = optimize_for_inference(tee, compile=True)  # compiles lazily, on the first call (not made here)
    assert fast.minivlm_optimizations.compiled == ["backbone+bifpn"]
    assert fast.backbone._compiled_call_impl is not None and fast.proposal_head._compiled_call_impl is None


def test_int8_activations_use_all_8_bits_where_the_cpu_cannot_saturate(monkeypatch):
    """torch's dynamic Linear quantises activations to 7 bits (AVX2 kernels sum u8 x s8 pairs in saturating int16);
    on VNNI / AMX CPUs ``quantize_fusion_int8`` uses all 8, which halves the activation rounding."""
    import copy

    import minivlm_hf.fast.int8 as int8_module
    from minivlm_hf.fast import FullRangeInt8Linear, full_range_activations_are_safe, quantize_fusion_int8
    from minivlm_hf.fast.int8 import _cpu_supports

    safe = full_range_activations_are_safe()
    assert safe == _cpu_supports("_is_vnni_supported")
    model = _vqa_model()
    names = fusion_linear_names(model)
    default = quantize_fusion_int8(copy.deepcopy(model))
    assert all(isinstance(default.get_submodule(n), FullRangeInt8Linear) == safe for n in names)
    monkeypatch.setattr(int8_module, "full_range_activations_are_safe", lambda: False)
    seven = quantize_fusion_int8(copy.deepcopy(model))
    monkeypatch.setattr(int8_module, "full_range_activations_are_safe", lambda: True)
    eight = quantize_fusion_int8(copy.deepcopy(model))
    assert not any(isinstance(m, FullRangeInt8Linear) for m in seven.modules())
    assert all(isinstance(eight.get_submodule(n), FullRangeInt8Linear) for n in names)
    if not safe:
        pytest.skip("8-bit activations may saturate on this CPU (no VNNI); only the 7-bit default is checked")
    # the same packed weights, twice the activation resolution
    layer7, layer8 = seven.get_submodule(names[0]), eight.get_submodule(names[0])
    torch.testing.assert_close(layer8.weight(), layer7.weight(), rtol=0, atol=0)
    inputs = _vqa_inputs(batch=16)
    with torch.inference_mode():
        ref = model(**inputs).logits
        err7 = (seven(**inputs).logits - ref).pow(2).mean().sqrt()
        err8 = (eight(**inputs).logits - ref).pow(2).mean().sqrt()
    assert err8 < 0.7 * err7, (float(err8), float(err7))
