"""`minivlm-hf detect` on the bundled example image: valid JSON and a PNG; bad input in one line."""

import json

import pytest
import torch
from PIL import Image

import minivlm_hf  # noqa: F401
from minivlm_hf.assets import EXAMPLE_IMAGE
from minivlm_hf.cli import main as cli_main
from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection
from tee_utils import tiny_image_processor, tiny_tee_config


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tee")
    TEEForObjectDetection(tiny_tee_config()).save_pretrained(folder)
    tiny_image_processor().save_pretrained(folder)
    return folder


def test_detect_writes_json_and_png(detector_dir, tmp_path):
    out, drawing = tmp_path / "out.json", tmp_path / "boxes.png"
    code = cli_main(
        ["detect", str(EXAMPLE_IMAGE), "--model", str(detector_dir), "--threshold", "0.0", "--output", str(out),
         "--draw", str(drawing)]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data[0]["image"] == str(EXAMPLE_IMAGE)
    detections = data[0]["detections"]
    assert detections, "threshold 0 keeps every region"
    width, height = Image.open(EXAMPLE_IMAGE).size
    labels = set(tiny_tee_config().id2label.values())
    for det in detections:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert det["label"] in labels and 0.0 <= det["score"] <= 1.0
    with Image.open(drawing) as image:
        assert image.format == "PNG" and image.size == (width, height)


def test_detect_several_images_numbers_the_drawings(detector_dir, tmp_path):
    code = cli_main(
        ["detect", str(EXAMPLE_IMAGE), str(EXAMPLE_IMAGE), "--model", str(detector_dir), "--draw", str(tmp_path / "d.png"),
         "--output", str(tmp_path / "o.json")]
    )
    assert code == 0
    assert (tmp_path / "d_0.png").is_file() and (tmp_path / "d_1.png").is_file()
    assert len(json.loads((tmp_path / "o.json").read_text())) == 2


def test_detect_bad_input_is_one_line(detector_dir, tmp_path, capsys):
    assert cli_main(["detect", str(tmp_path / "nope.png"), "--model", str(detector_dir)]) == 2
    assert "image not found" in capsys.readouterr().err
    assert cli_main(["detect", str(EXAMPLE_IMAGE), "--model", str(tmp_path / "no-model")]) == 2
    assert "model folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a bad number fails at parse time (argparse type)
        cli_main(["detect", str(EXAMPLE_IMAGE), "--model", str(detector_dir), "--threshold", "2"])
    assert exit_info.value.code == 2
    assert "--threshold: expected a number in [0, 1], got '2'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["detect", "caption", "answer", "data", "init", "push"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: minivlm-hf " + command in capsys.readouterr().out
