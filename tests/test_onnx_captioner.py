"""ONNX captioner (minivlm_hf.export.OnnxCaptioner): a tiny captioner with a TEE exported by the CLI; ONNX Runtime
greedy tokens must equal PyTorch's `generate(do_sample=False, num_beams=1)`, step logits within 1e-4."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from tee_utils import tiny_image_processor, tiny_tee_config  # noqa: E402
from transformers import AutoProcessor, GenerationConfig  # noqa: E402

import minivlm_hf  # noqa: E402,F401  (registers the Auto classes)
from minivlm_hf.cli import main  # noqa: E402
from minivlm_hf.convert import load_offline_tokenizer  # noqa: E402
from minivlm_hf.export import OnnxCaptioner  # noqa: E402
from minivlm_hf.export.onnx import MANIFEST  # noqa: E402
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig  # noqa: E402
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning  # noqa: E402
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor  # noqa: E402

ATOL = 1e-4
PROMPTS = ["", "a red box"]  # an empty prompt ([CLS] only) and a 3-word one: different lengths, re-padded on the left


def _image(seed, size):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[10:30, 10:30] = (220, 30, 30)
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def captioner():
    processor = MiniVLMProcessor(tiny_image_processor(), load_offline_tokenizer(), max_text_length=16,
                                 max_tag_length=10)
    config = processor.prepare_config(MiniVLMConfig(
        vision_config=tiny_tee_config(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, region_feature_size=32, max_regions=10, tag_score_threshold=0.0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ))
    torch.manual_seed(0)
    return MiniVLMForImageCaptioning(config).eval(), processor


@pytest.fixture(scope="module")
def exported(captioner, tmp_path_factory):
    """`minivlm-hf export onnx` of the saved captioner (model + processor folder)."""
    model, processor = captioner
    root = tmp_path_factory.mktemp("onnx_captioner")
    model_dir, out = root / "model", root / "onnx"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    assert main(["export", "onnx", "--model", str(model_dir), "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def inputs(exported):
    processor = AutoProcessor.from_pretrained(exported)  # the processor saved next to the graphs
    return processor(images=[_image(0, (60, 48)), _image(1, (40, 64))], text=PROMPTS)


def test_export_layout_names_and_verification(exported, capsys):
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx", "config.json", "generation_config.json",
                 "processor_config.json", "tokenizer.json", "tee_dense.onnx", "tee_box_head.onnx"):
        assert (exported / name).is_file(), name
    assert not list(exported.glob("*.onnx.data"))  # self-contained graphs
    manifest = json.loads((exported / MANIFEST).read_text())
    assert manifest["passed"]
    assert manifest["exporters"]["decoder_with_past_model"].startswith("torch.onnx.export(dynamo=True)")
    assert manifest["verification"]["generate.tokens"]["max_abs"] == 0  # no token differs
    assert max(d["max_abs"] for d in manifest["verification"].values()) <= ATOL
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["MiniVLMForImageCaptioning"]
    runner = OnnxCaptioner.from_pretrained(exported)
    past = [f"past_key_values.{i}.{kind}" for i in range(2) for kind in ("key", "value")]
    present = [name.replace("past_key_values", "present") for name in past]
    assert [i.name for i in runner.step_session.get_inputs()] == [
        "input_ids", "attention_mask", "position_ids", "prefix_attention_mask", *past]
    assert [o.name for o in runner.step_session.get_outputs()] == ["logits", *present]
    assert [o.name for o in runner.prefill_session.get_outputs()] == ["logits", "prefix_attention_mask", *present]


def test_greedy_tokens_equal_pytorch_end_to_end(captioner, exported, inputs):
    model, _ = captioner
    runner = OnnxCaptioner.from_pretrained(exported)
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False, num_beams=1)
    got = runner.generate(**inputs, max_new_tokens=8)
    assert got.shape == (2, 4 + 8)  # "[CLS] a red box" (its [SEP] dropped) + 8 new tokens
    assert torch.equal(got, expected)
    # No prompt at all (starts from [CLS]).
    image = {"pixel_values": inputs["pixel_values"], "pixel_mask": inputs["pixel_mask"]}
    assert torch.equal(runner.generate(**image, max_new_tokens=5),
                       model.generate(**image, max_new_tokens=5, do_sample=False, num_beams=1))
    # A row that ends early: its later tokens are padding, and decoding stops when every row has ended.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.eos_token_id = int(expected[1, 6])  # row 1's 3rd new token
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False, num_beams=1,
                              generation_config=generation_config)
    got = runner.generate(**inputs, max_new_tokens=8, generation_config=generation_config)
    assert torch.equal(got, expected)
    new = got[1, 4:].tolist()
    end = new.index(generation_config.eos_token_id)
    assert set(new[end + 1:]) <= {generation_config.pad_token_id}


def test_prefill_and_step_logits_match_pytorch(captioner, exported, inputs):
    model, _ = captioner
    runner = OnnxCaptioner.from_pretrained(exported)
    with torch.no_grad():
        image = model.minivlm.get_image_features(inputs["pixel_values"], inputs["pixel_mask"]).region_inputs()
        onnx_image = runner.image_inputs(inputs["pixel_values"], inputs["pixel_mask"])
        for name, value in image.items():
            assert (onnx_image[name].float() - value.float()).abs().max() <= ATOL, name
        ids, mask = model._left_padded_prompts(inputs["input_ids"], inputs["attention_mask"])
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        # What generate's first call and each cached step compute (prepare_inputs_for_generation).
        ref = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, predict_next=True,
                    **image)
        logits, prefix_mask, *past = runner.prefill(input_ids=ids, attention_mask=mask, position_ids=position,
                                                    **image)
        assert (torch.from_numpy(logits) - ref.logits).abs().max() <= ATOL
        assert torch.equal(torch.from_numpy(prefix_mask).bool(), ref.prefix_attention_mask.bool())
        cache, prefix = ref.cache, ref.prefix_attention_mask
        for step in range(3):
            token = ref.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            position = mask.cumsum(-1)[:, -1:] - 1
            ref = model(input_ids=token, attention_mask=mask, position_ids=position, cache=cache,
                        prefix_attention_mask=prefix, use_cache=True, predict_next=True)
            logits, *past = runner.step(token, mask, position, prefix_mask, past)
            assert (torch.from_numpy(logits) - ref.logits).abs().max() <= ATOL, step
            keys = torch.from_numpy(past[2])  # layer 1's keys: prefix + prompt + every token so far
            assert keys.shape == ref.cache.layers[1].keys.shape
            assert (keys - ref.cache.layers[1].keys).abs().max() <= ATOL
            cache = ref.cache


def test_bad_inputs(exported, inputs, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an ONNX captioner export.*decoder_model.onnx"):
        OnnxCaptioner.from_pretrained(tmp_path)
    runner = OnnxCaptioner.from_pretrained(exported)
    with pytest.raises(ValueError, match="needs an image"):
        runner.generate(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        runner.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"][:1],
                        pixel_mask=inputs["pixel_mask"][:1])
    with pytest.raises(ValueError, match="repetition_penalty=1.3"):
        runner.generate(**inputs, generation_config=GenerationConfig(repetition_penalty=1.3))
