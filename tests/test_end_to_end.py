"""Image → result in one call: processor, TEE inside the fusion model, Auto loading, pipelines, remote code, CLI."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import minivlm_hf  # noqa: F401  (registers the Auto classes)
from fusion_utils import copy_config
from minivlm_hf import inference
from minivlm_hf.cli import main as cli_main
from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import (
    MiniVLMForImageTextRetrieval,
    MiniVLMForQuestionAnswering,
    MiniVLMForVisualReasoning,
)
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor
from tee_utils import tiny_image_processor, tiny_tee_config

ANSWERS = {0: "yes", 1: "no", 2: "red", 3: "two"}


@pytest.fixture(scope="module")
def processor():
    return MiniVLMProcessor(tiny_image_processor(), load_offline_tokenizer(), max_text_length=16, max_tag_length=10)


@pytest.fixture(scope="module")
def config(processor):
    config = MiniVLMConfig(
        vision_config=tiny_tee_config(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        region_feature_size=32,
        max_regions=10,
        tag_score_threshold=0.0,  # random TEE scores are low: keep every region as a tag
        id2label=dict(ANSWERS),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return processor.prepare_config(config)


def _image(seed, size=(60, 48)):
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    array[10:30, 10:30] = (220, 30, 30)
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def images():
    return [_image(0), _image(1, (40, 64))]


def test_processor_outputs(processor, images):
    out = processor(images=images, text=["what colour is the box?", "is there a box?"], tags=[["red", "box"], []])
    assert set(out) >= {"pixel_values", "pixel_mask", "input_ids", "attention_mask", "tag_ids", "tag_attention_mask"}
    assert out["pixel_values"].shape[:2] == (2, 3) and out["pixel_mask"].shape[0] == 2
    assert out["input_ids"][0, 0] == 101 and out["input_ids"][0, out["attention_mask"][0].sum() - 1] == 102
    assert out["tag_ids"][0].tolist()[:3] == processor.tokenizer("red box", add_special_tokens=False)["input_ids"] + [102]
    assert out["tag_ids"][1, 0] == 102 and out["tag_attention_mask"][1].sum() == 1


def test_processor_bad_inputs_and_truncation(processor, images):
    with pytest.raises(ValueError, match="2 images but 3 texts"):
        processor(images=images, text=["a", "b", "c"])
    with pytest.warns(UserWarning, match="truncated to max_text_length=16"):
        out = processor(text=["word " * 40])
    assert out["input_ids"].shape == (1, 16) and out["input_ids"][0, -1] == 102
    labels = processor(text=["q"], answers=[["red"] * 2 + ["yes"] * 8], answer2id={v: k for k, v in ANSWERS.items()})
    torch.testing.assert_close(labels["labels"], torch.tensor([[1.0, 0.0, 2 / 3, 0.0]]))


def test_processor_round_trip_through_autoprocessor(processor, config, tmp_path):
    from transformers import AutoProcessor

    config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, MiniVLMProcessor)
    assert loaded.max_text_length == 16 and loaded.max_tag_length == 10
    assert loaded(text=["a red box"])["input_ids"].tolist() == processor(text=["a red box"])["input_ids"].tolist()


def test_caption_from_pixels_cached_equals_uncached(processor, config, images):
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(copy_config(config)).eval()
    inputs = processor(images=images, text=["", ""])
    out = model(**{k: v for k, v in inputs.items()}, labels=None)
    assert out.tag_ids is not None and out.region_features is None if hasattr(out, "region_features") else True
    cached = model.generate(**inputs, max_new_tokens=6, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, uncached)
    beams_cached = model.generate(**inputs, max_new_tokens=5, num_beams=3, use_cache=True)
    beams_uncached = model.generate(**inputs, max_new_tokens=5, num_beams=3, use_cache=False)
    assert torch.equal(beams_cached, beams_uncached)


def test_tee_regions_feed_the_encoder(config, processor, images):
    torch.manual_seed(0)
    model = MiniVLMForQuestionAnswering(copy_config(config)).eval()
    inputs = processor(images=images, text=["is there a box?"] * 2)
    base = model.minivlm(**inputs)
    assert base.region_mask is not None and base.region_boxes.shape[-1] == 4
    assert base.tag_ids is not None and base.tag_ids.shape[0] == 2
    # the same regions passed as precomputed features give the same pooled output
    regions = model.minivlm.get_image_features(inputs["pixel_values"], inputs["pixel_mask"], with_tags=False)
    tag_ids, tag_mask = model.minivlm.tags_from_regions(regions["region_labels"], regions["region_scores"], regions["region_mask"])
    again = model.minivlm(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], tag_ids=tag_ids, tag_attention_mask=tag_mask,
        region_features=regions["region_features"], region_boxes=regions["region_boxes"], region_mask=regions["region_mask"],
    )
    torch.testing.assert_close(base.pooler_output, again.pooler_output)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, config, processor):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("e2e")
    folders = {}
    for name, cls in (
        ("caption", MiniVLMForImageCaptioning),
        ("answer", MiniVLMForQuestionAnswering),
        ("retrieval", MiniVLMForImageTextRetrieval),
        ("nlvr", MiniVLMForVisualReasoning),
    ):
        model = cls(copy_config(config)).eval()
        folder = root / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = folder
    return folders


def test_one_call_image_to_result_after_auto_loading(saved, images):
    model, proc = inference.load("caption", str(saved["caption"]))
    assert isinstance(model, MiniVLMForImageCaptioning) and isinstance(proc, MiniVLMProcessor)
    captions = inference.caption(model, proc, images, max_new_tokens=5)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    vqa, proc = inference.load("vqa", str(saved["answer"]))
    answers = inference.answer(vqa, proc, images[0], "what colour is the box?", top_k=2)
    assert len(answers) == 2 and answers[0]["answer"] in ANSWERS.values() and answers[0]["score"] >= answers[1]["score"]

    itr, proc = inference.load("retrieval", str(saved["retrieval"]))
    assert isinstance(itr, MiniVLMForImageTextRetrieval)
    ranked = inference.rank_captions(itr, proc, images[0], ["a red box", "a blue circle", "two stars"], batch_size=2)
    assert sorted(r["caption"] for r in ranked) == ["a blue circle", "a red box", "two stars"]
    assert ranked[0]["score"] >= ranked[-1]["score"]

    nlvr, proc = inference.load("nlvr", str(saved["nlvr"]))
    verdict = inference.judge(nlvr, proc, "both images contain a box", images[0], images[1])
    assert isinstance(verdict["label"], bool) and 0 <= verdict["score"] <= 1


def test_pipelines_in_process(saved, images):
    from transformers import pipeline

    captioner = pipeline("image-text-to-text", model=str(saved["caption"]))
    out = captioner(images=images[0], text="", max_new_tokens=5)
    assert isinstance(out[0]["generated_text"], str)
    vqa = pipeline("minivlm-vqa", model=str(saved["answer"]))  # local registration: no trust_remote_code
    result = vqa(images[0], question="is there a box?", top_k=3)
    assert len(result) == 3 and {"answer", "score"} <= set(result[0])


# The subprocess must not see this checkout's sources (repository root, src/, modeling/) on sys.path; installed
# packages (site-packages, even in a venv inside the checkout) stay.
REPO_ROOT = str(Path(__file__).resolve().parents[1])

BLOCK_PACKAGE = f"""
import os, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "minivlm_hf" or name.startswith("minivlm_hf."):
            raise ImportError("minivlm_hf is blocked in this process")
        return None
sys.meta_path.insert(0, _Block())
sys.path = [p for p in sys.path
            if not os.path.abspath(p or ".").startswith({REPO_ROOT!r}) or "site-packages" in p]
"""


def test_remote_code_round_trip_without_the_package(saved, images, processor, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering

    images[0].save(tmp_path / "image.png")
    caption_model = AutoModelForImageTextToText.from_pretrained(saved["caption"]).eval()
    inputs = processor(images=[images[0]], text=[""])
    expected_tokens = caption_model.generate(**inputs, max_new_tokens=5).tolist()
    vqa_model = AutoModelForVisualQuestionAnswering.from_pretrained(saved["answer"]).eval()
    with torch.no_grad():
        expected_logits = vqa_model(**processor(images=[images[0]], text=["is there a box?"])).logits.tolist()
    script = BLOCK_PACKAGE + textwrap.dedent(
        f"""
        import json, torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering, AutoProcessor, pipeline
        try:
            import minivlm_hf
            raise SystemExit("minivlm_hf should not be importable here")
        except ImportError:
            pass
        image = Image.open({str(tmp_path / 'image.png')!r})
        proc = AutoProcessor.from_pretrained({str(saved['caption'])!r}, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained({str(saved['caption'])!r}, trust_remote_code=True).eval()
        tokens = model.generate(**proc(images=[image], text=[""]), max_new_tokens=5).tolist()
        vqa = AutoModelForVisualQuestionAnswering.from_pretrained({str(saved['answer'])!r}, trust_remote_code=True).eval()
        vproc = AutoProcessor.from_pretrained({str(saved['answer'])!r}, trust_remote_code=True)
        with torch.no_grad():
            logits = vqa(**vproc(images=[image], text=["is there a box?"])).logits.tolist()
        captioner = pipeline("image-text-to-text", model={str(saved['caption'])!r}, trust_remote_code=True)
        text = captioner(images=image, text="", max_new_tokens=5)[0]["generated_text"]
        print(json.dumps({{"processor": type(proc).__name__, "module": type(model).__module__, "tokens": tokens,
                          "logits": logits, "pipeline_text": text}}))
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(tmp_path / "hf_home")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["processor"] == "MiniVLMProcessor"
    assert data["module"].startswith("transformers_modules.")
    assert data["tokens"] == expected_tokens
    np.testing.assert_allclose(data["logits"], expected_logits, atol=1e-5)
    assert isinstance(data["pipeline_text"], str)


def test_cli_caption_and_answer_write_json(saved, images, tmp_path):
    images[0].save(tmp_path / "a.png")
    out = tmp_path / "captions.json"
    assert cli_main(["caption", str(tmp_path / "a.png"), "--model", str(saved["caption"]), "--max-new-tokens", "4",
                     "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data[0]["image"].endswith("a.png") and isinstance(data[0]["caption"], str)
    out = tmp_path / "answer.json"
    assert cli_main(["answer", str(tmp_path / "a.png"), "--question", "is there a box?", "--model",
                     str(saved["answer"]), "--top-k", "2", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["answers"]) == 2 and data["question"] == "is there a box?"


def test_cli_reports_bad_input_in_one_line(saved, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert cli_main(["caption", str(tmp_path / "broken.png"), "--model", str(saved["caption"])]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "not a readable image" in err and "Traceback" not in err
    assert cli_main(["caption", str(tmp_path / "missing.png"), "--model", str(saved["caption"])]) == 2
    assert "image not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["answer", "--help"])


def test_generate_from_pixels_runs_the_tee_once_for_all_beams(config, processor, images):
    torch.manual_seed(0)
    model = MiniVLMForImageCaptioning(copy_config(config)).eval()
    pixels = processor(images=images, return_tensors="pt")
    calls = []
    hook = model.minivlm.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        beams = model.generate(pixel_values=pixels["pixel_values"], pixel_mask=pixels["pixel_mask"], num_beams=3,
                               max_new_tokens=5, do_sample=False)
    finally:
        hook.remove()
    assert len(calls) == 1  # not once per beam copy or per step
    with torch.no_grad():
        regions = model.minivlm.get_image_features(pixels["pixel_values"], pixels["pixel_mask"], with_tags=False)
        tag_ids, tag_mask = model.minivlm.tags_from_regions(regions["region_labels"], regions["region_scores"],
                                                            regions["region_mask"], regions["region_attribute_scores"])
    again = model.generate(region_features=regions["region_features"], region_boxes=regions["region_boxes"],
                           region_mask=regions["region_mask"], tag_ids=tag_ids, tag_attention_mask=tag_mask,
                           num_beams=3, max_new_tokens=5, do_sample=False)
    assert torch.equal(beams, again)
    with pytest.raises(ValueError, match="either pixel_values or region_features"):
        model.generate(pixel_values=pixels["pixel_values"], region_features=regions["region_features"])
