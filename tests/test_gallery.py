"""The demo's gallery and report: right and wrong marked per test image, training curves linked."""

from PIL import Image

from minivlm_hf.training.gallery import FAIL, OK, caption_mistakes, draw_gallery, match_detections
from minivlm_hf.training.report import write_report


def test_match_detections_marks_missed_objects_and_false_detections():
    truth = [([0, 0, 10, 10], "star"), ([20, 20, 40, 40], "circle"), ([50, 0, 60, 10], "heart")]
    found = [([1, 1, 10, 10], "star"),      # IoU 0.81 with the star: a match
             ([0, 0, 10, 10], "star"),      # a second detection of a matched star: false
             ([20, 20, 40, 40], "square"),  # right place, wrong class: false (the circle stays missed)
             ([52, 0, 62, 10], "heart")]    # IoU 0.67: a match
    assert match_detections(truth, found) == ([1], [1, 2])
    # at IoU 0.9 only the exact second star detection matches
    assert match_detections(truth, found, iou=0.9) == ([1, 2], [0, 2, 3])
    assert match_detections([], []) == ([], [])


def test_caption_mistakes_name_what_the_image_lacks():
    vocabulary = {"red": "red", "blue": "blue", "star": "star", "circle": "circle", "circles": "circle"}
    scene = {"star", "red", "circle", "green", "large"}
    assert caption_mistakes("a red star and two blue circles", scene, vocabulary) == ["blue not in the image"]
    assert caption_mistakes("A Red STAR, circles.", scene, vocabulary, {"star", "circle"}) == []
    assert caption_mistakes("two blue squares", {"circle"}, vocabulary) == ["blue not in the image"]  # unknown: not judged
    assert caption_mistakes("a a a a", scene, vocabulary, {"star"}) == ["names no object of the image"]
    assert caption_mistakes("a red object", scene, vocabulary, {"star"}) == ["names no object of the image"]


def test_gallery_marks_failures_in_red(tmp_path):
    image = Image.new("RGB", (100, 100), "white")
    item = {"image": image, "truth_boxes": [[10, 10, 40, 40], [60, 60, 90, 90]], "truth_labels": ["red star", "ring"],
            "boxes": [[10, 10, 40, 40], [50, 5, 95, 30]], "labels": ["star", "heart"], "scores": [0.9, 0.6],
            "missed": [1], "false": [1], "caption": "a blue star", "references": ["a red star", "one ring"],
            "caption_mistakes": ["blue"], "qa": [{"question": "what color is the star?", "answer": "red",
                                                  "score": 0.8, "truth": "red"}]}
    draw_gallery(tmp_path / "gallery.png", [item, {**item, "missed": [], "false": []}], tile=100)
    with Image.open(tmp_path / "gallery.png") as gallery:
        gallery = gallery.convert("RGB")
        # row 1: the star found (green outline in both panels); the ring missed and the heart false (red)
        assert gallery.getpixel((10 + 10, 10 + 25)) == OK  # truth panel, left edge of the star
        assert gallery.getpixel((10 + 60, 10 + 75)) == FAIL  # truth panel, left edge of the missed ring
        assert gallery.getpixel((120 + 50, 10 + 20)) == FAIL  # detection panel, left edge of the false heart
        # row 2: nothing missed, nothing false
        assert gallery.getpixel((10 + 60, 140 + 10 + 75)) == OK
        assert gallery.size == (10 + 2 * 110 + 420, 10 + 2 * 140)


def test_report_links_training_curves_and_gallery(tmp_path):
    text = write_report(tmp_path / "report.md", title="t", metrics={}, timings={}, settings={}, reload_checks={},
                        gallery="gallery.png", notes=[],
                        curves={"detector": "detector/training_curves.png", "vqa": "vqa/training_curves.png"})
    assert "## Training curves" in text and "## Gallery" in text
    assert "![detector training curves](detector/training_curves.png)" in text
    assert "![vqa training curves](vqa/training_curves.png)" in text
    assert text.index("## Training curves") < text.index("## Gallery")
