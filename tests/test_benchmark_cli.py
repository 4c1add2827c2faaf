"""`minivlm-hf benchmark`: help, argument checks, and one tiny end-to-end smoke run (no timing assertions)."""

import json

import pytest

from minivlm_hf.benchmark.parity import _deltas, _verdict, parity_markdown
from minivlm_hf.benchmark.suite import DEFAULT_PARTS, FAST_VQA_FP32_LABEL, FAST_VQA_LABEL, TARGETS
from minivlm_hf.cli import main
from minivlm_hf.commands.benchmark import parse_parts


def test_help_lists_every_part(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("--part", "--runs", "--threads", "--json", "--model-dir", "--tiny", "parity", "retrieval", "onnx"):
        assert word in text
    for argv in (["export", "--help"], ["export", "onnx", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "--opset" in capsys.readouterr().out


def test_part_selection():
    assert parse_parts(None, False) == DEFAULT_PARTS and "parity" not in DEFAULT_PARTS
    assert parse_parts(["all"], True) == (*DEFAULT_PARTS, "parity")
    assert parse_parts(["extractor,vqa", "vqa"], False) == ("extractor", "vqa")
    with pytest.raises(ValueError, match="unknown --part"):
        parse_parts(["speed"], False)


def test_startup_part_is_selected_only_by_name(tmp_path, capsys):
    assert parse_parts(["startup"], False) == ("startup",)
    assert parse_parts(["vqa,startup"], False) == ("vqa", "startup")
    assert "startup" not in parse_parts(["all"], True)
    assert main(["benchmark", "--part", "startup", "--runs", "3"]) == 2  # medians need >= 10 runs, as elsewhere
    assert "--runs must be >= 10" in capsys.readouterr().err


def test_startup_markdown_splits_each_command():
    from minivlm_hf.benchmark.startup import startup_markdown

    rows = [("from transformers import AutoModel, PreTrainedModel", 5.0, 4.5), ("import minivlm_hf", 0.1, 0.1)]
    rows += [(f"minivlm-hf {c} (one image)", 7.0, 6.0) for c in ("caption", "answer", "detect")]
    parts = {"import": 5.3, "load": 0.4, "inference": 0.8, "rest": 0.3, "exit": 0.2}
    result = {"command": "minivlm-hf benchmark --part startup", "date": "2026-12-06 03:00 UTC",
              "lscpu": {"Model name": "Test CPU", "CPU(s)": "2"}, "load_average_end": [0.1, 0.1, 0.1], "runs": 10,
              "rows": [{"label": l, "median_s": m, "min_s": m - 0.1, "cpu_median_s": c} for l, m, c in rows],
              "split": {c: parts for c in ("caption", "answer", "detect")}}
    text = startup_markdown(result)
    assert "| `import minivlm_hf` | 0.10 s | 0.00 s | -4.90 s | 0.10 s | -4.40 s |" in text
    assert "| `caption` | 5.30 | 0.40 | 0.80 | 0.30 | 0.20 | 7.00 |" in text
    assert "CPU seconds" not in text
    result["cpu_split"] = {c: {**parts, "import": 4.0} for c in ("caption", "answer", "detect")}
    text = startup_markdown(result)
    assert "CPU seconds" in text and "| `detect` | 4.00 | 0.40 | 0.80 | 0.30 | 0.20 | 6.00 |" in text
    assert "Test CPU (2 CPUs)" in text


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["benchmark", "--part", "extractor", "--runs", "3"]) == 2  # medians need >= 10 runs
    assert "--runs must be >= 10" in capsys.readouterr().err
    assert main(["benchmark", "--part", "parity"]) == 2
    assert "--model-dir" in capsys.readouterr().err
    assert main(["benchmark", "--part", "parity", "--model-dir", str(tmp_path / "missing")]) == 2
    assert main(["benchmark", "--part", "parity", "--model-dir", str(tmp_path)]) == 2  # not a demo output
    assert "demo_config.json" in capsys.readouterr().err


def test_parity_deltas_and_verdicts():
    metrics = {"vqa": {"fp32": {"accuracy": 0.80}, "bf16": {"accuracy": 0.795}, "int8": {"accuracy": 0.83}},
               "retrieval": {"fp32": {"i2t_r1": 0.5, "i2t_medr": 2.0}, "int8": {"i2t_r1": 0.48, "i2t_medr": 5.0}}}
    deltas = {task: _deltas(per) for task, per in metrics.items()}
    assert deltas["vqa"]["bf16"]["accuracy"] == pytest.approx(-0.005)
    assert _verdict("bf16", deltas["vqa"]["bf16"]) and _verdict("int8", deltas["vqa"]["int8"])  # int8 may gain
    assert not _verdict("bf16", {"accuracy": 0.02})
    assert not _verdict("int8", deltas["retrieval"]["int8"])  # a 2-point loss; the rank is not judged
    assert _verdict("int8", {"i2t_medr": 3.0})
    verdicts = {t: {v: _verdict(v, d) for v, d in per.items()} for t, per in deltas.items()}
    text = parity_markdown({"metrics": metrics, "deltas": deltas, "within_1_point": verdicts})
    assert "| vqa | bf16 |" in text and "NO" in text


def test_tiny_benchmark_runs_every_part(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--tiny", "--runs", "2", "--threads", "1", "--batch-runs", "1", "--no-memory",
            "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "### Targets" in printed and "### Fast paths" in printed
    result = json.loads(out.read_text())
    assert result["settings"]["tiny"] and result["threads"] == 1
    assert set(result["gflops"]["used"]) == {"float32", "bfloat16"}
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {"extraction", "image_to_vqa", "image_to_caption_greedy", "image_to_caption_beam", "retrieval"}
    for row in rows.values():
        for key in ("time_ratio", "flops_ratio", "minivlm_lower_bound_s", "minivlm_measured_over_lower_bound"):
            assert row[key] is not None and row[key] > 0, key
        assert len(row["minivlm"]["runs_s"]) == 2 and len(row["baseline"]["runs_s"]) == 2
    assert set(rows["image_to_vqa"]["flops_per_module"]) == {"minivlm", "baseline"}
    for key in ("extraction", "image_to_vqa"):  # MiniVLM with fast paths timed in the same rounds
        assert rows[key]["minivlm_fast"]["time_ratio"] > 0
        assert rows[key]["minivlm_fast_variants"][0] == rows[key]["minivlm_fast"]
        assert all(len(v["runs_s"]) == 2 for v in rows[key]["minivlm_fast_variants"])
    # image → VQA: an all-fp32 fast variant (the fp32 time target) and the int8 one, both named in the target note
    assert [v["variant"] for v in rows["image_to_vqa"]["minivlm_fast_variants"]] == [FAST_VQA_FP32_LABEL, FAST_VQA_LABEL]
    vqa_target = next(t for t in result["targets"] if t["name"] == "vqa_time")
    assert FAST_VQA_FP32_LABEL in vqa_target["note"] and FAST_VQA_LABEL in vqa_target["note"]
    assert 0 < result["param_ratio"] < 1 and result["params"]["minivlm"]["total"] > 0
    assert result["decoder"]["identical_tokens"] and result["decoder"]["speedup"] > 0
    fast_decoder = result["decoder"]["fp32_fast"]  # fused QKV: the same tokens, cached or not
    assert fast_decoder["identical_tokens"] and fast_decoder["same_tokens_as_fp32"] and fast_decoder["speedup"] > 0
    decoder_target = next(t for t in result["targets"] if t["name"] == "decoder_cache_speedup")
    assert "fp32 fast paths" in decoder_target["note"]
    groups = {f["group"] for f in result["fast"]}
    assert {"TEE region extraction", "fusion + VQA head from regions", "image → VQA answer"} <= groups
    variants = {(f["group"], f["variant"]) for f in result["fast"]}
    assert ("fusion + VQA head from regions", "int8") in variants and ("fusion + VQA head from regions", "bf16") in variants
    caption = [f for f in result["fast"] if "caption" in f["group"] and f["variant"] == "fast fp32"]
    assert len(caption) == 1 and caption[0]["parity"]["identical_tokens"]
    assert {(b["batch"], b["task"]) for b in result["batch"]} >= {(1, "region extraction"), (2, "image → VQA answer")}
    assert result["onnx"]["verification_passed"] and len(result["onnx"]["rows"]) == 3
    names = {t["name"] for t in result["targets"]}
    assert names == set(TARGETS)
    assert all(t["met"] in (True, False) for t in result["targets"])


def test_best_part_times_each_sides_cpu_settings_and_divides_best_by_best(tmp_path, capsys, monkeypatch):
    from minivlm_hf.benchmark import best_part

    monkeypatch.setattr(best_part, "machine_info", lambda: {"bf16_hardware": True})  # offer bf16 on any CPU
    out = tmp_path / "best.json"
    argv = ["benchmark", "--tiny", "--part", "best", "--runs", "2", "--threads", "1", "--no-memory", "--no-flops",
            "--json", str(out)]
    assert main(argv) == 0
    assert "### Best vs best" in capsys.readouterr().out
    best = json.loads(out.read_text())["best"]
    assert best["bf16_offered"] and [r["task"].split(",")[0] for r in best["rows"]] == [
        "image → VQA answer", "image → 4-token caption", "image → 4-token caption"]
    for row in best["rows"]:
        assert set(row["minivlm_s"]) == {"fp32", best_part.MINIVLM_FAST_FP32, best_part.MINIVLM_FAST_INT8,
                                         best_part.MINIVLM_FAST_BF16, best_part.MINIVLM_FAST_BF16_INT8}
        assert set(row["baseline_s"]) == {"fp32", best_part.BASELINE_INT8, best_part.BASELINE_BF16,
                                          best_part.BASELINE_BF16_INT8}
        for side in ("minivlm", "baseline"):
            assert row[f"{side}_best"] == min(row[f"{side}_s"], key=row[f"{side}_s"].get)
            assert all(len(row["timing"][f"{side}: {name}"]["runs_s"]) == 2 for name in row[f"{side}_s"])
        assert row["best_ratio"] == pytest.approx(row["minivlm_s"][row["minivlm_best"]]
                                                  / row["baseline_s"][row["baseline_best"]])
        assert row["fp32_ratio"] == pytest.approx(row["minivlm_s"]["fp32"] / row["baseline_s"]["fp32"])
    assert "best" not in parse_parts(["all"], True) and parse_parts(["best"], False) == ("best",)
