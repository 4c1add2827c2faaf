"""Hostile folders and careless inputs: push publishes only the folder's own regular files; recipe configs are
validated key by key; MiniVLMConfig refuses a foreign vision config and wrong field types; feature TSVs with NaN / inf
are refused naming the file and line."""

import json
import os
import shutil

import numpy as np
import pytest

from minivlm_hf.cli import main as cli_main
from minivlm_hf.hub.init_checkpoint import init_checkpoint
from minivlm_hf.hub.push import PushError, check_checkpoint


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory):
    return init_checkpoint("minivlm-tee-tiny", tmp_path_factory.mktemp("push") / "tee").output


@pytest.fixture()
def folder(detector_folder, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(detector_folder, target)
    return target


def _shard_out(folder, tmp_path, shard_name):
    """Move the weights outside and list them in an index under `shard_name`."""
    from safetensors import safe_open

    secret = tmp_path / "outside" / "secret.safetensors"
    secret.parent.mkdir()
    shutil.move(folder / "model.safetensors", secret)
    with safe_open(str(secret), "pt") as f:
        keys = list(f.keys())
    name = str(secret) if shard_name is None else shard_name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, name)}))
    return secret


@pytest.mark.parametrize("shard", [None, "../outside/secret.safetensors"])
def test_push_refuses_shards_outside_the_folder(folder, tmp_path, capsys, shard):
    secret = _shard_out(folder, tmp_path, shard)
    listed = str(secret) if shard is None else shard
    with pytest.raises(PushError, match="is not a file inside the folder"):
        check_checkpoint(folder)
    assert cli_main(["push", str(folder), "user/repo"]) == 2
    err = capsys.readouterr().err
    assert listed in err and "refusing to push" in err and len(err.strip().splitlines()) == 1


def test_push_refuses_links_out_of_the_folder(folder, tmp_path):
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (folder / "README.md").unlink()
    os.symlink(secret, folder / "README.md")
    with pytest.raises(PushError, match=r"README.md is a link to .*id_rsa, outside the folder"):
        check_checkpoint(folder)
    (folder / "README.md").unlink()
    weights = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", weights)
    os.symlink(weights, folder / "model.safetensors")
    with pytest.raises(PushError, match="model.safetensors is a link to .*outside the folder"):
        check_checkpoint(folder)
    (folder / "model.safetensors").unlink()
    shutil.move(weights, folder / "model.safetensors")
    (folder / "metrics.json").mkdir()  # not a regular file
    with pytest.raises(PushError, match="metrics.json is not a regular file"):
        check_checkpoint(folder)
    (folder / "metrics.json").rmdir()
    inner = folder / "cards"
    inner.mkdir()
    (inner / "card.md").write_text("# a card")
    os.symlink(inner / "card.md", folder / "README.md")  # a link that stays inside is the folder's own file
    assert check_checkpoint(folder).architecture == "TEEForObjectDetection"


# ------------------------------------------------------------------------------------------------------------------
# recipe config
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("user, message", [
    ({"collator": {"mask_probabilty": 0.9}}, "unknown key 'collator.mask_probabilty'; did you mean collator.mask_probability?"),
    ({"trainer": {}}, "unknown top-level key 'trainer'; did you mean 'training'?"),
    ({"training": {"max_steps": "10"}}, "training.max_steps must be an integer, got '10' (string)"),
    ({"training": {"lr_scheduler_type": "cosin"}}, "training.lr_scheduler_type must be one of 'linear', 'cosine'"),
    ({"training": {"learnig_rate": 1e-4}}, "did you mean training.learning_rate?"),
    ({"fusion": {"hidden_size": "384"}}, "fusion.hidden_size must be an integer, got '384' (string)"),
    ({"detector": {"num_regions": 1.5}}, "detector.num_regions must be an integer, got 1.5 (number)"),
    ({"data": {"features": "oracel"}}, "data.features must be one of ['detector', 'oracle'], got 'oracel'"),
    ({"collator": {"mask_probability": 1.5}}, "collator.mask_probability must be in [0, 1], got 1.5"),
    ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size must be at least 1, got 0"),
    ({"seed": "0"}, "seed must be an integer, got '0' (string)"),
    ({"collator": [1]}, "collator must be an object"),
    ({"debug": {"param_hash": "yes"}}, "debug.param_hash must be a boolean"),
])
def test_recipe_config_errors_name_key_type_and_file(tmp_path, capsys, user, message):
    from minivlm_hf.training.recipes import load_recipe_config

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(user))
    with pytest.raises(ValueError) as info:
        load_recipe_config(path)
    assert str(info.value).startswith(f"recipe config {path}: ") and message in str(info.value)
    assert cli_main(["train", "vqa", "--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_valid_recipe_configs_and_set_overrides(tmp_path, capsys):
    from minivlm_hf.training.recipes import load_recipe_config

    path = tmp_path / "ok.json"
    path.write_text(json.dumps({
        "training": {"bf16": "auto", "report_to": "none", "lr_scheduler_type": "cosine", "label_names": ["labels"]},
        "fusion": {"init_text": None, "with_vision": False, "num_hidden_layers": 2, "hidden_act": "gelu"},
        "data": {"features": "oracle", "detector": None, "tag_threshold": 0},
        "evaluation": {"limit": None, "bf16": "auto"}, "detector": {"anchor_sizes": [8, 16]}}))
    config = load_recipe_config(path)
    assert config["fusion"]["num_hidden_layers"] == 2 and config["training"]["bf16"] == "auto"
    assert cli_main(["train", "vqa", "--output-dir", str(tmp_path / "o"), "--set", "collator.mask_probabilty=0.3"]) == 2
    assert "command-line overrides (--set and flags): unknown key 'collator.mask_probabilty'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--batch-size", "0"], ["--max-steps", "-1"], ["--learning-rate", "0"],
                                  ["--learning-rate", "inf"], ["--seed", "x"]])
def test_train_numbers_fail_at_parse_time(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli_main(["train", "vqa", "--output-dir", str(tmp_path / "o"), *argv])
    assert info.value.code == 2
    assert f"argument {argv[0]}: expected" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# MiniVLMConfig, feature TSV
# ------------------------------------------------------------------------------------------------------------------
def test_minivlm_config_refuses_foreign_vision_configs_and_wrong_types():
    from transformers import BertConfig

    from minivlm_hf import MiniVLMConfig
    from tee_utils import tiny_tee_config

    with pytest.raises(ValueError, match="vision_config: must be a TEEConfig .* got dict with model_type 'bert'"):
        MiniVLMConfig(vision_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="got BertConfig with model_type 'bert'"):
        MiniVLMConfig(vision_config=BertConfig())
    with pytest.raises(ValueError, match=r"MiniVLMConfig.hidden_size: must be an integer, got '384' \(str\)"):
        MiniVLMConfig(hidden_size="384")
    with pytest.raises(ValueError, match="MiniVLMConfig.tag_score_threshold: must be a number"):
        MiniVLMConfig(tag_score_threshold="high")
    with pytest.raises(ValueError, match="MiniVLMConfig.num_hidden_layers: must be an integer, got True"):
        MiniVLMConfig(num_hidden_layers=True)
    tee = tiny_tee_config()
    config = MiniVLMConfig(vision_config=tee.to_dict(), region_feature_size=tee.box_head_dim)
    assert config.vision_config.model_type == "minivlm_tee"
    assert MiniVLMConfig(vision_config=tee, region_feature_size=tee.box_head_dim).vision_config.num_regions == 10


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_feature_tsv_with_non_finite_values_names_file_and_line(tmp_path, bad):
    from minivlm_hf.data.formats import read_feature_tsv, write_feature_tsv

    rows = [(str(i), np.ones((2, 4), np.float32), np.full((2, 4), 0.5, np.float32)) for i in range(3)]
    path = tmp_path / "feats.tsv"
    write_feature_tsv(path, rows, feature_dim=4)
    assert sorted(read_feature_tsv(path, feature_dim=4)) == ["0", "1", "2"]
    rows[2][1][1, 3] = bad
    write_feature_tsv(path, rows, feature_dim=4)
    with pytest.raises(ValueError, match=rf"feats.tsv: line 3 \(image 2\): non-finite value .* in box 1, column 3 \(feature\)"):
        read_feature_tsv(path, feature_dim=4)


def test_demo_and_parity_loader_run_folder_code_only_when_asked(tmp_path):
    """load_with_auto_class (the demo's reload check and `benchmark --part parity`) uses the installed classes unless
    trust_remote_code is given: code shipped in a model folder never runs by default."""
    import minivlm_hf  # noqa: F401  (registration: save_pretrained ships the code and writes auto_map)
    from minivlm_hf.modeling.configuration_minivlm import MiniVLMConfig
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForImageTextRetrieval
    from minivlm_hf.training.demo import load_with_auto_class

    folder = tmp_path / "retrieval"
    config = MiniVLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                           region_feature_size=16, max_regions=4)
    MiniVLMForImageTextRetrieval(config).save_pretrained(folder)
    assert "AutoModel" in json.loads((folder / "config.json").read_text())["auto_map"]
    marker = tmp_path / "ran.txt"
    (folder / "modeling_minivlm_tasks.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('remote code ran')\n"
        "raise ImportError('remote code ran')\n")
    model, how = load_with_auto_class("retrieval", folder)
    assert type(model).__module__.startswith("minivlm_hf.") and "config.architectures" in how
    assert not marker.exists()
    with pytest.raises(Exception, match="remote code ran"):
        load_with_auto_class("retrieval", folder, trust_remote_code=True)
    assert marker.read_text() == "remote code ran"
    from minivlm_hf.cli import build_parser

    args = build_parser().parse_args(["benchmark", "--part", "parity", "--model-dir", str(tmp_path)])
    assert args.trust_remote_code is False


def test_processor_refuses_an_empty_text_list_and_bad_vqa_post_processing():
    import torch

    from tee_utils import tiny_image_processor

    from minivlm_hf.convert import load_offline_tokenizer
    from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor

    processor = MiniVLMProcessor(tiny_image_processor(), load_offline_tokenizer())
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(text=[])
    id2label = {0: "a", 1: "b", 2: "c"}
    for top_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            processor.post_process_vqa(torch.randn(2, 3), id2label, top_k=top_k)
    with pytest.raises(ValueError, match="logits contain NaN or inf"):
        processor.post_process_vqa(torch.full((1, 3), float("nan")), id2label)
    assert [a["answer"] for a in processor.post_process_vqa(torch.tensor([[0.0, 2.0, 1.0]]), id2label, top_k=2)[0]] == [
        "b", "c"]
