"""`minivlm_hf.fast.enable_cpu_fast_paths`: CPU kernel choices applied from outside plain model definitions.

The plain models make none of these choices; with them the outputs, parameters, state-dict names and saved files are
unchanged, each choice falls back where it must, and accelerate-hooked (offloaded) modules are left alone.
"""

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from fusion_utils import region_inputs, tag_inputs, text_inputs, tiny_fusion_config
from tee_utils import padded_pair_batch, tiny_tee_config

from minivlm_hf.fast import FewRowsLinear, FP32TrainingDepthwiseConv2d, enable_cpu_fast_paths, optimize_for_inference
from minivlm_hf.fast import cpu as fast_cpu
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEModel


def _tee(cls=TEEModel, seed=0):
    torch.manual_seed(seed)
    return cls(tiny_tee_config()).eval()


def _batch(seed=0):
    return padded_pair_batch(seed)


def _backbone_inputs(model):
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return seen


# ------------------------------------------------------------------------------------------------ TEE


def test_plain_tee_makes_no_cpu_choice():
    model = _tee()
    seen = _backbone_inputs(model)
    with torch.no_grad():
        model(*_batch())
    assert len(seen) == 1 and seen[0].shape[0] == 2 and seen[0].is_contiguous()  # whole batch, NCHW
    assert all(type(m) in (nn.Conv2d,) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_tee_inference_runs_nhwc_one_image_at_a_time_with_the_same_outputs():
    plain, fast = _tee(), _tee()
    assert enable_cpu_fast_paths(fast) > 0 and enable_cpu_fast_paths(fast) == 0  # idempotent
    assert plain.state_dict().keys() == fast.state_dict().keys()
    seen = _backbone_inputs(fast)
    with torch.no_grad():
        a, b = plain(*_batch(), output_hidden_states=True), fast(*_batch(), output_hidden_states=True)
    assert [x.shape[0] for x in seen] == [1, 1] and all(
        x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    for x, y in zip(a.feature_maps, b.feature_maps):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.region_features, b.region_features, rtol=1e-4, atol=1e-5)
    seen.clear()
    fast.train()
    fast(*_batch())
    assert [x.shape[0] for x in seen] == [2]  # training sees the whole batch


def test_depthwise_convolutions_train_in_fp32_under_cpu_autocast():
    """Every depthwise conv (EfficientNet and BiFPN) outputs fp32 in training under bf16 autocast and bf16 in eval;
    the other convolutions stay bf16; parameter names and values are nn.Conv2d's."""
    model = _tee(TEEForObjectDetection)
    names_before = list(model.state_dict())
    enable_cpu_fast_paths(model)
    assert list(model.state_dict()) == names_before
    depthwise = {n: m for n, m in model.named_modules() if isinstance(m, FP32TrainingDepthwiseConv2d)}
    plain = [m for m in model.modules() if type(m) is nn.Conv2d]
    assert any(n.startswith("tee.backbone.") for n in depthwise) and any(".bifpn." in n for n in depthwise)
    assert all(m.groups == m.in_channels == m.out_channels > 1 for m in depthwise.values())
    assert plain and all(m.groups == 1 for m in plain)
    dtypes = {}
    for name, module in [*depthwise.items()][:1] + [("plain", plain[0])]:
        module.register_forward_hook(lambda m, i, o, name=name: dtypes.setdefault(name, []).append(o.dtype))
    pixel_values, _ = _batch()
    for training in (True, False):
        model.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(training):
            model.tee.bifpn(model.tee.backbone(pixel_values))
    first = next(iter(depthwise))
    assert dtypes[first][0] == torch.float32 and dtypes[first][-1] == torch.bfloat16
    assert set(dtypes["plain"]) == {torch.bfloat16}


# ------------------------------------------------------------------------------------------------ fusion


def test_few_rows_linear_matches_nn_linear_and_falls_back_where_it_must(monkeypatch):
    calls = []
    plain_linear = nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda *a, **k: calls.append(1) or plain_linear(*a, **k))
    torch.manual_seed(0)
    for bias in (True, False):
        reference = nn.Linear(24, 40, bias=bias)
        fast = nn.Linear(24, 40, bias=bias)
        fast.load_state_dict(reference.state_dict())
        fast.__class__ = FewRowsLinear
        for shape in ((1, 24), (2, 24), (1, 1, 24), (1, 2, 24), (2, 2, 24)):
            x = torch.randn(shape)
            expected = reference(x)
            calls.clear()
            out = fast(x)
            assert calls == [] and out.shape == expected.shape and out.is_contiguous()
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    transposed = nn.Linear(24, 40)
    transposed.weight.data = transposed.weight.detach().t().contiguous().t()
    cases = {
        "more rows": (nn.Linear(24, 40), torch.randn(5, 24)),
        "bf16": (nn.Linear(24, 40).to(torch.bfloat16), torch.randn(2, 24, dtype=torch.bfloat16)),
        "transposed storage": (transposed, torch.randn(2, 24)),
    }
    for name, (linear, x) in cases.items():
        linear.__class__ = FewRowsLinear
        calls.clear()
        linear(x)
        assert calls == [1], name
    linear = nn.Linear(24, 40)
    linear.__class__ = FewRowsLinear
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear(torch.randn(2, 24))
    assert calls == [1]


@pytest.fixture
def few_rows_always(monkeypatch):
    """The few-row path on every Linear, whichever kernel this CPU runs faster."""
    monkeypatch.setattr(fast_cpu, "few_rows_pays", lambda *args, **kwargs: True)


def test_few_row_linears_are_used_only_where_this_cpu_runs_them_faster(monkeypatch):
    """The choice follows the timing of the two kernels for each weight shape (rows: 2, 5 for the LM head)."""
    asked = []

    def timings(out_features, in_features, rows, threads):
        asked.append((out_features, in_features, rows))
        return (1.0, 0.5) if (out_features, in_features) == (64, 32) else (1.0, 0.9)  # W @ x^T wins clearly

    monkeypatch.setattr(fast_cpu, "_few_rows_timings", timings)
    assert fast_cpu.few_rows_pays(64, 32) and not fast_cpu.few_rows_pays(32, 64)
    torch.manual_seed(0)
    config = tiny_fusion_config()  # hidden 32, FFN 64: only the FFN's up-projections are 32 -> 64
    model = MiniVLMForImageCaptioning(config).eval()
    enable_cpu_fast_paths(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    fast = {n for n, m in linears.items() if type(m) is FewRowsLinear}
    assert len(fast) == config.num_hidden_layers
    assert fast == {n for n, m in linears.items() if (m.out_features, m.in_features) == (64, 32)}
    assert (config.vocab_size, config.hidden_size, 5) in asked  # the LM head is timed with one row per beam


def test_few_rows_timings_measure_both_kernels_on_the_given_shape():
    plain, transposed = fast_cpu._few_rows_timings(48, 32, 2, torch.get_num_threads())
    assert 0 < plain < 0.01 and 0 < transposed < 0.01  # seconds per call of a 48 x 32 Linear on 2 rows
    assert fast_cpu._few_rows_timings(48, 32, 2, torch.get_num_threads()) == (plain, transposed)  # timed once


def test_fusion_fast_paths_keep_weights_outputs_and_saved_files(tmp_path, few_rows_always):
    torch.manual_seed(0)
    config = tiny_fusion_config()
    plain = MiniVLMForImageCaptioning(config).eval()
    fast = MiniVLMForImageCaptioning(config).eval()
    fast.load_state_dict(plain.state_dict())
    changed = enable_cpu_fast_paths(fast)
    linears = [n for n, m in fast.named_modules() if isinstance(m, nn.Linear)]
    assert changed == len(linears) and all(type(fast.get_submodule(n)) is FewRowsLinear for n in linears)
    assert fast.cls.predictions.decoder.max_rows == 16 and fast.cls.predictions.decoder.weight is \
        fast.minivlm.embeddings.word_embeddings.weight  # still tied
    inputs = {**region_inputs(), **text_inputs()}
    torch.testing.assert_close(fast(**inputs).logits, plain(**inputs).logits, atol=1e-5, rtol=1e-5)
    plain.save_pretrained(tmp_path / "plain")
    fast.save_pretrained(tmp_path / "fast")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes()


def test_cached_decoding_with_the_fast_paths_keeps_the_tokens_of_reencoding(few_rows_always):
    """The plain, the CPU-fast-path and the fused-QKV captioner decode the same tokens with the cache (few-row
    Linears) as the plain model without it, greedy and with beams."""
    torch.manual_seed(0)
    config = tiny_fusion_config(vision_config=tiny_tee_config())
    model = MiniVLMForImageCaptioning(config).eval()
    inputs = {**region_inputs(batch=2, features=config.region_feature_size), **tag_inputs()}
    prompt = torch.full((2, 1), config.cls_token_id)
    fast = MiniVLMForImageCaptioning(config).eval()
    fast.load_state_dict(model.state_dict())
    enable_cpu_fast_paths(fast)
    fused = optimize_for_inference(model)
    assert fused.minivlm_optimizations.fused_qkv_layers == config.num_hidden_layers
    assert type(fused.minivlm.encoder.layer[0].attention.self.qkv) is FewRowsLinear
    with torch.inference_mode():
        for beams in (1, 3):
            kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams)
            reference = model.generate(input_ids=prompt, **inputs, use_cache=False, **kwargs)
            for candidate in (model, fast, fused):
                assert torch.equal(candidate.generate(input_ids=prompt, **inputs, use_cache=True, **kwargs), reference)
    with pytest.raises(ValueError, match="inference-only copy"), tempfile.TemporaryDirectory() as out:
        fused.save_pretrained(out)  # a clear refusal, not a stack trace from the shared-tensor check


def test_offloaded_model_decodes_like_the_plain_one_and_keeps_its_hooks(tmp_path, few_rows_always):
    """Disk offload (`device_map` + `offload_folder`): accelerate's hooks load each weight before its module runs.
    Forward and cached `generate` equal the in-memory model's, before and after `enable_cpu_fast_paths`, which
    leaves the hooked modules alone."""
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(tiny_fusion_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    device_map = {"minivlm.embeddings": "cpu", "minivlm.region_embeddings": "cpu", "minivlm.encoder.layer.0": "cpu",
                  "minivlm.encoder.layer.1": "disk", "cls": "cpu"}
    offloaded = MiniVLMForImageCaptioning.from_pretrained(
        tmp_path / "ckpt", device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert offloaded.minivlm.encoder.layer[1].output.dense.weight.device.type == "meta"
    inputs = region_inputs()
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    for step in ("before", "after"):
        if step == "after":
            enable_cpu_fast_paths(offloaded)
            assert type(offloaded.minivlm.encoder.layer[1].output.dense) is nn.Linear  # hooked: left alone
        torch.testing.assert_close(offloaded(**inputs, **text_inputs()).logits,
                                   model(**inputs, **text_inputs()).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(offloaded.generate(**inputs, max_new_tokens=5, do_sample=False), expected), step
    assert Path(tmp_path / "offload").is_dir()
