"""Tests of MiniVLMImageProcessor (torchvision backend) and MiniVLMImageProcessorPil (PIL backend)."""

import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from tee_utils import register_tee_auto_classes, synthetic_scene, tiny_tee_config

from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor
from minivlm_hf.modeling.image_processing_pil_minivlm import MiniVLMImageProcessorPil
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection, TEEObjectDetectionOutput


BACKENDS = [MiniVLMImageProcessor, MiniVLMImageProcessorPil]
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(autouse=True)
def _single_thread():
    """The tensors here are tiny: one intra-op thread is as fast, and far faster when the CPUs are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _rgb(height=48, width=64, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def _normalised(rgb_uint8):
    return (torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1).float() / 255 - MEAN) / STD


@pytest.mark.parametrize("cls", BACKENDS)
def test_defaults(cls):
    processor = cls()
    assert processor.size.longest_edge == 512 and processor.pad_size_divisor == 128
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406) and tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert processor.model_input_names == ["pixel_values", "pixel_mask"]
    assert processor.backend == ("torchvision" if cls is MiniVLMImageProcessor else "pil")
    out = processor(PIL.Image.fromarray(_rgb(60, 100)), return_tensors="pt")
    # Longest edge 100 -> 512 (height 60 -> 307), padded to a multiple of 128.
    assert out.pixel_values.shape == (1, 3, 384, 512) and out.pixel_values.dtype == torch.float32
    assert out.pixel_mask.shape == (1, 384, 512) and out.pixel_mask.dtype == torch.int64
    assert int(out.pixel_mask[0].any(1).sum()) == 307 and int(out.pixel_mask[0].any(0).sum()) == 512
    assert torch.all(out.pixel_values[0, :, 307:] == 0)
    # An int size means the longest edge.
    assert cls(size=96).size.longest_edge == 96


@pytest.mark.parametrize("cls", BACKENDS)
def test_values_without_resize_and_padding_of_a_batch(cls):
    processor = cls(size={"longest_edge": 64})
    a, b = _rgb(48, 64, 1), _rgb(64, 40, 2)
    out = processor([a, b], return_tensors="pt")
    assert out.pixel_values.shape == (2, 3, 128, 128)
    torch.testing.assert_close(out.pixel_values[0, :, :48, :64], _normalised(a), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pixel_values[1, :, :64, :40], _normalised(b), atol=1e-5, rtol=0)
    assert out.pixel_mask.sum((1, 2)).tolist() == [48 * 64, 64 * 40]
    no_divisor = cls(size={"longest_edge": 64}, pad_size_divisor=0)([a, b], return_tensors="pt")
    assert no_divisor.pixel_values.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="do_pad"):
        processor([a, b], do_pad=False)


def test_backends_agree():
    image = PIL.Image.fromarray(_rgb(90, 120, 3))
    tv = MiniVLMImageProcessor(size={"longest_edge": 64})(image, return_tensors="pt")
    pil = MiniVLMImageProcessorPil(size={"longest_edge": 64})(image, return_tensors="pt")
    assert tv.pixel_values.shape == pil.pixel_values.shape == (1, 3, 128, 128)
    assert torch.equal(tv.pixel_mask, pil.pixel_mask)
    diff = (tv.pixel_values - pil.pixel_values).abs()
    assert diff.mean() < 0.05 and diff.max() < 1.0  # both bilinear + antialias; rounding differs slightly


def _pil_variants(rgb):
    image = PIL.Image.fromarray(rgb)
    palette_transparent = image.convert("P")
    palette_transparent.info["transparency"] = 0
    return {
        "L": image.convert("L"),
        "1": image.convert("1"),
        "P": image.convert("P"),
        "P+transparency": palette_transparent,
        "RGBA": image.convert("RGBA"),
        "LA": image.convert("LA"),
        "CMYK": image.convert("CMYK"),
        "YCbCr": image.convert("YCbCr"),
        "I": image.convert("I"),
        "F": image.convert("F"),
        "I;16": PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }


@pytest.mark.parametrize("cls", BACKENDS)
def test_pil_modes_become_rgb(cls):
    processor = cls(size={"longest_edge": 64})
    rgb = _rgb()
    for mode, image in _pil_variants(rgb).items():
        out = processor(image, return_tensors="pt")
        assert out.pixel_values.shape == (1, 3, 128, 128), mode
        assert torch.isfinite(out.pixel_values).all(), mode
    gray = rgb[..., 0]
    expected_gray = _normalised(np.repeat(gray[..., None], 3, axis=-1))
    for mode in ("I;16", "I"):
        image = _pil_variants(rgb)[mode] if mode == "I;16" else PIL.Image.fromarray(gray).convert("I")
        got = processor(image, return_tensors="pt").pixel_values[0, :, :48, :64]
        torch.testing.assert_close(got, expected_gray, atol=1e-4, rtol=0, msg=mode)
    # Transparent pixels are composited on white.
    transparent = PIL.Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    got = processor(transparent, return_tensors="pt").pixel_values[0, :, :48, :64]
    torch.testing.assert_close(got, _normalised(np.full((48, 64, 3), 255, np.uint8)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", BACKENDS)
def test_array_and_tensor_inputs(cls):
    processor = cls(size={"longest_edge": 64})
    rgb = _rgb()
    reference = processor(rgb, return_tensors="pt").pixel_values
    torch.testing.assert_close(reference[0, :, :48, :64], _normalised(rgb), atol=1e-5, rtol=0)
    same = {
        "numpy CHW float [0,1]": rgb.transpose(2, 0, 1).astype(np.float32) / 255,
        "numpy HWC float [0,255]": rgb.astype(np.float64),
        "numpy uint16": rgb.astype(np.uint16) * 257,
        "numpy int64": rgb.astype(np.int64),
        "numpy RGBA opaque": np.concatenate([rgb, np.full((48, 64, 1), 255, np.uint8)], axis=-1),
        "torch CHW uint8": torch.from_numpy(rgb).permute(2, 0, 1),
        "torch CHW float [0,1]": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
        "torch HWC uint8": torch.from_numpy(rgb),
        "PIL": PIL.Image.fromarray(rgb),
    }
    for name, image in same.items():
        torch.testing.assert_close(processor(image, return_tensors="pt").pixel_values, reference, atol=1e-4, rtol=0, msg=name)
    # Grayscale (2-D and 1-channel) is replicated; a 4-D array is a batch.
    gray = processor(rgb[..., 0], return_tensors="pt").pixel_values
    torch.testing.assert_close(gray, processor(rgb[..., :1], return_tensors="pt").pixel_values)
    assert processor(np.stack([rgb, rgb]), return_tensors="pt").pixel_values.shape[0] == 2
    # Explicit channel layout.
    chw = processor(rgb.transpose(2, 0, 1), input_data_format="channels_first", return_tensors="pt").pixel_values
    torch.testing.assert_close(chw, reference)


@pytest.mark.parametrize("cls", BACKENDS)
def test_exif_orientation_is_applied(cls, tmp_path):
    image = PIL.Image.fromarray(_rgb(20, 40))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    processor = cls(do_resize=False, pad_size_divisor=0)
    assert processor(PIL.Image.open(path), return_tensors="pt").pixel_values.shape == (1, 3, 40, 20)
    assert processor(str(path), return_tensors="pt").pixel_values.shape == (1, 3, 40, 20)


@pytest.mark.parametrize("cls", BACKENDS)
@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "zero size"),
        (np.zeros((10, 10, 2), np.uint8), "channels"),
        (np.zeros((10, 10, 5), np.uint8), "channels"),
        (np.zeros((2, 3, 4, 5, 6), np.uint8), "dimensions"),
        (np.full((10, 10, 3), np.nan, np.float32), "NaN or infinite"),
        (torch.full((3, 10, 10), float("inf")), "NaN or infinite"),
        (np.full((10, 10, 3), -3, np.int32), "negative"),
        ({"not": "an image"}, "unsupported type dict"),
        (42, "unsupported type int"),
        ([], "No images"),
        ("/nonexistent/picture.png", "no such file"),
    ],
)
def test_bad_inputs_raise_clear_errors(cls, image, message):
    with pytest.raises(ValueError, match=message):
        cls()(image)


@pytest.mark.parametrize("cls", BACKENDS)
def test_zero_sized_pil_image(cls):
    with pytest.raises(ValueError, match="zero size"):
        cls()(PIL.Image.new("RGB", (0, 5)))


@pytest.mark.parametrize("cls", BACKENDS)
def test_decompression_bombs_are_refused(cls, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    PIL.Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    processor = cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match="decompression bomb"):
            processor(str(path))  # PIL itself raises DecompressionBombError (> 2x the limit) on open
        with pytest.raises(ValueError, match="decompression bomb"):
            processor(np.zeros((40, 40, 3), np.uint8))  # 1600 pixels: checked by the processor
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 3000)
        with pytest.raises(ValueError, match="decompression bomb"):
            processor(PIL.Image.open(path))  # 4096 pixels, between 1x and 2x: PIL only warns


@pytest.mark.parametrize("cls", BACKENDS)
def test_annotation_count_must_match(cls):
    image, annotation = synthetic_scene([(4, 4, 20, 20, 0)])
    with pytest.raises(ValueError, match=r"number of images \(2\) and annotations \(1\)"):
        cls()([image, image], annotations=[annotation])
    with pytest.raises(ValueError, match="bbox"):
        cls()(image, annotations={"image_id": 0, "annotations": [{"bbox": [1, 2, 3], "category_id": 0}]})
    with pytest.raises(ValueError, match="'annotations' list"):
        cls()(image, annotations={"image_id": 0})


@pytest.mark.parametrize("cls", BACKENDS)
def test_annotations_become_labels(cls):
    processor = cls(size={"longest_edge": 96})
    image_a, annotation_a = synthetic_scene([(8, 8, 24, 32, 2), (30, 10, 60, 20, 1)], height=48, width=64, image_id=7)
    annotation_a["annotations"].append({"bbox": [0, 0, 5, 5], "category_id": 3, "iscrowd": 1})  # dropped
    annotation_a["annotations"].append({"bbox": [10, 10, 0, 5], "category_id": 3})  # empty: dropped
    image_b, annotation_b = synthetic_scene([], height=40, width=40, image_id=8)
    out = processor([image_a, image_b], annotations=[annotation_a, annotation_b], return_tensors="pt")
    assert out.pixel_values.shape == (2, 3, 128, 128)
    labels_a, labels_b = out["labels"]
    assert labels_a["image_id"].tolist() == [7] and labels_b["image_id"].tolist() == [8]
    assert labels_a["class_labels"].tolist() == [2, 1]
    # Resized 48x64 -> 72x96 (x1.5); boxes are normalised by the unpadded 72x96 image, not the 128x128 canvas.
    expected = torch.tensor([[16 / 64, 20 / 48, 16 / 64, 24 / 48], [45 / 64, 15 / 48, 30 / 64, 10 / 48]])
    torch.testing.assert_close(labels_a["boxes"], expected)
    assert labels_a["attribute_labels"].tolist() == [[0, -1], [0, 2]]  # small; small + wide
    assert labels_a["orig_size"].tolist() == [48, 64] and labels_a["size"].tolist() == [72, 96]
    torch.testing.assert_close(labels_a["area"], torch.tensor([16 * 24 * 2.25, 30 * 10 * 2.25]))
    assert labels_b["boxes"].shape == (0, 4) and labels_b["class_labels"].shape == (0,)
    assert labels_b["size"].tolist() == [96, 96]


@pytest.mark.parametrize("cls", BACKENDS)
def test_save_and_load(cls, tmp_path):
    processor = cls(size={"longest_edge": 80}, pad_size_divisor=32, image_mean=[0.5, 0.5, 0.5])
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MiniVLMImageProcessor" and saved["size"] == {"longest_edge": 80}
    reloaded = cls.from_pretrained(tmp_path)
    assert type(reloaded) is cls and reloaded.to_dict() == processor.to_dict()
    image = _rgb(30, 50)
    assert torch.equal(reloaded(image, return_tensors="pt").pixel_values, processor(image, return_tensors="pt").pixel_values)


def test_auto_image_processor_backends(tmp_path):
    from transformers import AutoImageProcessor

    register_tee_auto_classes()
    tiny_tee_config().save_pretrained(tmp_path)
    MiniVLMImageProcessor(size={"longest_edge": 64}).save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is MiniVLMImageProcessor
    pil = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(pil) is MiniVLMImageProcessorPil and pil.size.longest_edge == 64


def _fake_outputs():
    logits = torch.full((2, 3, 4), -10.0)
    logits[0, 0, 1] = 10.0  # class 1, score ~1
    logits[0, 1, 3] = 10.0  # background
    logits[1, 0, 2] = 10.0  # class 2, but the row is padding
    region_boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]], [[0.2, 0.2, 0.4, 0.4], [0] * 4, [0] * 4]])
    cxcywh = torch.stack(
        ((region_boxes[..., 0] + region_boxes[..., 2]) / 2, (region_boxes[..., 1] + region_boxes[..., 3]) / 2,
         region_boxes[..., 2] - region_boxes[..., 0], region_boxes[..., 3] - region_boxes[..., 1]), dim=-1
    )
    probs = logits.softmax(-1)[..., :-1]
    return TEEObjectDetectionOutput(
        logits=logits,
        pred_boxes=cxcywh,
        attribute_logits=torch.zeros(2, 3, 2),
        region_features=torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5),
        region_boxes=region_boxes,
        region_scores=probs.max(-1).values,
        region_labels=probs.argmax(-1),
        region_mask=torch.tensor([[True, True, False], [False, False, False]]),
    )


@pytest.mark.parametrize("cls", BACKENDS)
def test_post_processing(cls):
    processor = cls()
    outputs = _fake_outputs()
    results = processor.post_process_object_detection(outputs, threshold=0.5, target_sizes=[(100, 200), (50, 50)])
    assert results[0]["labels"].tolist() == [1] and results[0]["scores"][0] > 0.99
    torch.testing.assert_close(results[0]["boxes"], torch.tensor([[20.0, 20.0, 100.0, 60.0]]))
    assert results[1]["boxes"].shape == (0, 4)  # masked row ignored
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=torch.tensor([[100, 200], [50, 50]]))
    assert len(results[0]["scores"]) == 2 and len(results[1]["scores"]) == 0
    normalised = processor.post_process_object_detection(outputs, threshold=0.5)
    torch.testing.assert_close(normalised[0]["boxes"], torch.tensor([[0.1, 0.2, 0.5, 0.6]]))
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_object_detection(outputs, target_sizes=[(1, 1)])

    regions = processor.post_process_regions(outputs, threshold=0.5, id2label={0: "a", 1: "cat", 2: "dog"})
    assert regions[0]["tags"] == ["cat"] and regions[0]["labels"].tolist() == [1]
    torch.testing.assert_close(regions[0]["region_features"], outputs.region_features[0, :1])
    torch.testing.assert_close(regions[0]["boxes"], outputs.region_boxes[0, :1])
    assert regions[1]["region_features"].shape == (0, 5) and regions[1]["tags"] == []
    assert len(processor.post_process_regions(outputs)[0]["tags"]) == 2


def test_processor_and_model_end_to_end():
    torch.manual_seed(0)
    model = TEEForObjectDetection(tiny_tee_config()).eval()
    processor = MiniVLMImageProcessor(size={"longest_edge": 64})
    image_a, annotation_a = synthetic_scene([(8, 8, 40, 40, 0)], height=70, width=90)
    image_b, annotation_b = synthetic_scene([(2, 2, 20, 30, 3)], height=40, width=30)
    inputs = processor([image_a, image_b], annotations=[annotation_a, annotation_b], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    assert torch.isfinite(outputs.loss)
    detections = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(70, 90), (40, 30)])
    for detection, (height, width) in zip(detections, [(70, 90), (40, 30)]):
        assert len(detection["boxes"]) > 0
        assert torch.all(detection["boxes"][:, 0::2] <= width + 1e-3) and torch.all(detection["boxes"][:, 1::2] <= height + 1e-3)
    regions = processor.post_process_regions(outputs, id2label=model.config.id2label)
    assert all(set(r["tags"]) <= set(model.config.id2label.values()) for r in regions)
    assert regions[0]["region_features"].shape[1] == model.config.box_head_dim
