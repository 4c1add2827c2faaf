"""Loading for a task refuses what it cannot use, in one line: another kind of checkpoint, missing head weights,
truncated / random / pickled weights, a foreign model_type; the inference helpers refuse bad arguments."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import minivlm_hf  # noqa: F401  (registers the Auto classes)
from minivlm_hf import inference
from minivlm_hf.cli import main as cli_main
from minivlm_hf.convert import load_offline_tokenizer
from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval, MiniVLMForQuestionAnswering
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection
from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor
from tee_utils import tiny_image_processor, tiny_tee_config

ANSWERS = {0: "yes", 1: "no", 2: "red"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("kinds")
    processor = MiniVLMProcessor(tiny_image_processor(), load_offline_tokenizer(), max_text_length=16, max_tag_length=8)

    def config():
        c = MiniVLMConfig(vision_config=tiny_tee_config(), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, region_feature_size=32, max_regions=10, id2label=dict(ANSWERS))
        return processor.prepare_config(c)

    out = {}
    for name, cls in (("caption", MiniVLMForImageCaptioning), ("answer", MiniVLMForQuestionAnswering),
                      ("retrieval", MiniVLMForImageTextRetrieval)):
        cls(config()).save_pretrained(root / name)
        processor.save_pretrained(root / name)
        out[name] = root / name
    TEEForObjectDetection(tiny_tee_config()).save_pretrained(root / "detect")
    tiny_image_processor().save_pretrained(root / "detect")
    out["detect"] = root / "detect"
    return out


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 60, 3), dtype=np.uint8)).save(path)
    return path


def _copy(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def _one_line_error(capsys, argv, *needles):
    """The CLI exits 2 with one line on stderr that contains every needle, and no traceback."""
    assert cli_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and len(lines[0]) < 600, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_answer_on_a_caption_model_is_refused_naming_its_kind(folders, image_file, capsys):
    with pytest.raises(ValueError, match="holds a MiniVLM captioning model .*use `minivlm-hf caption`"):
        inference.load("vqa", str(folders["caption"]))
    _one_line_error(capsys, ["answer", image_file, "--question", "what?", "--model", folders["caption"]],
                    "MiniVLMForImageCaptioning", "not a MiniVLM VQA model")


def test_caption_on_a_vqa_or_detector_folder_says_what_the_folder_is(folders, image_file, capsys):
    _one_line_error(capsys, ["caption", image_file, "--model", folders["answer"]], "a MiniVLM VQA model")
    line = _one_line_error(capsys, ["caption", image_file, "--model", folders["detect"]],
                           "a TEE detector (TEEForObjectDetection)", "use `minivlm-hf detect`")
    assert "MiniVLMForPreTraining" not in line  # not a list of every known class


def test_detect_on_a_tee_config_over_caption_weights_is_refused(folders, image_file, tmp_path, capsys):
    """config.json says minivlm_tee, the weights are a captioner's: the missing TEE weights are not made up."""
    folder = _copy(folders["caption"], tmp_path)
    shutil.copy(folders["detect"] / "config.json", folder / "config.json")
    shutil.copy(folders["detect"] / "preprocessor_config.json", folder / "preprocessor_config.json")
    with pytest.raises(ValueError, match=r"not those of a TEE detector .*missing .*of another model"):
        inference.load("detector", str(folder))
    _one_line_error(capsys, ["detect", image_file, "--model", folder], "refusing to use randomly initialised weights")


def test_a_vqa_checkpoint_without_its_head_weights_is_refused(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(folders["answer"], tmp_path)
    weights = load_file(folder / "model.safetensors")
    head = [k for k in weights if not k.startswith("minivlm.")]
    assert head
    save_file({k: v for k, v in weights.items() if k in set(weights) - set(head)}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{len(head)} tensor\(s\) missing"):
        inference.load("vqa", str(folder))


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "empty"])
def test_broken_safetensors_is_one_line_from_every_command(folders, image_file, tmp_path, capsys, damage):
    folder = _copy(folders["answer"], tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "random-bytes": np.random.default_rng(0).bytes(5000),
                         "empty": b""}[damage])
    _one_line_error(capsys, ["answer", image_file, "--question", "what?", "--model", folder],
                    "model.safetensors is not a readable safetensors file")
    _one_line_error(capsys, ["export", "onnx", "--model", folder, "--output", tmp_path / "onnx"],
                    "model.safetensors is not a readable safetensors file")
    assert not (tmp_path / "onnx").exists()


def test_pickled_weights_are_refused_without_unpickling(folders, image_file, tmp_path, capsys):
    folder = _copy(folders["detect"], tmp_path)
    (folder / "model.safetensors").unlink()

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    _one_line_error(capsys, ["detect", image_file, "--model", folder], "only pickled weights (pytorch_model.bin)")


def test_a_foreign_model_type_is_named(folders, image_file, tmp_path, capsys):
    folder = _copy(folders["caption"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertModel"])
    (folder / "config.json").write_text(json.dumps(config))
    line = _one_line_error(capsys, ["caption", image_file, "--model", folder], "model_type 'bert'",
                           "not a MiniVLM checkpoint")
    assert "custom code" not in line


@pytest.mark.parametrize("argv", [["caption", "--num-beams", "0"], ["caption", "--num-beams", "-1"],
                                  ["caption", "--max-new-tokens", "0"], ["answer", "--question", "q", "--top-k", "-1"],
                                  ["detect", "--threshold", "nan"]])
def test_bad_numbers_fail_at_parse_time(folders, image_file, capsys, argv):
    command, *rest = argv
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, str(image_file), "--model", str(folders[command]), *rest])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {rest[-2]}: expected" in err and "Traceback" not in err


def test_truncated_image_is_named(folders, image_file, tmp_path, capsys):
    broken = tmp_path / "cut.png"
    broken.write_bytes(image_file.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.png: not a readable image"):
        inference.open_image(broken)
    _one_line_error(capsys, ["caption", broken, "--model", folders["caption"]], "cut.png", "not a readable image")


def test_arrays_and_single_images_are_accepted(folders, image_file):
    model, processor = inference.load("detector", str(folders["detect"]))
    pil = Image.open(image_file).convert("RGB")
    array = np.asarray(pil)
    from_pil = inference.detect(model, processor, [pil], threshold=0.0)
    assert inference.detect(model, processor, [array], threshold=0.0) == from_pil
    assert inference.detect(model, processor, array, threshold=0.0) == from_pil  # one image, not its rows
    assert inference.detect(model, processor, str(image_file), threshold=0.0) == from_pil  # not its characters
    assert inference.detect(model, processor, [array.astype(np.float32) / 255.0], threshold=0.0) == from_pil
    with pytest.raises(ValueError, match="holds NaN / inf"):
        inference.detect(model, processor, [np.full((8, 8, 3), np.nan, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8, 3\)"):
        inference.detect(model, processor, [np.zeros((2, 8, 8, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        inference.detect(model, processor, [])


def test_rank_captions_and_answer_refuse_bad_text(folders, image_file):
    model, processor = inference.load("retrieval", str(folders["retrieval"]))
    with pytest.raises(TypeError, match="list of strings"):
        inference.rank_captions(model, processor, image_file, "a red square")
    with pytest.raises(ValueError, match="captions is empty"):
        inference.rank_captions(model, processor, image_file, [])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        inference.rank_captions(model, processor, image_file, ["a", "b"], batch_size=0)
    ranked = inference.rank_captions(model, processor, image_file, ["a red square"])
    assert [r["caption"] for r in ranked] == ["a red square"]
    vqa, processor = inference.load("vqa", str(folders["answer"]))
    for question in ("", "   "):
        with pytest.raises(ValueError, match="question is empty"):
            inference.answer(vqa, processor, image_file, question)
    with pytest.raises(ValueError, match="top_k"):
        inference.answer(vqa, processor, image_file, "what?", top_k=0)


def test_vqa_pipeline_refuses_an_empty_question(folders, image_file):
    from transformers import pipeline

    vqa = pipeline("minivlm-vqa", model=str(folders["answer"]))
    with pytest.raises(ValueError, match="non-empty string"):
        vqa(str(image_file), question="  ")
    assert len(vqa(str(image_file), question="what colour?", top_k=2)) == 2


def test_nan_pixel_values_are_refused_by_the_model(folders):
    model = TEEForObjectDetection.from_pretrained(folders["detect"]).eval()
    pixels = torch.zeros(1, 3, 64, 64)
    pixels[0, 1, 5, 5] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or infinite"):
        model(pixel_values=pixels)
    vqa = MiniVLMForQuestionAnswering.from_pretrained(folders["answer"]).eval()
    ids = torch.tensor([[101, 2054, 102]])
    with torch.no_grad(), pytest.raises(ValueError, match="NaN or infinite"):
        vqa(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels.fill_(float("inf")))


def test_fresh_search_cases(folders, image_file, tmp_path, capsys):
    """Found by a second hostile pass: a file given as --model, an output path that is a folder (refused before
    the model loads), export over a model folder, a missing --text-init folder, a binary config file, out-of-range
    thresholds and boolean arrays through the Python API."""
    _one_line_error(capsys, ["detect", image_file, "--model", folders["detect"] / "config.json"],
                    "config.json is a file: give the model folder")
    _one_line_error(capsys, ["detect", image_file, "--model", folders["detect"], "--draw", tmp_path],
                    f"--draw {tmp_path} is a folder")
    _one_line_error(capsys, ["caption", image_file, "--model", folders["caption"], "--output", tmp_path],
                    f"--output {tmp_path} is a folder")
    before = sorted(p.name for p in folders["detect"].iterdir())
    _one_line_error(capsys, ["export", "onnx", "--model", folders["detect"], "--output", folders["detect"]],
                    "refusing to replace", "no onnx_manifest.json")
    assert sorted(p.name for p in folders["detect"].iterdir()) == before
    _one_line_error(capsys, ["init", "minivlm-tiny", "--output", tmp_path / "i", "--text-init", tmp_path / "nope"],
                    "not a local BERT/MiniLM folder nor a Hub id")
    binary = tmp_path / "cfg.json"
    binary.write_bytes(b"\x89PNG\r\n")
    _one_line_error(capsys, ["train", "vqa", "--config", binary, "--output-dir", tmp_path / "o"],
                    f"recipe config {binary} is not valid JSON")
    model, processor = inference.load("detector", str(folders["detect"]))
    for bad in (2, -0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="threshold must be a number in"):
            inference.detect(model, processor, [image_file], threshold=bad)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:10] = True
    assert inference.detect(model, processor, mask, threshold=0.0) == inference.detect(
        model, processor, Image.fromarray(mask.astype(np.uint8) * 255), threshold=0.0)
    captioner, processor = inference.load("caption", str(folders["caption"]))
    with pytest.raises(TypeError, match="prompt must be a string"):
        inference.caption(captioner, processor, image_file, prompt=None)
