"""The model-test contract, runtime part: `device_map` loading, disk offload, `torch.export` and `torch.compile`
for the fusion classes (tiny configs, precomputed regions)."""

import pytest
import torch

from contract_testers import (
    FUSION_CLASSES,
    FusionModelTester,
    assert_outputs_close,
)
from minivlm_hf.modeling.modeling_minivlm import MiniVLMModel
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning

TESTER = FusionModelTester()
CLASSES = pytest.mark.parametrize("model_class", FUSION_CLASSES, ids=[c.__name__ for c in FUSION_CLASSES])


def _saved_model(model_class, path):
    torch.manual_seed(0)
    model = model_class(TESTER.get_config()).eval()
    model.save_pretrained(path)
    return model


def _generate(model, inputs, **kwargs):
    return model.generate(
        **{k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")},
        input_ids=inputs["input_ids"][:, :1], max_new_tokens=4, do_sample=False, **kwargs,
    )


@CLASSES
def test_device_map_cpu_matches_the_plain_model(model_class, tmp_path):
    model = _saved_model(model_class, tmp_path)
    mapped = model_class.from_pretrained(tmp_path, device_map="cpu").eval()
    assert {str(p.device) for p in mapped.parameters()} == {"cpu"}
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), mapped(**inputs), atol=0, rtol=0)
    if model_class is MiniVLMForImageCaptioning:
        assert torch.equal(_generate(model, inputs), _generate(mapped, inputs))


def _offload_map(model):
    """A device map that keeps the region embeddings on the CPU and sends every other module (word embeddings and
    the head tied to them, encoder, pooler) to disk, as `infer_auto_device_map` does when the memory runs out."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix + "."
    device_map = {
        prefix + name: "cpu" if name == "region_embeddings" else "disk"
        for name, _ in base.named_children()
    }
    device_map.update({name: "disk" for name, _ in model.named_children() if base is not model and name != model.base_model_prefix})
    return device_map


@CLASSES
def test_disk_offload_forward_matches_the_plain_model(model_class, tmp_path):
    model = _saved_model(model_class, tmp_path / "model")
    device_map = _offload_map(model)
    offloaded = model_class.from_pretrained(
        tmp_path / "model", device_map=device_map, offload_folder=str(tmp_path / "offload")
    ).eval()
    inputs = TESTER.prepare_inputs(model_class)
    with torch.no_grad():
        assert_outputs_close(model(**inputs), offloaded(**inputs), atol=1e-6, rtol=1e-5)


def test_disk_offload_cached_generate_matches_the_plain_model(tmp_path):
    model_class = MiniVLMForImageCaptioning
    model = _saved_model(model_class, tmp_path / "model")
    offloaded = model_class.from_pretrained(
        tmp_path / "model", device_map=_offload_map(model), offload_folder=str(tmp_path / "offload")
    ).eval()
    inputs = TESTER.prepare_inputs(model_class)
    assert torch.equal(_generate(model, inputs, use_cache=True), _generate(offloaded, inputs, use_cache=True))


# ---------------------------------------------------------------------------------------------------------------
# torch.export / torch.compile
# ---------------------------------------------------------------------------------------------------------------
def _assert_real_positions_close(model_class, got, expected, inputs):
    """Traced graphs run the padded layout, eager mode may skip the padding: compare the real positions."""
    got = type(expected)(**got) if isinstance(got, dict) else got
    if isinstance(got, tuple):
        got = type(expected)(**dict(zip(expected.keys(), got)))
    for a, b in zip(*(TESTER.main_output(model_class, out, inputs)[0] for out in (got, expected))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_export_fusion_encoder():
    torch.manual_seed(0)
    model = MiniVLMModel(TESTER.get_config()).eval()
    inputs = TESTER.prepare_inputs(MiniVLMModel)
    exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
    with torch.no_grad():
        expected = model(**inputs)
        got = exported.module()(**inputs)
    _assert_real_positions_close(MiniVLMModel, got, expected, inputs)


def test_export_captioning_decoder_step():
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(TESTER.get_config()).eval()
    inputs = TESTER.prepare_inputs(MiniVLMForImageCaptioning)
    step = {**inputs, "predict_next": True, "use_cache": False}
    exported = torch.export.export(model, args=(), kwargs=step, strict=False)
    with torch.no_grad():
        expected = model(**step).logits
        got = exported.module()(**step)
    torch.testing.assert_close(got[0] if isinstance(got, tuple) else got.logits, expected)


@pytest.mark.parametrize("model_class", [MiniVLMModel, MiniVLMForImageCaptioning], ids=lambda c: c.__name__)
def test_torch_compile_matches_eager(model_class):
    """`aot_eager` traces the model through dynamo and AOTAutograd as inductor would, without the C++ compile
    that would take minutes on a CPU."""
    torch.manual_seed(0)
    model = model_class(TESTER.get_config()).eval()
    inputs = TESTER.prepare_inputs(model_class)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        expected = model(**inputs)
        got = compiled(**inputs)
    _assert_real_positions_close(model_class, got, expected, inputs)
