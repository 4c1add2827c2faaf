"""The image-processor and processor contract (transformers' `ImageProcessingTestMixin` and `ProcessorTesterMixin`
invariants) for `MiniVLMImageProcessor`, `MiniVLMImageProcessorPil` and `MiniVLMProcessor`."""

import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor

import minivlm_hf  # noqa: F401  (registers the Auto classes)
from contract_testers import ProcessorTester
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor

TESTER = ProcessorTester()
BACKENDS = pytest.mark.parametrize("backend", ["torchvision", "pil"])


@pytest.mark.smoke
def test_pil_and_torchvision_backends_agree():
    images = TESTER.images()
    fast = TESTER.image_processor("torchvision")(images, return_tensors="pt")
    slow = TESTER.image_processor("pil")(images, return_tensors="pt")
    assert fast["pixel_values"].shape == slow["pixel_values"].shape
    assert torch.equal(fast["pixel_mask"], slow["pixel_mask"])
    # resampling differs slightly between PIL and torchvision (as for transformers' own slow / fast pairs)
    assert (fast["pixel_values"] - slow["pixel_values"]).abs().mean() < 0.05


@BACKENDS
def test_image_processor_save_load_and_to_dict(backend, tmp_path):
    processor = TESTER.image_processor(backend, do_normalize=False)
    processor.save_pretrained(tmp_path)
    for loaded in (type(processor).from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path, backend=backend)):
        assert type(loaded) is type(processor)
        assert loaded.to_dict() == processor.to_dict()
    data = processor.to_dict()
    assert data["do_normalize"] is False and data["size"]["longest_edge"] == 64
    assert type(processor).from_dict(data).to_dict() == data
    assert type(processor).from_json_file(tmp_path / "preprocessor_config.json").to_dict() == data


def _real_extent(pixel_mask):
    """(height, width) of the unpadded image in each row of a pixel mask."""
    return [(int(m.any(1).sum()), int(m.any(0).sum())) for m in pixel_mask]


@BACKENDS
def test_image_processor_batched_equals_single(backend):
    processor = TESTER.image_processor(backend)
    images = TESTER.images()
    batched = processor(images, return_tensors="pt")
    for row, image in enumerate(images):
        single = processor(image, return_tensors="pt")
        (height, width), = _real_extent(single["pixel_mask"])
        assert _real_extent(batched["pixel_mask"])[row] == (height, width)
        torch.testing.assert_close(
            batched["pixel_values"][row, :, :height, :width], single["pixel_values"][0, :, :height, :width]
        )


@BACKENDS
def test_image_processor_call_kwargs_override_the_defaults(backend):
    processor = TESTER.image_processor(backend)
    images = TESTER.images()
    base = processor(images, return_tensors="pt")
    raw = processor(images, do_normalize=False, return_tensors="pt")
    assert not torch.allclose(raw["pixel_values"], base["pixel_values"])
    assert 0.0 <= float(raw["pixel_values"].min()) and float(raw["pixel_values"].max()) <= 1.0
    assert [max(e) for e in _real_extent(base["pixel_mask"])] == [64, 64]
    small = processor(images, size={"longest_edge": 32}, return_tensors="pt")
    assert [max(e) for e in _real_extent(small["pixel_mask"])] == [32, 32]
    assert processor.size["longest_edge"] == 64  # a call's kwargs do not change the processor


# ---------------------------------------------------------------------------------------------------------------
# MiniVLMProcessor
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    return TESTER.processor()


@pytest.mark.smoke
def test_processor_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    for loaded in (MiniVLMProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MiniVLMProcessor
        assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
        assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
        assert (loaded.max_text_length, loaded.max_tag_length) == (processor.max_text_length, processor.max_tag_length)
        expected = processor(images=TESTER.images(), text=["a red box", "two"], tags=[["red"], []])
        got = loaded(images=TESTER.images(), text=["a red box", "two"], tags=[["red"], []])
        assert set(got) == set(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], msg=key)


def test_model_input_names_cover_the_outputs(processor):
    out = processor(images=TESTER.images(), text=["a", "b c"], tags=[["red"], ["box"]])
    assert set(out) == set(processor.model_input_names)
    assert set(processor.image_processor.model_input_names) <= set(processor.model_input_names)


def test_tokenizer_kwargs_reach_the_tokenizer(processor):
    out = processor(text=["a red box", "two"], padding="max_length", max_length=12)
    assert out["input_ids"].shape == (2, 12) and out["attention_mask"].shape == (2, 12)


@pytest.mark.parametrize(
    "kwargs", [{"do_normalize": False}, {"size": {"longest_edge": 32}}], ids=["do_normalize", "size"]
)
def test_image_kwargs_reach_the_image_processor(processor, kwargs):
    images = TESTER.images()
    base = processor(images=images, text=["a", "b"])
    changed = processor(images=images, text=["a", "b"], **kwargs)
    expected = processor.image_processor(images, **kwargs, return_tensors="pt")
    assert changed["pixel_values"].shape != base["pixel_values"].shape or not torch.allclose(
        changed["pixel_values"], base["pixel_values"])
    torch.testing.assert_close(changed["pixel_values"], expected["pixel_values"])

