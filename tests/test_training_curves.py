"""Training curves: the per-step log kept by a Trainer callback, its PNG plot, and TensorBoard event files."""

import json

import pytest
from PIL import Image

from minivlm_hf.training.curves import CURVES_FILE, LOG_FILE, plot_training_curves
from test_training import tiny_config


def test_plot_draws_the_logged_values(tmp_path):
    history = [{"loss": 2.5, "learning_rate": 1e-3, "step": 1}, {"loss": 2.0, "learning_rate": 5e-4, "step": 2},
               {"eval_loss": 2.2, "eval_accuracy": 0.25, "eval_runtime": 0.1, "step": 2},
               {"loss": float("nan"), "learning_rate": 0.0, "step": 3},
               {"eval_loss": 1.9, "eval_accuracy": 0.5, "step": 4}, {"train_loss": 2.1, "step": 4}]
    drawn = plot_training_curves(history, tmp_path / "curves.png", title="vqa", final_metrics={"test_accuracy": 0.75})
    assert drawn == {
        "loss: training loss": ([1.0, 2.0], [2.5, 2.0]),  # the NaN loss is left out
        "loss: validation loss": ([2.0, 4.0], [2.2, 1.9]),
        "evaluation: validation accuracy": ([2.0, 4.0], [0.25, 0.5]),
        "evaluation: test accuracy = 0.75": ([4.0], [0.75]),
        "learning rate: learning rate": ([1.0, 2.0, 3.0], [1e-3, 5e-4, 0.0]),
    }
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 2 * image.height


def test_every_train_run_keeps_its_log_and_curves(tmp_path):
    from minivlm_hf.training.recipes import load_recipe_config, run_stage

    config = load_recipe_config(None, tiny_config(tmp_path / "cache", max_steps=4, save_strategy="no",
                                                  eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4))
    result = run_stage("vqa", config, tmp_path / "vqa", progress=False)
    history = result.trainer.state.log_history
    assert json.loads((tmp_path / "vqa" / LOG_FILE).read_text()) == json.loads(json.dumps(history))
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e["eval_vqa_soft_accuracy"]) for e in history if "eval_vqa_soft_accuracy" in e]
    assert [s for s, _ in losses] == [1, 2, 3, 4] and [s for s, _ in evals] == [2, 4]
    with Image.open(tmp_path / "vqa" / CURVES_FILE) as image:
        assert image.format == "PNG"
    # the PNG shows these values (re-drawn from the saved log, as the report does)
    drawn = plot_training_curves(history, tmp_path / "again.png", final_metrics={"test_accuracy": 0.5})
    assert list(zip(*drawn["loss: training loss"])) == [(float(s), float(v)) for s, v in losses]
    assert list(zip(*drawn["evaluation: validation vqa_soft_accuracy"])) == [(float(s), float(v)) for s, v in evals]


def test_train_report_to_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from minivlm_hf.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tmp_path / "cache", max_steps=3, save_strategy="no")))
    out = tmp_path / "nlvr"
    assert main(["train", "nlvr", "--config", str(config), "--output-dir", str(out), "--no-eval",
                 "--report-to", "tensorboard"]) == 0
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.rglob("*"))
    logged = EventAccumulator(str(events[0].parent)).Reload()
    losses = [e.value for e in logged.Scalars("train/loss")]
    expected = [e["loss"] for e in json.loads((out / LOG_FILE).read_text()) if "loss" in e]
    assert losses == pytest.approx(expected) and len(losses) == 3
    assert "train/learning_rate" in logged.Tags()["scalars"]


def test_loss_parts_are_logged_and_drawn(tmp_path):
    from minivlm_hf.training.recipes import load_recipe_config, run_stage

    config = load_recipe_config(None, tiny_config(tmp_path / "cache", max_steps=4, save_strategy="no",
                                                  logging_steps=2))
    result = run_stage("pretrain", config, tmp_path / "pretrain", progress=False, evaluate=False)
    logged = [e for e in result.trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logged] == [2, 4]
    for entry in logged:
        # averaged over the same two steps as the total: they add up to it (up to the 4-digit rounding)
        assert entry["masked_lm_loss"] + entry["contrastive_loss"] == pytest.approx(entry["loss"], abs=2e-3)
    drawn = plot_training_curves(result.trainer.state.log_history, tmp_path / "curves.png")
    assert drawn["loss: masked_lm_loss"] == ([2.0, 4.0], [e["masked_lm_loss"] for e in logged])
    assert drawn["loss: contrastive_loss"] == ([2.0, 4.0], [e["contrastive_loss"] for e in logged])
