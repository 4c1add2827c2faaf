"""Training recipes: resume-from-checkpoint equality, 2-process data parallel on CPU, evaluation hooks, errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minivlm_hf.training.data_setup import RecipeData
from minivlm_hf.training.recipes import evaluate_stage, load_recipe_config, run_stage
from minivlm_hf.training.trainers import StopAtStepCallback, parameter_hash

REPO = Path(__file__).resolve().parents[1]


def tiny_config(cache_dir, **training) -> dict:
    """Oracle (ground-truth) regions and a 2-layer H32 fusion model: every fusion stage runs in about a second."""
    return {
        "seed": 0,
        "data": {"cache_dir": str(cache_dir), "num_train": 24, "num_validation": 8, "num_test": 8,
                 "nlvr_num_train": 8, "nlvr_num_validation": 2, "nlvr_num_test": 4, "features": "oracle",
                 "min_size": 96, "max_size": 128, "image_size": 128},
        "detector": {"backbone": "test_efficientnet", "bifpn_num_cells": 1, "image_size": 128, "num_regions": 10},
        "fusion": {"init_text": None, "with_vision": False, "num_hidden_layers": 2, "hidden_size": 32,
                   "num_attention_heads": 4, "intermediate_size": 64},
        "training": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1, "save_steps": 2,
                     "disable_tqdm": True, "warmup_steps": 0, "learning_rate": 1e-3, **training},
        "evaluation": {"num_candidates": 8, "batch_size": 16},
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scenes-cache")


def test_resume_from_checkpoint_is_exact(tmp_path, cache_dir):
    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=6, save_steps=3,
                                                  per_device_train_batch_size=6))
    data = RecipeData(config)
    full = run_stage("pretrain", config, tmp_path / "full", data=data, evaluate=False, progress=False)
    interrupted = run_stage("pretrain", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                            callbacks=(StopAtStepCallback(3),))
    assert interrupted.metrics["global_step"] == 3
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    assert parameter_hash(interrupted.model) != parameter_hash(full.model)
    resumed = run_stage("pretrain", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                        resume_from_checkpoint="auto")
    assert resumed.metrics["global_step"] == full.metrics["global_step"] == 6
    assert parameter_hash(resumed.model) == parameter_hash(full.model)
    losses = [h["loss"] for h in resumed.trainer.state.log_history if "loss" in h]
    assert losses == [h["loss"] for h in full.trainer.state.log_history if "loss" in h]


def test_every_stage_trains_evaluates_and_saves(tmp_path, cache_dir):
    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=2, save_strategy="no", eval_strategy="steps",
                                                  eval_steps=2, per_device_eval_batch_size=4))
    data = RecipeData(config)
    expected = {
        "detector": ("eval_map_50", "test_map_50"), "pretrain": ("eval_loss", None),
        "caption": ("eval_cider", "test_cider"), "vqa": ("eval_vqa_soft_accuracy", "test_accuracy"),
        "retrieval": ("eval_accuracy", "test_i2t_r1"), "nlvr": ("eval_accuracy", "test_accuracy"),
    }
    for stage, (eval_key, test_key) in expected.items():
        result = run_stage(stage, config, tmp_path / stage, data=data, progress=False)
        logged = {k for h in result.trainer.state.log_history for k in h}
        assert eval_key in logged, (stage, logged)
        saved = json.loads((tmp_path / stage / "metrics.json").read_text())
        assert saved["stage"] == stage and saved["global_step"] == 2
        if test_key:
            assert test_key in saved
        assert (tmp_path / stage / "model.safetensors").is_file() and (tmp_path / stage / "config.json").is_file()
    assert (tmp_path / "detector" / "preprocessor_config.json").is_file()
    assert (tmp_path / "vqa" / "processor_config.json").is_file()


def test_two_process_data_parallel_cpu(tmp_path, cache_dir):
    config_path = tmp_path / "ddp.json"
    config = tiny_config(cache_dir, max_steps=3, save_strategy="no", per_device_train_batch_size=4)
    config["debug"] = {"param_hash": True}
    config_path.write_text(json.dumps(config))
    # build the cached scenes once, so the two ranks only read them
    RecipeData(load_recipe_config(config_path)).scenes  # noqa: B018
    out = tmp_path / "ddp_out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 500),
               "-m", "minivlm_hf.cli", "train", "vqa", "--config", str(config_path), "--output-dir", str(out),
               "--no-eval"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads((out / f"param_hash_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert [r["global_step"] for r in records] == [3, 3]
    assert records[0]["pid"] != records[1]["pid"]
    assert records[0]["hash"] == records[1]["hash"]
    assert records[0]["initial_hash"] == records[1]["initial_hash"] != records[0]["hash"]  # trained, in sync
    assert (out / "model.safetensors").is_file()


def test_cli_help_and_config_errors(tmp_path, capsys):
    from minivlm_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "training.*" in capsys.readouterr().out
    missing = tmp_path / "nope.json"
    assert main(["train", "vqa", "--config", str(missing), "--output-dir", str(tmp_path / "o")]) == 2
    assert "nope.json" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["train", "vqa", "--config", str(broken), "--output-dir", str(tmp_path / "o")]) == 2
    assert "broken.json" in capsys.readouterr().err
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"trainer": {}}))
    assert main(["train", "vqa", "--config", str(unknown), "--output-dir", str(tmp_path / "o")]) == 2
    assert "unknown top-level key 'trainer'; did you mean 'training'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--help"])


def test_missing_detector_and_init_errors(tmp_path, cache_dir):
    config = load_recipe_config(None, tiny_config(cache_dir))
    config["data"]["features"] = "detector"
    with pytest.raises(ValueError, match="data.detector is not set"):
        run_stage("vqa", config, tmp_path / "a", progress=False)
    config["data"]["detector"] = str(tmp_path / "no_detector")
    with pytest.raises(FileNotFoundError, match="no_detector"):
        run_stage("vqa", config, tmp_path / "b", progress=False)
    config = load_recipe_config(None, tiny_config(cache_dir))
    config["fusion"]["init_from"] = str(tmp_path / "no_pretrain")
    with pytest.raises(FileNotFoundError, match="no_pretrain"):
        run_stage("vqa", config, tmp_path / "c", progress=False)
    config = load_recipe_config(None, tiny_config(cache_dir, no_such_argument=1))
    with pytest.raises(ValueError, match="no_such_argument"):
        run_stage("vqa", config, tmp_path / "d", progress=False)


def test_corrupt_features_dir_is_named(tmp_path, cache_dir):
    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=1, save_strategy="no"))
    config["data"]["features_dir"] = str(tmp_path / "features")
    run_stage("vqa", config, tmp_path / "first", progress=False, evaluate=False)
    table = tmp_path / "features" / "scenes_train"
    assert table.is_dir()
    for arrow in table.glob("*.arrow"):
        arrow.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="scenes_train"):
        run_stage("vqa", config, tmp_path / "second", progress=False, evaluate=False)


def test_bf16_trained_model_computes_like_its_reloaded_copy(tmp_path, cache_dir):
    """After bf16 autocast training the returned model is plain fp32 again (accelerate's autocast wrapper removed),
    so it equals the saved + reloaded model; the quality numbers of the demo come from the reloaded one."""
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering
    from minivlm_hf.training.recipes import build_collators, stage_datasets

    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=2, save_strategy="no", bf16=True))
    data = RecipeData(config)
    result = run_stage("vqa", config, tmp_path / "vqa", data=data, evaluate=False, progress=False)
    reloaded = MiniVLMForQuestionAnswering.from_pretrained(tmp_path / "vqa").eval()
    model = result.model.eval()
    rows = stage_datasets("vqa", data, "test")
    batch = build_collators("vqa", config, data, model, "test")([rows[i] for i in range(4)])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, rtol=0, atol=1e-6)


def test_fusion_training_attention_is_eager_on_cpu_and_restored(tmp_path, cache_dir):
    """Fusion stages train with eager attention on the CPU (its flash-attention backward is slow there) and the
    returned / saved model is back on its own implementation; an explicit choice is honoured, a bad one named."""
    from transformers import TrainerCallback

    from minivlm_hf.training.recipes import training_attention

    assert training_attention({"fusion": {}}, use_cpu=True) == "eager"
    assert training_attention({"fusion": {"train_attn_implementation": "auto"}}, use_cpu=False) is None
    assert training_attention({"fusion": {"train_attn_implementation": "sdpa"}}, use_cpu=True) == "sdpa"
    assert training_attention({"fusion": {"train_attn_implementation": None}}, use_cpu=True) is None
    with pytest.raises(ValueError, match="train_attn_implementation"):
        training_attention({"fusion": {"train_attn_implementation": "flash"}}, use_cpu=True)

    seen = []

    class RecordAttention(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append(model.config._attn_implementation)

    # With the TEE inside (it has no attention and stays on its own implementation): a real detector, oracle off.
    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=2, save_strategy="no"))
    config["data"]["features"] = "detector"
    config["fusion"]["with_vision"] = True
    data = RecipeData(config)
    detector = run_stage("detector", {**config, "training": {**config["training"], "max_steps": 1}},
                         tmp_path / "detector", data=data, evaluate=False, progress=False)
    config["data"]["detector"] = str(tmp_path / "detector")
    result = run_stage("vqa", config, tmp_path / "vqa", data=RecipeData(config), evaluate=False, progress=False,
                       callbacks=(RecordAttention(),))
    assert detector.model is not None and result.model.minivlm.vision_model is not None
    assert seen == ["eager", "eager"]
    assert result.model.config._attn_implementation == "sdpa"
    assert "eager" not in (tmp_path / "vqa" / "config.json").read_text()


def test_trainer_flos_count_parameters_once(tmp_path):
    """The Trainer's per-step FLOP estimate (6 × input size × parameters, excluding embeddings) is the stock formula,
    with the parameters counted on the first step only (counting them every step is a visible share of a CPU step)."""
    from transformers import Trainer, TrainingArguments

    from fusion_utils import tiny_fusion_config
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering
    from minivlm_hf.training.trainers import FusionTrainer

    model = MiniVLMForQuestionAnswering(tiny_fusion_config())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = FusionTrainer(model=model, args=args)
    inputs = {"input_ids": torch.ones(3, 7, dtype=torch.long)}
    counted = []
    count = model.num_parameters
    model.num_parameters = lambda **kw: counted.append(kw) or count(**kw)
    expected = Trainer.floating_point_ops(trainer, inputs)
    assert expected == 6 * 21 * count(exclude_embeddings=True) > 0
    counted.clear()
    assert [trainer.floating_point_ops(inputs) for _ in range(3)] == [expected] * 3
    assert counted == [{"exclude_embeddings": True}]
    assert trainer.floating_point_ops({"pixel_values": torch.ones(1)}) == 0


def test_a_task_starts_from_another_tasks_checkpoint(tmp_path, cache_dir):
    """fusion.init_from another task (the demo chains caption → VQA → retrieval → NLVR): the shared transformer
    weights carry over, a head of another shape is re-initialised, and VQA's answer labels stay with VQA."""
    from minivlm_hf.training.recipes import build_fusion_model

    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=1, save_strategy="no"))
    data = RecipeData(config)
    vqa = run_stage("vqa", config, tmp_path / "vqa", data=data, evaluate=False, progress=False).model
    config["fusion"]["init_from"] = str(tmp_path / "vqa")
    for stage in ("nlvr", "retrieval"):
        model = build_fusion_model(stage, config, data)
        assert model.config.num_labels == 2 and len(model.config.id2label) == 2
        torch.testing.assert_close(model.minivlm.encoder.layer[1].output.dense.weight,
                                   vqa.minivlm.encoder.layer[1].output.dense.weight, rtol=0, atol=0)


def test_bf16_evaluation(tmp_path, cache_dir):
    """evaluation.bf16 runs the evaluation under bf16 autocast."""
    from unittest import mock

    from minivlm_hf.training import recipes

    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=2, save_strategy="no"))
    plain = RecipeData(config)
    config["evaluation"]["bf16"] = True
    result = run_stage("nlvr", config, tmp_path / "nlvr", data=plain, evaluate=False, progress=False)
    seen = []
    original = recipes._evaluate_stage

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    with mock.patch.object(recipes, "_evaluate_stage", spy):
        metrics, _ = recipes.evaluate_stage("nlvr", result.model, config, plain, progress=False)
        config["evaluation"]["bf16"] = False
        recipes.evaluate_stage("nlvr", result.model, config, plain, progress=False)
    assert seen == [True, False] and 0.0 <= metrics["accuracy"] <= 1.0


def test_saved_models_decode_with_the_cache_after_training_turned_it_off(tmp_path, cache_dir):
    """The Trainer sets config.use_cache to its training value (False); a trained stage's saved model, and a caption
    model fine-tuned from it (whose generation_config is built from that config), must decode with the cache."""
    import json

    from transformers import GenerationConfig

    config = load_recipe_config(None, tiny_config(cache_dir, max_steps=1, save_strategy="no"))
    data = RecipeData(config)
    pretrain = run_stage("pretrain", config, tmp_path / "pretrain", data=data, evaluate=False, progress=False)
    assert pretrain.trainer.args.use_cache is False  # what the Trainer imposed while training
    assert json.loads((tmp_path / "pretrain" / "config.json").read_text())["use_cache"] is True
    config["fusion"]["init_from"] = str(tmp_path / "pretrain")
    run_stage("caption", config, tmp_path / "caption", data=data, evaluate=False, progress=False)
    assert json.loads((tmp_path / "caption" / "config.json").read_text())["use_cache"] is True
    assert GenerationConfig.from_pretrained(tmp_path / "caption").use_cache is True


def test_caption_recipe_saves_its_decoding_and_retrieval_ranks_with_the_captioner(tmp_path, cache_dir):
    """The caption stage saves its evaluated decoding as the model's generation_config; the retrieval evaluation
    also ranks with the saved captioner's PMI (``evaluation.caption_model``)."""
    from transformers import GenerationConfig

    config = tiny_config(cache_dir, max_steps=2, save_strategy="no", eval_strategy="steps", eval_steps=2,
                         per_device_eval_batch_size=4)
    config["evaluation"].update(num_beams=2, length_penalty=2.0, max_new_tokens=6)
    config = load_recipe_config(None, config)
    data = RecipeData(config)
    result = run_stage("caption", config, tmp_path / "caption", data=data, progress=False)
    assert any("eval_loss" in h for h in result.trainer.state.log_history) and "test_cider" in result.metrics
    saved = GenerationConfig.from_pretrained(tmp_path / "caption")
    assert (saved.num_beams, saved.length_penalty, saved.max_new_tokens) == (2, 2.0, 6)

    result = run_stage("retrieval", config, tmp_path / "retrieval", data=data, progress=False)
    losses = [h["loss"] for h in result.trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert 0.0 <= result.metrics["test_i2t_r1"] <= 1.0
    assert not any("sinkhorn" in key for key in result.metrics)  # off by default
    ranked = load_recipe_config(None, {**config, "evaluation": {**config["evaluation"], "caption_pmi_weight": 1.0,
                                                                "caption_model": str(tmp_path / "caption"),
                                                                "retrieval_sinkhorn": True}})
    metrics, _ = evaluate_stage("retrieval", result.model, ranked, data, progress=False)
    assert 0.0 <= metrics["caption_pmi_i2t_r1"] <= 1.0 and metrics["caption_pmi_weight"] == 1.0
    for prefix in ("sinkhorn_", "caption_pmi_sinkhorn_"):
        assert 0.0 <= metrics[f"{prefix}i2t_r1"] <= metrics[f"{prefix}i2t_r10"] <= 1.0
    assert metrics["i2t_r1"] == pytest.approx(result.metrics["test_i2t_r1"])
