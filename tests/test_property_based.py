"""Property-based tests (hypothesis): the processors on arbitrary images, text and logits, and the CLI argument
handling on arbitrary argument strings and recipe configs. Each property holds for every generated input; bad input
must end in the documented error, never in another exception."""

import argparse
import contextlib
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from minivlm_hf.cli import build_parser
from minivlm_hf.commands._common import non_negative_int, positive_float, positive_int, unit_interval

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "F", "I;16"]


@pytest.fixture(scope="module")
def processors():
    from minivlm_hf import MiniVLMImageProcessorPil
    from minivlm_hf.convert import load_offline_tokenizer
    from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor
    from tee_utils import tiny_image_processor

    image_processor = tiny_image_processor()
    return {
        "torchvision": image_processor,
        "pil": MiniVLMImageProcessorPil(**{k: v for k, v in image_processor.to_dict().items()
                                           if k in ("size", "pad_size_divisor", "do_pad")}),
        "processor": MiniVLMProcessor(image_processor, load_offline_tokenizer(), max_text_length=12, max_tag_length=6),
    }


def _image(width, height, mode, seed):
    array = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


image_specs = st.tuples(st.integers(1, 180), st.integers(1, 180), st.sampled_from(MODES), st.integers(0, 2**16))


# ------------------------------------------------------------------------------------------------------------------
# image processors
# ------------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(specs=st.lists(image_specs, min_size=1, max_size=3), backend=st.sampled_from(["torchvision", "pil"]))
def test_image_processor_resizes_pads_and_masks_any_image(processors, specs, backend):
    processor = processors[backend]
    longest = processor.size["longest_edge"]
    out = processor([_image(*spec) for spec in specs], return_tensors="pt")
    pixels, mask = out["pixel_values"], out["pixel_mask"]
    assert pixels.shape[:2] == (len(specs), 3) and mask.shape == (len(specs), *pixels.shape[2:])
    assert torch.isfinite(pixels).all()
    divisor = processor.pad_size_divisor or 1
    assert pixels.shape[2] % divisor == 0 and pixels.shape[3] % divisor == 0
    for index, (width, height, _mode, _seed) in enumerate(specs):
        scale = longest / max(width, height)
        rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
        expected = torch.zeros(mask.shape[1:], dtype=mask.dtype)
        expected[:rows, :cols] = 1
        assert torch.equal(mask[index], expected), (width, height, rows, cols)
        assert not pixels[index][:, mask[index] == 0].any()  # the padding is zeros


@SETTINGS
@given(width=st.integers(1, 120), height=st.integers(1, 120), seed=st.integers(0, 100))
def test_image_processor_accepts_arrays_like_images(processors, width, height, seed):
    image = _image(width, height, "RGB", seed)
    processor = processors["torchvision"]
    from_pil = processor(image, return_tensors="pt")["pixel_values"]
    from_array = processor(np.asarray(image), return_tensors="pt")["pixel_values"]
    from_tensor = processor(torch.from_numpy(np.asarray(image)).permute(2, 0, 1), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_array, from_pil)
    torch.testing.assert_close(from_tensor, from_pil)


# ------------------------------------------------------------------------------------------------------------------
# text, tags and VQA post-processing
# ------------------------------------------------------------------------------------------------------------------
@SETTINGS
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12))
def test_open_image_on_damaged_files_names_the_file_or_reads_it(tmp_path_factory, fmt, cut, flips):
    from minivlm_hf.inference import open_image

    buffer = io.BytesIO()
    _image(37, 23, "RGB", 0).save(buffer, format=fmt)
    data = bytearray(buffer.getvalue()[: max(1, int(len(buffer.getvalue()) * cut))])
    for position, value in flips:
        data[int(position * len(data))] = value
    path = tmp_path_factory.mktemp("damaged") / f"img.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        image = open_image(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    assert image.convert("RGB").size[0] > 0


@SETTINGS
@given(texts=st.lists(st.text(max_size=80), min_size=1, max_size=4))
@pytest.mark.filterwarnings("ignore:text .* truncated")
def test_processor_text_is_cls_text_sep_within_the_length(processors, texts):
    processor = processors["processor"]
    tokenizer = processor.tokenizer
    out = processor(text=texts)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[0] == len(texts) and ids.shape == mask.shape and ids.shape[1] <= processor.max_text_length
    for row, row_mask in zip(ids.tolist(), mask.tolist()):
        length = sum(row_mask)
        assert row_mask == [1] * length + [0] * (len(row) - length)  # real tokens first, then padding
        assert row[0] == tokenizer.cls_token_id and row[length - 1] == tokenizer.sep_token_id
        assert tokenizer.sep_token_id not in row[1:length - 1]
        assert all(t == tokenizer.pad_token_id for t in row[length:])


@SETTINGS
@given(tags=st.lists(st.lists(st.text(alphabet=st.characters(categories=["Ll", "Zs"]), max_size=12), max_size=8),
                     min_size=1, max_size=3))
def test_processor_tags_fit_their_length(processors, tags):
    assume(all(lst and isinstance(lst[0], str) for lst in tags))
    processor = processors["processor"]
    out = processor(tags=tags)
    assert out["tag_ids"].shape[0] == len(tags) and out["tag_ids"].shape[1] <= processor.max_tag_length
    assert out["tag_attention_mask"].sum(1).le(processor.max_tag_length).all()


@SETTINGS
@given(
    logits=st.integers(1, 3).flatmap(lambda b: st.integers(1, 6).flatmap(lambda n: st.lists(
        st.lists(st.floats(-50, 50, allow_nan=False), min_size=n, max_size=n), min_size=b, max_size=b))),
    top_k=st.integers(1, 8),
    score=st.sampled_from(["sigmoid", "softmax"]),
)
def test_post_process_vqa_ranks_best_first(processors, logits, top_k, score):
    tensor = torch.tensor(logits)
    id2label = {i: f"answer {i}" for i in range(tensor.shape[1])}
    results = processors["processor"].post_process_vqa(tensor, id2label, top_k=top_k, score_function=score)
    probs = tensor.sigmoid() if score == "sigmoid" else tensor.softmax(-1)
    for row, row_probs in zip(results, probs):
        assert len(row) == min(top_k, len(id2label))
        scores = [r["score"] for r in row]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        assert math.isclose(scores[0], float(row_probs.max()), rel_tol=1e-6, abs_tol=1e-7)
        assert len({r["answer"] for r in row}) == len(row)


# ------------------------------------------------------------------------------------------------------------------
# CLI argument handling
# ------------------------------------------------------------------------------------------------------------------
numbers_as_text = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "1_000", " 3 ", "", "-0", "0.0", "1,5", "३"]),
    st.text(max_size=6),
)
RANGES = {positive_int: (int, 1, None), non_negative_int: (int, 0, None), positive_float: (float, 0.0, None),
          unit_interval: (float, 0.0, 1.0)}


@SETTINGS
@given(kind=st.sampled_from(list(RANGES)), text=numbers_as_text)
def test_numeric_argument_types_accept_exactly_their_range(kind, text):
    cast, low, high = RANGES[kind]
    try:
        value = kind(text)
    except argparse.ArgumentTypeError as err:
        assert repr(text) in str(err) and str(err).startswith("expected ")
        try:
            parsed = cast(text)
        except ValueError:
            return
        assert not math.isfinite(parsed) or parsed < low or (high is not None and parsed > high) or (
            kind is positive_float and parsed == 0)
        return
    assert isinstance(value, cast) and math.isfinite(value) and value >= low and (high is None or value <= high)
    assert value == cast(text)
    assert not (kind is positive_float and value == 0)


# (command line before the option, option, type) for every numeric option of the console script
NUMERIC_OPTIONS = [
    (["caption", "x.png", "--model", "m"], "--num-beams", positive_int),
    (["caption", "x.png", "--model", "m"], "--max-new-tokens", positive_int),
    (["answer", "x.png", "--question", "q", "--model", "m"], "--top-k", positive_int),
    (["detect", "x.png", "--model", "m"], "--threshold", unit_interval),
    (["train", "vqa", "--output-dir", "o"], "--batch-size", positive_int),
    (["train", "vqa", "--output-dir", "o"], "--max-steps", positive_int),
    (["train", "vqa", "--output-dir", "o"], "--learning-rate", positive_float),
    (["train", "vqa", "--output-dir", "o"], "--seed", non_negative_int),
    (["data", "scenes", "--out", "o"], "--num-train", positive_int),
    (["data", "nlvr", "--out", "o"], "--num-test", non_negative_int),
    (["data", "scenes", "--out", "o"], "--max-size", positive_int),
    (["init", "minivlm-tiny", "--output", "o"], "--seed", non_negative_int),
    (["benchmark"], "--runs", positive_int),
    (["benchmark"], "--threads", positive_int),
    (["benchmark"], "--gflops-seconds", positive_float),
    (["export", "onnx", "--model", "m", "--output", "o"], "--atol", positive_float),
]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@SETTINGS
@given(option=st.sampled_from(NUMERIC_OPTIONS), text=numbers_as_text)
def test_cli_numbers_parse_in_range_or_exit_2_naming_the_option(parser, option, text):
    prefix, flag, kind = option
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = parser.parse_args([*prefix, f"{flag}={text}"])
        except SystemExit as exit_info:
            assert exit_info.code == 2
            assert f"argument {flag}: expected" in stderr.getvalue() and "Traceback" not in stderr.getvalue()
            with pytest.raises(argparse.ArgumentTypeError):
                kind(text)
            return
    assert getattr(args, flag.lstrip("-").replace("-", "_")) == kind(text)


config_keys = st.sampled_from(["seed", "data", "detector", "fusion", "collator", "training", "evaluation", "debug",
                               "trainer", "colator", "x"])
leaf_keys = st.sampled_from(["mask_probability", "mask_probabilty", "max_steps", "learning_rate", "num_regions",
                             "hidden_size", "features", "batch_size", "bf16", "limit", "param_hash", "", "λ"])
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(-2, 2),
                                     st.sampled_from(["auto", "oracle", "detector", "384", ""])),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=4)


@SETTINGS
@given(config=st.dictionaries(config_keys, st.one_of(json_values, st.dictionaries(leaf_keys, json_values, max_size=3)),
                              max_size=3))
def test_recipe_config_validation_passes_or_names_the_key(config):
    from minivlm_hf.training.config_schema import validate_recipe_config

    try:
        validate_recipe_config(config, "cfg.json")
    except ValueError as err:
        message = str(err)
        assert message.startswith("cfg.json: ")
        named = [f"{section}.{key}" for section, value in config.items() if isinstance(value, dict) for key in value]
        assert any(repr(k) in message or f"{k} must" in message or f"'{k}'" in message
                   for k in [*config, *named]), message
