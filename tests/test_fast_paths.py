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
    fast = optimize_for_inference(tee, channels_last=False)
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
    fast = optimize_for_inference(tee)  # defaults: fuse_bn + channels_last
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
    float_linears = [n for n, m in fast.named_modules() if type(m) is nn.Linear]
    assert float_linears == ["minivlm.region_embeddings.projection"]  # kept in float on purpose
    assert "minivlm.region_embeddings.projection" in fusion_linear_names(model, include_region_embedding=True)
    inputs = _vqa_inputs()
    with torch.inference_mode():
        ref = model(**inputs).logits
        out = fast(**inputs).logits
    assert (out - ref).abs().max() <= 0.1 * ref.abs().max()
    agreement = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agreement >= 0.9, f"int8 argmax agreement {agreement:.2f}"


def test_int8_weights_have_one_scale_per_output_channel_and_beat_per_tensor_scales():
    import copy

    from minivlm_hf.fast import quantize_fusion_int8

    model = _vqa_model()
    linear = model.minivlm.encoder.layer[0].output.dense
    with torch.no_grad():  # rows of very different magnitude, as trained layers have
        rows = torch.logspace(-2, 0, linear.out_features).unsqueeze(1)
        linear.weight.mul_(rows[torch.randperm(linear.out_features, generator=torch.Generator().manual_seed(0))])
    per_channel = quantize_fusion_int8(copy.deepcopy(model))
    per_tensor = quantize_fusion_int8(copy.deepcopy(model), per_channel=False)
    weight = per_channel.minivlm.encoder.layer[0].output.dense.weight()
    assert weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
    assert weight.q_per_channel_scales().numel() == weight.shape[0]
    coarse = per_tensor.minivlm.encoder.layer[0].output.dense.weight()
    assert coarse.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
    # relative rounding error of each row: per-tensor scales flatten the small rows to a few levels
    row_error = lambda q: ((q.dequantize() - linear.weight).norm(dim=1) / linear.weight.norm(dim=1)).max()  # noqa: E731
    assert row_error(weight) < 0.01 < row_error(coarse)
    inputs = _vqa_inputs()
    with torch.inference_mode():
        ref = model(**inputs).logits
        err_channel = (per_channel(**inputs).logits - ref).abs().mean()
        err_tensor = (per_tensor(**inputs).logits - ref).abs().mean()
    assert err_channel <= err_tensor


def test_int8_float_ffn_output_keeps_the_down_projections_in_float_and_avoids_their_outlier_error():
    """A few GELU-output channels far above the rest (as in trained BERTs) spoil the per-tensor activation scale
    of the FFN down-projection; ``int8_float_ffn_output`` keeps exactly those Linears in float."""
    model = _vqa_model()
    with torch.no_grad():  # 4 intermediate channels 200x larger, compensated in the down-projection: same function
        for layer in model.minivlm.encoder.layer:
            up, down = layer.intermediate.dense, layer.output.dense
            up.weight[:4] *= 200.0
            up.bias[:4] *= 200.0
            down.weight[:, :4] /= 200.0
    names = fusion_linear_names(model)
    kept = sorted(set(names) - set(fusion_linear_names(model, include_ffn_output=False)))
    assert kept == [f"minivlm.encoder.layer.{i}.output.dense" for i in range(len(model.minivlm.encoder.layer))]
    full = optimize_for_inference(model, int8=True)
    mixed = optimize_for_inference(model, int8=True, int8_float_ffn_output=True)
    layer = mixed.minivlm.encoder.layer[0]
    assert type(layer.output.dense) is nn.Linear
    assert type(layer.attention.output.dense) is not nn.Linear and type(layer.intermediate.dense) is not nn.Linear
    assert mixed.minivlm_optimizations.int8_linear_layers == full.minivlm_optimizations.int8_linear_layers - len(kept)
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        ref = model(**inputs).logits
        err_full = (full(**inputs).logits - ref).abs().mean()
        err_mixed = (mixed(**inputs).logits - ref).abs().mean()
    assert err_mixed < 0.7 * err_full, (float(err_mixed), float(err_full))


def test_int8_keeps_the_calibrated_outlier_channels_of_the_ffn_down_projections_in_float():
    """``int8_outlier_ffn_channels``: the calibration ranges (``ffn_input_ranges``) find the planted outlier channels of
    every FFN down-projection; only those stay in float, the rest of the Linear is int8, and the error is far below
    plain int8's."""
    from minivlm_hf.fast import OutlierSplitInt8Linear, ffn_input_ranges

    model = _vqa_model()
    planted = torch.tensor([3, 17, 40, 41])
    with torch.no_grad():  # 4 intermediate channels 200x larger, compensated in the down-projection: same function
        for layer in model.minivlm.encoder.layer:
            up, down = layer.intermediate.dense, layer.output.dense
            up.weight[planted] *= 200.0
            up.bias[planted] *= 200.0
            down.weight[:, planted] /= 200.0
    calibration = _vqa_inputs(batch=4)
    ranges = ffn_input_ranges(model, {**calibration, "labels": torch.zeros(4, dtype=torch.long)})
    down = [f"minivlm.encoder.layer.{i}.output.dense" for i in range(len(model.minivlm.encoder.layer))]
    assert sorted(ranges) == down
    for name in down:
        assert ranges[name].shape == (model.get_submodule(name).in_features,)
        assert sorted(ranges[name].topk(4).indices.tolist()) == planted.tolist()
    full = optimize_for_inference(model, int8=True)
    split = optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4, int8_calibration=calibration)
    layer = split.minivlm.encoder.layer[0].output.dense
    assert isinstance(layer, OutlierSplitInt8Linear) and layer.outlier_index.tolist() == planted.tolist()
    assert int(layer.rest_mask.sum()) == layer.in_features - 4 and type(layer.rest) is not nn.Linear
    assert not layer.rest_mask[planted].any()
    assert split.minivlm_optimizations.int8_linear_layers == full.minivlm_optimizations.int8_linear_layers
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        ref = model(**inputs).logits
        err_full = (full(**inputs).logits - ref).abs().mean()
        err_split = (split(**inputs).logits - ref).abs().mean()
    assert err_split < 0.7 * err_full, (float(err_split), float(err_full))  # measured: 0.55x
    every = optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4, int8_outlier_other_channels=2,
                                   int8_calibration=calibration)
    quantised = [m for m in every.modules() if isinstance(m, OutlierSplitInt8Linear)]
    assert len(quantised) == every.minivlm_optimizations.int8_linear_layers == \
        full.minivlm_optimizations.int8_linear_layers
    assert {m.outlier_index.numel() for m in quantised} == {2, 4}
    with torch.inference_mode():
        assert (every(**inputs).logits - ref).abs().mean() < err_full
    # outlier_mode="scale": the same channels scaled into the others' range (weight columns scaled up), all int8
    from minivlm_hf.fast import OutlierScaledInt8Linear

    scaled = optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4, int8_outlier_mode="scale",
                                    int8_calibration=calibration)
    layer = scaled.minivlm.encoder.layer[0].output.dense
    assert isinstance(layer, OutlierScaledInt8Linear) and layer.outlier_index.tolist() == planted.tolist()
    assert (layer.inverse_scale[planted] < 0.1).all() and int((layer.inverse_scale == 1).sum()) == layer.in_features - 4
    with torch.inference_mode():
        assert (scaled(**inputs).logits - ref).abs().mean() < 0.7 * err_full
    with pytest.raises(ValueError, match="outlier_mode must be"):
        optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4, int8_outlier_mode="bf16",
                               int8_calibration=calibration)
    with pytest.raises(ValueError, match="need int8_calibration"):
        optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4)
    with pytest.raises(ValueError, match="choose one"):
        optimize_for_inference(model, int8=True, int8_outlier_ffn_channels=4, int8_calibration=calibration,
                               int8_float_ffn_output=True)


def test_fused_qkv_is_exact_in_fp32_and_skips_models_without_support():
    from minivlm_hf.fast import fuse_qkv_projections

    model = _vqa_model()
    fused = optimize_for_inference(model, fuse_bn=False, channels_last=False)
    attention = fused.minivlm.encoder.layer[0].attention.self
    assert fused.minivlm_optimizations.fused_qkv_layers == len(model.minivlm.encoder.layer)
    assert not hasattr(attention, "query") and attention.qkv.out_features == 3 * attention.qkv.in_features
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        torch.testing.assert_close(fused(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    untouched = optimize_for_inference(model, fuse_qkv=False)
    assert untouched.minivlm_optimizations.fused_qkv_layers == 0
    assert type(untouched.minivlm.encoder.layer[0].attention.self.query) is nn.Linear

    class OldAttention(nn.Module):  # e.g. remote code saved before fused QKV existed: no supports_fused_qkv
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    old = nn.Sequential(OldAttention())
    assert fuse_qkv_projections(old) == 0 and type(old[0].query) is nn.Linear


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
        for options in (dict(int8=True), dict(int8=True, include_lm_head=False)):
            tokens = optimize_for_inference(model, **options).generate(input_ids=prompt, **inputs, **kwargs)
            assert tokens.shape == reference.shape
            assert (tokens == reference).float().mean() >= 0.7, options
    assert "cls.predictions.decoder" not in fusion_linear_names(model, include_lm_head=False)
    assert "cls.predictions.decoder" in fusion_linear_names(model)


def test_compile_option_only_marks_the_dense_parts(tee):
    fast = optimize_for_inference(tee, compile=True)  # compiles lazily, on the first call (not made here)
    assert fast.minivlm_optimizations.compiled == ["backbone+bifpn"]
    assert fast.backbone._compiled_call_impl is not None and fast.proposal_head._compiled_call_impl is None


@pytest.mark.parametrize("amx", [True, False])
def test_int8_auto_engine_dispatches_by_row_count_with_the_same_rounding(amx, monkeypatch):
    """``quantize_fusion_int8(engine="auto")`` on an AMX CPU packs every Linear for oneDNN (faster when encoding a
    sequence) and for torch's default engine (faster for the few rows of a decoding step) and picks per call; the
    global engine is left as it was, both packings round alike with 7-bit activations (with 8 they differ a little,
    see ``RowDispatchInt8Linear``), and a deep copy keeps the dispatch. Elsewhere
    (``amx=False``, or a torch without oneDNN) it packs for the default engine only. Both cases run on any CPU: the
    AMX check is patched (the kernels run either way, only slower without AMX)."""
    import copy

    import minivlm_hf.fast.int8 as int8_module
    from minivlm_hf.fast import RowDispatchInt8Linear, int8_engines, quantize_fusion_int8
    from minivlm_hf.fast.int8 import ONEDNN_MIN_ROWS

    if amx and "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this torch build has no oneDNN quantized engine")
    monkeypatch.setattr(int8_module, "_onednn_int8_is_fast", lambda: amx)
    default = torch.backends.quantized.engine
    assert int8_engines("default") == (default,)
    assert int8_engines("auto") == (("onednn", default) if amx and default != "onednn" else (default,))
    with pytest.raises(ValueError, match="engine must be one of"):
        int8_engines("tpu")
    model = _vqa_model()
    auto = quantize_fusion_int8(copy.deepcopy(model), reduce_range=True)
    single = quantize_fusion_int8(copy.deepcopy(model), engine="default", reduce_range=True)
    assert torch.backends.quantized.engine == default
    names = fusion_linear_names(model)
    if amx and default != "onednn":
        assert all(isinstance(auto.get_submodule(n), RowDispatchInt8Linear) for n in names)
        layer = copy.deepcopy(auto).get_submodule(names[0])
        assert isinstance(layer, RowDispatchInt8Linear) and layer.engines == ("onednn", default)
        many, few = torch.randn(2, ONEDNN_MIN_ROWS // 2, layer.in_features), torch.randn(1, 3, layer.in_features)
        assert layer.pack_for(many) is layer.many and layer.pack_for(few) is layer.few
        with torch.inference_mode():
            for x, pack in ((many, layer.many), (few, layer.few)):  # the pack's op, with the layer's activation bits
                expected = torch.ops.quantized.linear_dynamic(x, pack._packed_params._packed_params,
                                                              reduce_range=layer.reduce_range)
                torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert not any(isinstance(m, RowDispatchInt8Linear) for m in single.modules())
    inputs = _vqa_inputs(batch=8)
    with torch.inference_mode():
        ref = model(**inputs).logits
        err_single = (single(**inputs).logits - ref).abs().mean()
        gap = (auto(**inputs).logits - single(**inputs).logits).abs().mean()
        gap_copy = (copy.deepcopy(auto)(**inputs).logits - auto(**inputs).logits).abs().max()
    assert err_single > 0 and gap <= 0.05 * err_single  # measured: gap 2e-8 vs error 3e-3
    assert gap_copy <= 1e-5


def test_int8_activations_use_all_8_bits_where_the_cpu_cannot_saturate():
    """torch's dynamic Linear quantises activations to 7 bits (AVX2 kernels sum u8 x s8 pairs in saturating int16);
    on VNNI / AMX CPUs ``quantize_fusion_int8`` uses all 8 by default, which halves the activation rounding."""
    import copy

    from minivlm_hf.fast import FullRangeInt8Linear, RowDispatchInt8Linear, full_range_activations_are_safe
    from minivlm_hf.fast import quantize_fusion_int8
    from minivlm_hf.fast.int8 import _cpu_supports

    assert full_range_activations_are_safe() == _cpu_supports("_is_vnni_supported")
    model = _vqa_model()
    names = fusion_linear_names(model)
    seven = quantize_fusion_int8(copy.deepcopy(model), engine="default", reduce_range=True)
    eight = quantize_fusion_int8(copy.deepcopy(model), engine="default", reduce_range=False)
    assert not any(isinstance(m, FullRangeInt8Linear) for m in seven.modules())
    assert all(isinstance(eight.get_submodule(n), FullRangeInt8Linear) for n in names)
    auto = quantize_fusion_int8(copy.deepcopy(model))
    for n in names:
        layer = copy.deepcopy(auto.get_submodule(n))
        if isinstance(layer, RowDispatchInt8Linear):
            assert layer.reduce_range == (not full_range_activations_are_safe())
        else:
            assert isinstance(layer, FullRangeInt8Linear) == full_range_activations_are_safe()
    if not full_range_activations_are_safe():
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


def test_few_rows_linear_matches_the_module_and_falls_back_where_it_must():
    """A cached decoding step's Linears (1-4 rows; the LM head up to 16) run as ``W @ x^T``: the same values as the
    module, and the module itself for anything else (more rows, bf16, autocast, hooks, non-contiguous weights)."""
    from minivlm_hf.modeling.modeling_minivlm_layers import few_rows_linear

    def forbid(*args, **kwargs):
        raise AssertionError("the module's own forward ran")

    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(24, 40, bias=bias)
        for shape in ((1, 24), (2, 24), (1, 1, 24), (1, 2, 24), (2, 2, 24)):
            x = torch.randn(shape)
            expected = linear(x)
            linear.forward = forbid  # the few-row path must not call it
            out = few_rows_linear(linear, x)
            del linear.forward
            assert out.shape == expected.shape and out.is_contiguous()
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    linear = nn.Linear(24, 40)
    calls = []
    linear.register_forward_hook(lambda *args: calls.append(1))
    few_rows_linear(linear, torch.randn(2, 24))
    assert calls == [1]  # hooks see the call (e.g. int8 calibration)
    transposed = nn.Linear(24, 40)
    transposed.weight.data = transposed.weight.detach().t().contiguous().t()
    fallbacks = {
        "more rows": (nn.Linear(24, 40), torch.randn(5, 24)),
        "bf16": (nn.Linear(24, 40).to(torch.bfloat16), torch.randn(2, 24, dtype=torch.bfloat16)),
        "transposed storage": (transposed, torch.randn(2, 24)),
    }
    for name, (linear, x) in fallbacks.items():
        linear.forward = forbid
        with pytest.raises(AssertionError, match="own forward ran"):
            few_rows_linear(linear, x)
    linear = nn.Linear(24, 40)
    linear.forward = forbid
    with pytest.raises(AssertionError, match="own forward ran"), torch.autocast("cpu", dtype=torch.bfloat16):
        few_rows_linear(linear, torch.randn(2, 24))
    assert few_rows_linear(linear, torch.randn(16, 24), max_rows=16).shape == (16, 40)


def test_cached_decoding_on_few_rows_keeps_the_tokens_of_reencoding():
    """The plain and the fused-QKV captioner decode the same tokens with the cache (few-row Linears) as without it
    (every Linear on the whole sequence), greedy and with beams; an optimised copy refuses to be saved."""
    torch.manual_seed(0)
    config = tiny_fusion_config(vision_config=tiny_tee_config())
    model = MiniVLMForImageCaptioning(config).eval()
    inputs = {**region_inputs(batch=2, features=config.region_feature_size), **tag_inputs()}
    prompt = torch.full((2, 1), config.cls_token_id)
    fast = optimize_for_inference(model)
    assert fast.minivlm_optimizations.fused_qkv_layers == config.num_hidden_layers
    with torch.inference_mode():
        for beams in (1, 3):
            kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams)
            reference = model.generate(input_ids=prompt, **inputs, use_cache=False, **kwargs)
            for candidate in (model, fast):
                assert torch.equal(candidate.generate(input_ids=prompt, **inputs, use_cache=True, **kwargs), reference)
    with pytest.raises(ValueError, match="inference-only copy"), tempfile.TemporaryDirectory() as out:
        fast.save_pretrained(out)  # a clear refusal, not a stack trace from the shared-tensor check
