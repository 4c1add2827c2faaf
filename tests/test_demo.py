"""`minivlm-hf demo --quick` end to end: every stage trains, saves, reloads through the Auto classes and reports."""

import json

import pytest
import torch


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    from minivlm_hf.cli import main

    out = tmp_path_factory.mktemp("demo_quick")
    cache = tmp_path_factory.mktemp("demo_cache")
    assert main(["demo", "--quick", "--output-dir", str(out), "--cache-dir", str(cache)]) == 0
    return out


def test_quick_demo_outputs(quick_demo):
    out = quick_demo
    for stage in ("detector", "pretrain", "caption", "vqa", "retrieval", "nlvr"):
        assert (out / stage / "config.json").is_file(), stage
        assert (out / stage / "model.safetensors").is_file(), stage
    assert (out / "detector" / "preprocessor_config.json").is_file()
    for stage in ("caption", "vqa", "retrieval", "nlvr"):
        assert (out / stage / "processor_config.json").is_file() and (out / stage / "tokenizer.json").is_file()
    assert (out / "gallery.png").is_file() and (out / "gallery.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "| Task | Metric | Target | Measured | Met |" in report
    for label in ("Detection mAP@0.5", "VQA accuracy", "Caption CIDEr-D", "Image→text R@1", "NLVR accuracy"):
        assert label in report
    # the CPU model and its matrix extensions: runs on CPUs with different kernels train different models
    from minivlm_hf.benchmark.machine import machine_info

    info = machine_info()
    machine = next(line for line in report.splitlines() if line.startswith("- **machine**:"))
    assert info["cpu_model"] in machine and f"{info['usable_cpus']} usable CPUs" in machine
    assert ("; AMX" in machine) == bool(info["cpu_flags"]["amx_tile"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"detector", "pretrain", "caption", "vqa", "retrieval", "nlvr"}
    for stage, check in summary["reload_checks"].items():
        assert check["equal"], (stage, check)
    assert summary["reload_checks"]["vqa"]["auto_class"] == "AutoModelForVisualQuestionAnswering"
    assert summary["timings"]["total"] > 0
    assert 0.0 <= summary["metrics"]["vqa"]["test_accuracy"] <= 1.0


def test_quick_demo_training_curves_and_web_demo(quick_demo):
    out = quick_demo
    report = (out / "report.md").read_text()
    for stage in ("detector", "pretrain", "caption", "vqa", "retrieval", "nlvr"):
        history = json.loads((out / stage / "log_history.json").read_text())
        steps = [e["step"] for e in history if "loss" in e]
        assert steps and all(step % 5 == 0 for step in steps), stage  # the quick preset logs every 5 steps
        assert all("learning_rate" in e for e in history if "loss" in e)
        assert (out / stage / "training_curves.png").stat().st_size > 5_000, stage
        assert f"![{stage} training curves]({stage}/training_curves.png)" in report
    assert "## Gallery" in report and "FAIL" in report
    # `minivlm-hf serve` finds every task in the demo's output folder and runs it
    from minivlm_hf.assets import EXAMPLE_IMAGE
    from minivlm_hf.serve.models import ServedModels

    served = ServedModels.load(str(out))
    assert served.tasks == ["detector", "caption", "vqa", "retrieval", "nlvr"]
    decode = {k: v for k, v in served.caption_defaults().items() if k != "max_new_tokens_limit"}
    assert served.caption(EXAMPLE_IMAGE, **decode).value.strip()
    answers = served.answer(EXAMPLE_IMAGE, "what color is the star?").value
    assert len(answers) == 5 and [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    ranking = served.rank(EXAMPLE_IMAGE, ["a green star", "two blue squares"]).value
    assert sorted(r["caption"] for r in ranking) == ["a green star", "two blue squares"]


def test_quick_demo_models_reload_and_run_from_pixels(quick_demo):
    """The saved VQA / caption models hold the TEE: one call from an image, equal to the features path."""
    from PIL import Image

    from minivlm_hf.training.demo import load_processor, load_with_auto_class

    vqa, how = load_with_auto_class("vqa", quick_demo / "vqa")
    assert type(vqa).__name__ == "MiniVLMForQuestionAnswering" and how == "AutoModelForVisualQuestionAnswering"
    # the demo trains with attribute tags and the softmax VQA loss; the saved config carries both
    assert vqa.config.tag_attributes and vqa.config.tag_attribute_token_ids and vqa.config.vqa_loss == "softmax"
    processor = load_processor("vqa", quick_demo / "vqa")
    image = Image.new("RGB", (120, 100), (90, 90, 90))
    inputs = processor(images=[image], text=["what color is the circle?"], return_tensors="pt")
    with torch.no_grad():
        first, second = vqa(**inputs).logits, vqa(**inputs).logits
    assert first.shape == (1, vqa.config.num_labels) and torch.equal(first, second)
    captioner, _ = load_with_auto_class("caption", quick_demo / "caption")
    with torch.no_grad():
        ids = captioner.generate(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], max_new_tokens=5)
    assert ids.shape[0] == 1 and ids.shape[1] <= 6
    retrieval, _ = load_with_auto_class("retrieval", quick_demo / "retrieval")
    nlvr, _ = load_with_auto_class("nlvr", quick_demo / "nlvr")
    assert type(retrieval).__name__ == "MiniVLMForImageTextRetrieval"
    assert type(nlvr).__name__ == "MiniVLMForVisualReasoning"


def test_quick_demo_no_pretrain_ablation_reuses_the_detector(quick_demo, tmp_path):
    """--no-pretrain: every fine-tune starts from MiniLM, no pre-training stage; --detector: the TEE is reused."""
    from minivlm_hf.cli import main

    out = tmp_path / "ablation"
    assert main(["demo", "--quick", "--no-pretrain", "--no-gallery", "--detector", str(quick_demo / "detector"),
                 "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["started_from"] == {t: "minilm" for t in ("caption", "vqa", "retrieval", "nlvr")}
    assert summary["no_pretrain"] is True and summary["detector_from"] == str(quick_demo / "detector")
    assert not (out / "pretrain").exists() and not (out / "detector").exists()
    assert "pretrain" not in summary["metrics"] and "detector: train" not in summary["timings"]
    # the same TEE: the ablation's detector metrics equal the main run's
    main_summary = json.loads((quick_demo / "summary.json").read_text())
    assert summary["metrics"]["detector"] == main_summary["metrics"]["detector"]
    assert main_summary["started_from"] == {"pretrain": "minilm", **{t: "pretrain" for t in
                                            ("caption", "vqa", "retrieval", "nlvr")}}
    assert set(main_summary["metrics"]["pretrain"]) >= {"train_loss", "final_masked_lm_loss", "final_contrastive_loss"}
    assert "caption ← minilm" in (out / "report.md").read_text()
    assert main(["demo", "--quick", "--detector", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o")]) == 2


def test_demo_config_errors(tmp_path, capsys):
    from minivlm_hf.cli import main

    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "o"), "--config", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"unknown": 1}))
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_demo_stage_settings():
    from minivlm_hf.training.demo import demo_config, init_stage, stage_config

    settings = demo_config(quick=False)
    tasks = ("caption", "vqa", "retrieval", "nlvr")
    assert [init_stage(settings, t) for t in tasks] == ["pretrain", "caption", "vqa", "retrieval"]
    assert [init_stage(settings, t, no_pretrain=True) for t in tasks] == ["minilm", "caption", "vqa", "retrieval"]

    def root(task, no_pretrain=False):
        while task not in ("pretrain", "minilm"):
            task = init_stage(settings, task, no_pretrain)
        return task

    assert [root(t) for t in tasks] == ["pretrain"] * 4  # the pre-training is the root of every fine-tune
    assert [root(t, no_pretrain=True) for t in tasks] == ["minilm"] * 4
    quick = demo_config(quick=True)
    assert [init_stage(quick, t) for t in tasks] == ["pretrain"] * 4  # the default: every fine-tune from pre-training
    assert [init_stage(quick, t, no_pretrain=True) for t in tasks] == ["minilm"] * 4  # the ablation
    assert stage_config(settings, "retrieval")["evaluation"]["bf16"] == "auto"
    assert stage_config(settings, "vqa")["evaluation"]["bf16"] is False
    vqa = stage_config(settings, "vqa")
    assert vqa["training"]["bf16"] == "auto" and vqa["fusion"]["vqa_loss"] == "softmax" and vqa["data"]["tag_attributes"]
    settings = demo_config(quick=False, overrides={"stages": {"vqa": {"init_from_stage": "caption"}}})
    assert init_stage(settings, "vqa") == "caption"
    assert "init_from_stage" not in stage_config(settings, "vqa")
    settings = demo_config(quick=True, overrides={"stages": {"vqa": {"init_from_stage": "nlvr"}}})
    with pytest.raises(ValueError, match="earlier fusion stage"):
        init_stage(settings, "vqa")
    settings = demo_config(quick=True, overrides={"stages": {"caption": {"init_from_stage": "minilm"}}})
    assert init_stage(settings, "caption") == "minilm"
    assert stage_config(settings, "caption")["fusion"]["init_from"] is None


def test_bf16_auto_resolves_to_a_bool(tmp_path):
    from minivlm_hf.training.recipes import bf16_available, load_recipe_config, training_arguments

    config = load_recipe_config(None, {"training": {"bf16": "auto", "max_steps": 1}})
    args = training_arguments("vqa", config, tmp_path)
    assert args.bf16 is bf16_available(cpu=True)


def test_parity_on_a_larger_test_split_of_the_demo(quick_demo, tmp_path):
    """``run_parity(num_test=...)``: the fast paths against fp32 on a test split twice the demo's, retrieval averaged
    over two groups of the demo's candidate count, with deltas and verdicts for every variant."""
    from minivlm_hf.benchmark.parity import FUSION_VARIANTS, run_parity

    demo_test = json.loads((quick_demo / "demo_config.json").read_text())["common"]["data"]["num_test"]
    result = run_parity(quick_demo, num_test=2 * demo_test, tasks=("retrieval",), cache_dir=tmp_path, log=lambda m: None)
    assert result["num_test"] == 2 * demo_test and set(result["metrics"]) == {"retrieval"}
    per = result["metrics"]["retrieval"]
    assert set(per) == set(FUSION_VARIANTS)
    assert all(0.0 <= per[v]["i2t_r1"] <= 1.0 and "num_groups" not in per[v] for v in per)
    assert set(result["deltas"]["retrieval"]) == set(FUSION_VARIANTS) - {"fp32"}
    assert abs(result["deltas"]["retrieval"]["bf16"]["i2t_r1"]) <= 1.0
    from minivlm_hf.fast import full_range_activations_are_safe

    assert result["int8"] == {"engines": [torch.backends.quantized.engine],
                              "activation_bits": 8 if full_range_activations_are_safe() else 7}
    with pytest.raises(ValueError, match="must be at least the demo's test split"):
        run_parity(quick_demo, num_test=demo_test - 1, tasks=("retrieval",), cache_dir=tmp_path, log=lambda m: None)
