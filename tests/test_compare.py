"""`minivlm-hf compare --tiny` end to end on a tiny demo run: the retention table, its ratios and parameter counts."""

import json
import math

import pytest
import torch

#: The quick preset cut down to a few scenes and 2 steps per stage (about 20 s).
TINY_DEMO = {
    "common": {"data": {"num_train": 16, "num_validation": 2, "num_test": 6, "nlvr_num_train": 8,
                        "nlvr_num_validation": 2, "nlvr_num_test": 4, "image_size": 128},
               "detector": {"image_size": 128},
               "evaluation": {"num_candidates": 6, "max_new_tokens": 4}},
    "stages": {s: {"training": {"max_steps": 2, "per_device_train_batch_size": 4}}
               for s in ("detector", "pretrain", "caption", "vqa", "retrieval", "nlvr")},
}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from minivlm_hf.training.demo import run_demo

    out = tmp_path_factory.mktemp("compare_demo")
    cache = tmp_path_factory.mktemp("compare_cache")
    run_demo(out, quick=True, cache_dir=cache, overrides=TINY_DEMO, progress=False, gallery=False,
             log=lambda message: None)
    return out, cache


@pytest.fixture(scope="module")
def tiny_compare(tiny_demo, tmp_path_factory):
    from minivlm_hf.cli import main

    demo, cache = tiny_demo
    out = tmp_path_factory.mktemp("compare_out") / "run"
    # --detector-steps 1: fewer than the demo detector's 2, which the table must state
    assert main(["compare", "--model-dir", str(demo), "--output-dir", str(out), "--tiny", "--quiet",
                 "--detector-steps", "1", "--timing-runs", "2", "--cache-dir", str(cache)]) == 0
    return demo, out


def test_compare_table_has_every_row_and_retention_is_the_ratio(tiny_compare):
    from minivlm_hf.compare.table import COST_ROWS, METRIC_ROWS

    demo, out = tiny_compare
    result = json.loads((out / "compare.json").read_text())
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows) == [r[1] for r in COST_ROWS] + [r[2] for r in METRIC_ROWS]
    summary = json.loads((demo / "summary.json").read_text())
    for stage, key, label, _, _ in METRIC_ROWS:
        row = rows[label]
        # MiniVLM's numbers are the demo's; OSCAR-B's those its own stages measured on the test split
        assert row["minivlm"] == summary["metrics"][stage][key]
        if stage == "detector":
            saved = json.loads((out / "detector" / "detector.json").read_text())["metrics"]
        else:
            saved = json.loads((out / stage / "metrics.json").read_text())
        assert row["oscar_b"] == saved[key]
    for row in result["rows"]:
        assert row["minivlm"] is not None and row["oscar_b"] is not None, row["label"]
        if row["oscar_b"]:
            assert row["ratio"] == pytest.approx(row["minivlm"] / row["oscar_b"], rel=1e-12)
        else:
            assert row["ratio"] is None
    costs = {r["key"]: r for r in result["rows"] if r["kind"] == "cost"}
    assert costs["flops"]["minivlm"] > 0 and costs["flops"]["oscar_b"] > costs["flops"]["minivlm"]
    assert costs["time_s"]["minivlm"] > 0 and costs["time_s"]["oscar_b"] > 0
    markdown = (out / "compare.md").read_text()
    for row in result["rows"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio'] * 100:.1f}%"
        assert any(line.startswith(f"| {row['label']} |") and line.endswith(f"| {ratio} |")
                   for line in markdown.splitlines()), row["label"]
    assert "random weights" in markdown and "no BERT-base weights are available offline" in markdown
    assert "trained 1 steps instead of the demo's 2" in markdown
    assert result["detector_steps"] == 1 and result["demo_detector_steps"] == 2
    assert "| oscar-b detector: train |" in markdown and "| oscar-b vqa: train + evaluate |" in markdown
    assert result["total_seconds"] >= sum(result["timings"].values())


def test_compare_parameters_are_the_models_real_counts(tiny_compare):
    from minivlm_hf.compare.detector import load_detector
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering

    demo, out = tiny_compare
    result = json.loads((out / "compare.json").read_text())
    params = next(r for r in result["rows"] if r["key"] == "parameters")
    mini = MiniVLMForQuestionAnswering.from_pretrained(str(demo / "vqa"))
    detector, _ = load_detector(out / "detector")
    big = MiniVLMForQuestionAnswering.from_pretrained(str(out / "vqa"))
    assert params["minivlm"] == sum(p.numel() for p in mini.parameters())
    assert params["oscar_b"] == sum(p.numel() for p in detector.parameters()) + sum(p.numel() for p in big.parameters())
    # the OSCAR-B side's shapes: the tiny detector's 10 regions x 64-d feed a fresh 2-layer H48 fusion model
    assert (big.config.hidden_size, big.config.num_hidden_layers, big.config.region_feature_size,
            big.config.max_regions) == (48, 2, 64, 10)
    assert big.minivlm.vision_model is None


def test_compare_region_tables_feed_the_recipes(tiny_compare):
    from minivlm_hf.training.features import RegionStore, load_feature_table

    demo, out = tiny_compare
    table = load_feature_table(out / "features" / "scenes_test")
    store = RegionStore(table)
    assert tuple(store.region_features.shape) == (6, 10, 64)
    assert bool(store.region_mask.all())
    boxes = store.region_boxes
    assert float(boxes.min()) >= 0.0 and float(boxes.max()) <= 1.0
    assert all(isinstance(tags, list) for tags in store.tags)
    nlvr = load_feature_table(out / "features" / "nlvr_test")
    assert len(nlvr) == 2 * 4  # both images of the 4 test pairs


def test_tag_scores_keep_one_region_per_object():
    from minivlm_hf.compare.detector import tag_scores

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.5, 0.0, 10.5, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.6, 0.9, 0.3])
    assert tag_scores(boxes, scores, 0.4).tolist() == pytest.approx([0.0, 0.9, 0.3])
    assert tag_scores(boxes, scores, 0.99).tolist() == pytest.approx([0.6, 0.9, 0.3])


def test_table_ratio_is_none_without_a_baseline_value():
    from minivlm_hf.compare.table import ratio, table_rows

    assert ratio(0.5, 0.0) is None and ratio(None, 1.0) is None and ratio(0.5, math.nan) is None
    rows = table_rows({"costs": {"parameters": 10}, "metrics": {"vqa": {"test_accuracy": 0.45}}},
                      {"costs": {"parameters": 40}, "metrics": {"vqa": {"test_accuracy": 0.5}}})
    by_key = {r["key"]: r for r in rows}
    assert by_key["parameters"]["ratio"] == 0.25 and by_key["vqa.test_accuracy"]["ratio"] == pytest.approx(0.9)
    assert by_key["flops"]["ratio"] is None


def test_compare_refuses_a_missing_or_invalid_model_dir(tmp_path, capsys):
    from minivlm_hf.cli import main

    def error(model_dir):
        out = tmp_path / "out"
        assert main(["compare", "--model-dir", str(model_dir), "--output-dir", str(out), "--tiny"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("minivlm-hf compare: error: --model-dir")
        assert not out.exists()  # nothing written before the input was checked
        return lines[0]

    assert "does not exist" in error(tmp_path / "missing")
    folder = tmp_path / "demo"
    folder.mkdir()
    assert "has no demo_config.json" in error(folder)
    (folder / "demo_config.json").write_text(json.dumps({"common": {}, "stages": {}}))
    (folder / "summary.json").write_text("{not json")
    assert "summary.json is not valid JSON" in error(folder)
    (folder / "summary.json").write_text(json.dumps({"metrics": {"detector": {}, "vqa": {}}}))
    assert "no test metrics for caption, retrieval, nlvr" in error(folder)
    (folder / "summary.json").write_text(json.dumps({"metrics": {t: {} for t in
                                                                 ("detector", "caption", "vqa", "retrieval", "nlvr")}}))
    assert "no saved VQA model" in error(folder)


def test_compare_goes_on_from_an_interrupted_run(tiny_compare, tmp_path, capsys):
    """A second run into a folder without compare.json reuses the detector, the region tables and every finished
    stage (same task metrics); a run of the other size is refused."""
    import shutil

    from minivlm_hf.cli import main

    demo, out = tiny_compare
    again = tmp_path / "again"
    shutil.copytree(out, again)
    for name in ("compare.json", "compare.md"):
        (again / name).unlink()
    shutil.rmtree(again / "nlvr")  # the last stage did not finish
    assert main(["compare", "--model-dir", str(demo), "--output-dir", str(again), "--quiet", "--timing-runs", "1"]) == 2
    assert "holds a detector of another size" in capsys.readouterr().err
    assert main(["compare", "--model-dir", str(demo), "--output-dir", str(again), "--tiny", "--quiet",
                 "--timing-runs", "1"]) == 0
    logged = capsys.readouterr().out
    assert "reusing the one trained" in logged and "OSCAR-B caption: reusing" in logged
    assert "OSCAR-B nlvr: from" in logged  # trained again
    first, second = (json.loads((d / "compare.json").read_text()) for d in (out, again))
    for a, b in zip(first["rows"], second["rows"]):
        if a["kind"] == "metric":
            assert a["oscar_b"] == b["oscar_b"], a["label"]
    assert second["detector_steps"] == 1
    assert main(["compare", "--model-dir", str(demo), "--output-dir", str(again), "--tiny"]) == 2
    assert "already holds a comparison" in capsys.readouterr().err
