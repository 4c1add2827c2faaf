"""`minivlm-hf serve` without a browser: which checkpoints a MODEL names, the page's tables, the command line."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from minivlm_hf.serve.models import ServedModels, find_checkpoints
from serve_utils import make_demo_folder


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return make_demo_folder(tmp_path_factory.mktemp("demo_out"))


def test_demo_folder_serves_every_task_by_architecture(demo_folder):
    found = find_checkpoints([str(demo_folder)])
    # pretrain/ is skipped: no user-facing task; the order is the page's
    assert found == {"detector": str(demo_folder / "detector"), "caption": str(demo_folder / "caption"),
                     "vqa": str(demo_folder / "vqa"), "retrieval": str(demo_folder / "retrieval"),
                     "nlvr": str(demo_folder / "nlvr")}
    assert find_checkpoints(str(demo_folder / "vqa")) == {"vqa": str(demo_folder / "vqa")}
    combined = find_checkpoints([str(demo_folder / "caption"), str(demo_folder / "detector")])
    assert list(combined) == ["detector", "caption"]


def test_bad_models_are_named(demo_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found .*nowhere"):
        find_checkpoints([str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match="no task checkpoint in .*empty"):
        (tmp_path / "empty").mkdir()
        find_checkpoints([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="two caption checkpoints"):
        find_checkpoints([str(demo_folder), str(demo_folder / "caption")])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.*not a readable config.json"):
        find_checkpoints([str(tmp_path / "broken")])


def test_served_models_match_inference(demo_folder):
    from minivlm_hf import inference
    from minivlm_hf.assets import EXAMPLE_IMAGE

    served = ServedModels.load([str(demo_folder / "caption"), str(demo_folder / "detector")])
    image = inference.open_image(EXAMPLE_IMAGE).convert("RGB")
    timed = served.detect(image, threshold=0.1)
    model, processor = inference.load("detector", str(demo_folder / "detector"))
    assert timed.value == inference.detect(model, processor, [image], threshold=0.1)[0]
    assert timed.value and timed.milliseconds > 0
    assert all(set(d) == {"label", "score", "box", "attributes"} for d in timed.value)
    defaults = served.caption_defaults()
    assert defaults["max_new_tokens"] <= defaults["max_new_tokens_limit"] == model_text_limit(demo_folder)


def model_text_limit(folder):
    return json.loads((folder / "caption" / "config.json").read_text())["max_text_length"] - 2


def test_tables_and_drawing():
    from minivlm_hf.serve.app import draw_detections, format_answers, format_detections, format_ranking

    detections = [{"label": "star", "score": 0.91234, "box": [1.0, 2.0, 30.4, 40.6], "attributes": ["green", "large"]}]
    assert format_detections(detections).splitlines()[-1] == "| 1 | star | green, large | 0.912 | 1, 2, 30, 41 |"
    assert format_detections([]) == "No object above the score threshold."
    assert format_answers([{"answer": "a|b", "score": 0.5}]).splitlines()[-1] == "| a&#124;b | 0.500 |"
    assert format_ranking([{"caption": "x", "score": 0.25}]).splitlines()[-1] == "| 1 | x | 0.250 |"
    image = Image.new("RGB", (64, 48), "white")
    drawn = draw_detections(image, detections)
    assert drawn.size == image.size and drawn.getpixel((1, 20)) != (255, 255, 255)  # the box's left edge
    assert image.getpixel((1, 20)) == (255, 255, 255)  # the input is left as it was


def test_serve_command_line(tmp_path, capsys):
    from minivlm_hf.cli import build_parser, main

    args = build_parser().parse_args(["serve", "demo_out"])
    assert (args.models, args.host, args.port, args.threshold) == (["demo_out"], "127.0.0.1", 7860, 0.5)
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "minivlm-hf serve: error: --port must be in 1..65535, got 0"
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    # the command module loads Gradio only when it runs
    code = "import sys, minivlm_hf.commands.serve; print('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_model_card_shows_how_to_serve():
    from minivlm_hf.hub.model_card import usage_snippet

    card = usage_snippet("vqa", "me/minivlm-vqa")
    assert "minivlm-hf serve me/minivlm-vqa" in card and "MINIVLM_MODELS=me/minivlm-vqa" in card
    assert "minivlm-hf serve" not in usage_snippet("pretrain", "me/minivlm-pretrain")  # nothing to serve


def test_serves_a_pushed_hub_repo(hub_server, demo_folder, monkeypatch):
    """`minivlm-hf serve namespace/name`: the task comes from the pushed config.json, the model from the Hub."""
    import uuid

    from minivlm_hf.assets import EXAMPLE_IMAGE
    from minivlm_hf.hub.push import push_checkpoint

    repo = f"user/serve-{uuid.uuid4().hex[:6]}"
    push_checkpoint(demo_folder / "vqa", repo, token="test-token")
    assert find_checkpoints([repo]) == {"vqa": repo}
    served = ServedModels.load([repo, str(demo_folder / "caption")])
    assert served.tasks == ["caption", "vqa"]
    from minivlm_hf import inference

    model, processor = inference.load("vqa", str(demo_folder / "vqa"))
    expected = inference.answer(model, processor, EXAMPLE_IMAGE, "what color is the star?", top_k=3)
    assert served.answer(EXAMPLE_IMAGE, "what color is the star?", top_k=3).value == expected
    with pytest.raises(FileNotFoundError, match="user/missing-repo: no config.json on the Hub"):
        find_checkpoints(["user/missing-repo"])
