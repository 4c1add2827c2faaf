"""Loaders for the standard formats, on tiny files written here, and their errors on bad input."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minivlm_hf.data import (
    SCENE_FEATURES,
    iter_feature_tsv,
    load_coco_detection,
    load_karpathy_captions,
    load_vqa_v2,
    read_coco_categories,
    read_feature_tsv,
    write_feature_tsv,
)


def _image(path: Path, size=(40, 30), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _raises_naming(exc, path: Path):
    return pytest.raises(exc, match=re.escape(str(path)))


# --------------------------------------------------------------------------------------- COCO detection
@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "val2017"
    _image(images / "000000000001.jpg", (64, 48))
    _image(images / "000000000002.png", (32, 32))
    ann = _json(tmp_path / "instances_val2017.json", {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48},
                   {"id": 2, "file_name": "000000000002.png"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [5.5, 6, 7, 8], "area": 40.0, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    })
    return ann, images


def test_coco_detection_loads_boxes_and_categories(coco):
    ann, images = coco
    ds = load_coco_detection(ann, images)
    assert ds.features == SCENE_FEATURES and ds.num_rows == 2
    first, second = ds[0], ds[1]
    assert first["coco_id"] == 1 and first["image_id"] == "1" and (first["width"], first["height"]) == (64, 48)
    assert first["objects"]["bbox"] == [[1, 2, 10, 20], [5.5, 6, 7, 8]]
    assert first["objects"]["category_id"] == [18, 1] and first["objects"]["iscrowd"] == [0, 1]
    assert first["image"].size == (64, 48)
    assert second["objects"]["bbox"] == [] and (second["width"], second["height"]) == (32, 32)
    assert first["captions"] == [] and first["questions"] == []
    assert read_coco_categories(ann) == {1: "person", 18: "dog"}


def test_coco_detection_errors_name_the_file(coco, tmp_path):
    ann, images = coco
    missing = tmp_path / "nope.json"
    with _raises_naming(FileNotFoundError, missing):
        load_coco_detection(missing, images)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with _raises_naming(ValueError, bad):
        load_coco_detection(bad, images)
    no_key = _json(tmp_path / "nokey.json", {"images": [{"file_name": "x.jpg"}], "annotations": []})
    with pytest.raises(ValueError, match=re.escape(str(no_key)) + ".*'id'"):
        load_coco_detection(no_key, images)
    bad_box = _json(tmp_path / "badbox.json", {
        "images": [{"id": 1, "file_name": "000000000001.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}], "categories": []})
    with _raises_naming(ValueError, bad_box):
        load_coco_detection(bad_box, images)
    bad_value = _json(tmp_path / "badvalue.json", {
        "images": [{"id": 1, "file_name": "000000000001.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": "big"}], "categories": []})
    with _raises_naming(ValueError, bad_value):
        load_coco_detection(bad_value, images)
    orphan = _json(tmp_path / "orphan.json", {
        "images": [], "annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1]}], "categories": []})
    with _raises_naming(ValueError, orphan):
        load_coco_detection(orphan, images)
    (images / "000000000002.png").unlink()
    with _raises_naming(FileNotFoundError, images / "000000000002.png"):
        load_coco_detection(ann, images)
    (images / "000000000002.png").write_bytes(b"this is not an image")
    with _raises_naming(ValueError, images / "000000000002.png"):
        load_coco_detection(ann, images)
    with _raises_naming(FileNotFoundError, tmp_path / "no-dir"):
        load_coco_detection(ann, tmp_path / "no-dir")


# ------------------------------------------------------------------------------------ Karpathy captions
def _karpathy(tmp_path, extra=None):
    root = tmp_path / "coco"
    entries = []
    for cocoid, split in [(11, "train"), (12, "restval"), (13, "val"), (14, "test")]:
        folder = "train2014" if split in ("train", "restval") else "val2014"
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        _image(root / folder / name, (20 + cocoid, 30))
        entries.append({"filepath": folder, "filename": name, "split": split, "cocoid": cocoid, "imgid": cocoid,
                        "sentences": [{"raw": f" A photo number {cocoid}. ", "tokens": ["a", "photo"]},
                                      {"tokens": ["two", "cats"]}]})
    entries += extra or []
    return _json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"}), root


def test_karpathy_captions_splits_and_captions(tmp_path):
    path, root = _karpathy(tmp_path)
    dd = load_karpathy_captions(path, root)
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 2, "validation": 1, "test": 1}
    assert dd["train"]["coco_id"] == [11, 12]
    assert dd["validation"][0]["captions"] == ["A photo number 13.", "two cats"]
    assert dd["test"][0]["width"] == 34 and dd["test"].features == SCENE_FEATURES
    separate = load_karpathy_captions(path, root, merge_restval=False)
    assert separate["train"]["coco_id"] == [11] and separate["restval"]["coco_id"] == [12]


def test_karpathy_errors_name_the_file(tmp_path):
    path, root = _karpathy(tmp_path, extra=[{"filename": "x.jpg", "split": "holdout", "cocoid": 1, "sentences": []}])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*holdout"):
        load_karpathy_captions(path, root)
    path, root = _karpathy(tmp_path, extra=[{"filename": "x.jpg", "split": "val", "sentences": []}])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*cocoid"):
        load_karpathy_captions(path, root)
    path, root = _karpathy(tmp_path, extra=[{"filepath": "val2014", "filename": "gone.jpg", "split": "val",
                                              "cocoid": 99, "sentences": []}])
    with _raises_naming(FileNotFoundError, root / "val2014" / "gone.jpg"):
        load_karpathy_captions(path, root)
    with _raises_naming(FileNotFoundError, tmp_path / "missing.json"):
        load_karpathy_captions(tmp_path / "missing.json", root)


# ---------------------------------------------------------------------------------------------- VQA v2
@pytest.fixture
def vqa(tmp_path):
    images = tmp_path / "val2014"
    for image_id in (42, 7):
        _image(images / f"COCO_val2014_{image_id:012d}.jpg")
    questions = _json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "data_subtype": "val2014", "task_type": "Open-Ended",
        "questions": [{"image_id": 42, "question": "What color is the bus?", "question_id": 420},
                      {"image_id": 7, "question": "Is it raining?", "question_id": 70},
                      {"image_id": 42, "question": "How many wheels?", "question_id": 421}]})

    def ann(qid, image_id, answers, answer_type):
        return {"question_id": qid, "image_id": image_id, "answer_type": answer_type, "question_type": "what",
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}

    annotations = _json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
        ann(420, 42, ["red"] * 9 + ["orange"], "other"),
        ann(70, 7, ["no"] * 10, "yes/no"),
        ann(421, 42, ["4"] * 8 + ["6", "3"], "number"),
    ]})
    return questions, annotations, images


def test_vqa_v2_groups_questions_per_image(vqa):
    questions, annotations, images = vqa
    ds = load_vqa_v2(questions, images, annotations)
    assert ds.features == SCENE_FEATURES and ds["coco_id"] == [42, 7]
    row = ds[0]
    assert row["questions"] == ["What color is the bus?", "How many wheels?"]
    assert row["question_ids"] == [420, 421] and row["question_types"] == ["other", "number"]
    assert row["answers"][0] == ["red"] * 9 + ["orange"] and len(row["answers"][1]) == 10
    plain = load_vqa_v2(questions, images)  # test-style: questions only
    assert plain[0]["answers"] == [[], []] and plain[1]["questions"] == ["Is it raining?"]


def test_vqa_v2_errors_name_the_file(vqa, tmp_path):
    questions, annotations, images = vqa
    short = _json(tmp_path / "short_annotations.json", {"annotations": []})
    with pytest.raises(ValueError, match=re.escape(str(short)) + ".*420"):
        load_vqa_v2(questions, images, short)
    bad = tmp_path / "broken_annotations.json"
    bad.write_text('{"annotations": [')
    with _raises_naming(ValueError, bad):
        load_vqa_v2(questions, images, bad)
    no_subtype = _json(tmp_path / "q.json", {"questions": []})
    with _raises_naming(ValueError, no_subtype):
        load_vqa_v2(no_subtype, images)
    (images / "COCO_val2014_000000000007.jpg").unlink()
    with _raises_naming(FileNotFoundError, images / "COCO_val2014_000000000007.jpg"):
        load_vqa_v2(questions, images, annotations)
    with _raises_naming(FileNotFoundError, tmp_path / "absent.json"):
        load_vqa_v2(tmp_path / "absent.json", images)


# ------------------------------------------------------------------------------------ feature TSV
def _features(n, dim=2048, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = np.sort(rng.uniform(0, 1, size=(n, 2)), axis=1), np.sort(rng.uniform(0, 1, size=(n, 2)), axis=1)
    boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)  # normalised x1, y1, x2, y2
    return rng.normal(size=(n, dim)).astype(np.float32), boxes.astype(np.float32)


def test_feature_tsv_round_trip(tmp_path):
    path = tmp_path / "features.tsv"
    a, b = _features(3, seed=1), _features(1, seed=2)
    write_feature_tsv(path, [("391895", *a), ("522418", *b), ("empty", np.zeros((0, 2048)), np.zeros((0, 4)))])
    rows = list(iter_feature_tsv(path))
    assert [r["image_id"] for r in rows] == ["391895", "522418", "empty"]
    np.testing.assert_array_equal(rows[0]["region_features"], a[0])
    np.testing.assert_array_equal(rows[0]["region_boxes"], a[1])
    assert rows[1]["region_features"].shape == (1, 2048) and rows[2]["region_boxes"].shape == (0, 4)
    # The stored 6-d box is [x1, y1, x2, y2, w, h].
    raw = np.frombuffer(base64.b64decode(path.read_text().splitlines()[0].split("\t")[2]), "<f4").reshape(3, 2054)
    np.testing.assert_allclose(raw[:, 2052:], a[1][:, 2:] - a[1][:, :2])
    table = read_feature_tsv(path)
    assert set(table) == {"391895", "522418", "empty"}
    # VinVL's JSON column variant and a smaller feature size.
    feats, boxes = _features(2, dim=8)
    block = np.concatenate([feats, boxes, boxes[:, 2:] - boxes[:, :2]], axis=1).astype("<f4")
    vinvl = tmp_path / "vinvl.tsv"
    vinvl.write_text("5\t" + json.dumps({"num_boxes": 2, "features": base64.b64encode(block.tobytes()).decode()}) + "\n")
    (row,) = iter_feature_tsv(vinvl, feature_dim=8)
    np.testing.assert_array_equal(row["region_features"], feats)


def test_feature_tsv_errors_name_the_file(tmp_path):
    with _raises_naming(FileNotFoundError, tmp_path / "missing.tsv"):
        list(iter_feature_tsv(tmp_path / "missing.tsv"))
    feats, boxes = _features(2, dim=8)
    good = base64.b64encode(np.zeros((2, 14), "<f4").tobytes()).decode()
    cases = {
        "wrong_count.tsv": f"1\t3\t{good}\n",  # 2 boxes of data, 3 announced
        "bad_base64.tsv": "1\t2\t@@@not-base64@@@\n",
        "columns.tsv": "1\t2\n",
        "num_boxes.tsv": f"1\ttwo\t{good}\n",
        "duplicate.tsv": f"1\t2\t{good}\n1\t2\t{good}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            read_feature_tsv(path, feature_dim=8)
    with pytest.raises(ValueError, match="line 1.*expected 3 boxes"):
        list(iter_feature_tsv(tmp_path / "wrong_count.tsv", feature_dim=8))
