"""Publishing and pulling MiniVLM checkpoints (`minivlm-hf init` / `minivlm-hf push`) against the loopback Hub.

Every Hub call goes to tests/hub_server.py (conftest.py points HF_ENDPOINT at it). Pulls run in FRESH subprocesses
(tests/hub_pull_check.py) with an empty HF_HOME, once with the package installed (no trust_remote_code) and once
with `import minivlm_hf` blocked (trust_remote_code=True); weights and outputs must equal the pushed model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_pull_check import model_outputs, state_dict_hash
from hub_server import start_server
from minivlm_hf.cli import main as cli
from minivlm_hf.data.vocab import SYNTHETIC_ANSWERS

TESTS_DIR = Path(__file__).parent
RECORD_FILES = {"minivlm_init.json", "metrics.json", "trainer_state.json"}  # the folder's, not the model's


def _repo(name: str) -> str:
    return f"user/{name}-{uuid.uuid4().hex[:6]}"


def _folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


def _push(capsys, *args) -> tuple[int, dict | None, str]:
    """Run `minivlm-hf push ...` in-process; returns (exit code, JSON summary or None, stderr)."""
    capsys.readouterr()
    code = cli(["push", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints built with `minivlm-hf init`: detector, captioning, VQA (with metrics + trainer state)."""
    from minivlm_hf.hub.init_checkpoint import init_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    folders = {
        "detector": init_checkpoint("minivlm-tee-tiny", root / "detector").output,
        "caption": init_checkpoint("minivlm-tiny", root / "caption", task="caption").output,
        "vqa": init_checkpoint("minivlm-tiny", root / "vqa", task="vqa").output,
    }
    (folders["vqa"] / "metrics.json").write_text(json.dumps({"accuracy": 0.625, "accuracy_color": 0.5, "eval_runtime": 3.2}))
    (folders["vqa"] / "trainer_state.json").write_text(
        json.dumps({"global_step": 40, "epoch": 2.0, "train_batch_size": 8, "log_history": [{"loss": 1.2345, "step": 40}]})
    )
    return folders


@pytest.fixture(scope="module")
def fixed_inputs(checkpoints, tmp_path_factory):
    """A fixed image (PNG) and fixed model inputs (torch file), plus the pushed models' reference values."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor

    from minivlm_hf.modeling.modeling_minivlm_captioning import MiniVLMForImageCaptioning
    from minivlm_hf.modeling.modeling_minivlm_tasks import MiniVLMForQuestionAnswering
    from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection

    root = tmp_path_factory.mktemp("fixed")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    pixels[10:30, 20:44] = (220, 30, 30)
    Image.fromarray(pixels).save(root / "image.png")
    image = Image.open(root / "image.png").convert("RGB")

    inputs = {}
    det = AutoImageProcessor.from_pretrained(checkpoints["detector"])(images=image, return_tensors="pt")
    inputs.update(det_pixel_values=det["pixel_values"], det_pixel_mask=det["pixel_mask"])
    for kind, text in (("cap", ""), ("vqa", "what colour is the star?")):
        folder = checkpoints["caption" if kind == "cap" else "vqa"]
        enc = AutoProcessor.from_pretrained(folder)(images=image, text=text)
        for k in ("input_ids", "attention_mask", "pixel_values", "pixel_mask"):
            inputs[f"{kind}_{k}"] = enc[k]
    torch.save(inputs, root / "inputs.pt")

    references = {}
    for kind, cls in (
        ("detector", TEEForObjectDetection),
        ("caption", MiniVLMForImageCaptioning),
        ("vqa", MiniVLMForQuestionAnswering),
    ):
        model = cls.from_pretrained(checkpoints[kind]).eval()
        references[kind] = {"hash": state_dict_hash(model), "outputs": model_outputs(kind, model, inputs)}
    return {"image": root / "image.png", "inputs": root / "inputs.pt", "references": references}


def _pull(mode: str, repos: dict, fixed: dict, tmp_path: Path) -> tuple[dict, dict]:
    """Run tests/hub_pull_check.py in a fresh process with an empty HF_HOME, cwd outside the repository."""
    work = tmp_path / f"pull-{mode}"
    work.mkdir()
    spec = {
        "mode": mode,
        "image": str(fixed["image"]),
        "inputs": str(fixed["inputs"]),
        "repos": repos,
        "out_json": str(work / "results.json"),
        "out_tensors": str(work / "outputs.pt"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_XET="1", PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, str(TESTS_DIR / "hub_pull_check.py"), str(work / "spec.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{mode} pull failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads((work / "results.json").read_text()), torch.load(work / "outputs.pt", weights_only=True)


def _assert_same_outputs(tensors: dict, references: dict, mode: str):
    for kind, ref in references.items():
        for key, expected in ref["outputs"].items():
            got = tensors[f"{kind}.{key}"]
            assert got.shape == expected.shape, (mode, kind, key)
            if expected.dtype in (torch.long, torch.int64, torch.bool):
                assert torch.equal(got, expected), (mode, kind, key)
            else:
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{mode} {kind}.{key}")


# ----------------------------------------------------------------------------------------------------------------


def test_push_then_pull_in_fresh_processes(hub_server, checkpoints, fixed_inputs, tmp_path, capsys):
    """Push the three tiny checkpoints (inline, LFS, all-LFS uploads), then pull each at its pinned commit in two
    fresh processes: package installed (no trust_remote_code) and package blocked (trust_remote_code=True)."""
    repos = {}
    before = {kind: _folder_hash(folder) for kind, folder in checkpoints.items()}
    for kind, lfs_threshold in (("detector", None), ("caption", 10 * 1024 * 1024), ("vqa", 0)):
        repo = _repo(f"tiny-{kind}")
        hub_server.lfs_threshold = lfs_threshold  # None: every file inline; default: *.safetensors LFS; 0: all LFS
        try:
            code, summary, err = _push(capsys, checkpoints[kind], repo)
        finally:
            hub_server.lfs_threshold = 10 * 1024 * 1024
        assert code == 0, err
        assert summary["commit"] == hub_server.history(repo)[-1]
        repos[kind] = {"repo": repo, "sha": summary["commit"]}
    assert {kind: _folder_hash(folder) for kind, folder in checkpoints.items()} == before  # folders untouched
    assert hub_server.errors == []

    # What was uploaded, how.
    lfs_puts = [p for m, p in hub_server.requests if m == "PUT" and p.startswith("/_lfs/")]
    assert len(lfs_puts) >= 2  # caption weights + (at least) the VQA files
    files = hub_server.list_files(repos["caption"]["repo"])
    for name in (
        "model.safetensors", "config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json", "README.md", "modeling_minivlm_captioning.py", "modeling_minivlm.py",
        "modeling_minivlm_tee.py", "configuration_minivlm.py", "processing_minivlm.py", "image_processing_minivlm.py",
        "image_processing_pil_minivlm.py", "remote_code_minivlm.py",
    ):  # fmt: skip
        assert name in files, name
    config = json.loads(hub_server.read_file(repos["caption"]["repo"], "config.json"))
    assert config["auto_map"] == {
        "AutoConfig": "configuration_minivlm.MiniVLMConfig",
        "AutoModel": "modeling_minivlm.MiniVLMModel",
        "AutoModelForImageTextToText": "modeling_minivlm_captioning.MiniVLMForImageCaptioning",
        "AutoProcessor": "processing_minivlm.MiniVLMProcessor",
        "AutoImageProcessor": {
            "torchvision": "image_processing_minivlm.MiniVLMImageProcessor",
            "pil": "image_processing_pil_minivlm.MiniVLMImageProcessorPil",
        },
    }
    vqa_config = json.loads(hub_server.read_file(repos["vqa"]["repo"], "config.json"))
    assert vqa_config["custom_pipelines"] == {
        "visual-question-answering": {
            "impl": "pipeline_minivlm_vqa.MiniVLMVQAPipeline",
            "pt": ["AutoModelForVisualQuestionAnswering"],
            "type": "multimodal",
        }
    }
    assert vqa_config["auto_map"]["AutoModelForVisualQuestionAnswering"].endswith("MiniVLMForQuestionAnswering")
    detector_pre = json.loads(hub_server.read_file(repos["detector"]["repo"], "preprocessor_config.json"))
    assert set(detector_pre["auto_map"]["AutoImageProcessor"]) == {"torchvision", "pil"}

    # The model card: metadata, metrics from the last evaluation, training record, parameter table, usage.
    card = hub_server.read_file(repos["vqa"]["repo"], "README.md").decode()
    head = card.split("---")[1]
    for line in ("library_name: transformers", "pipeline_tag: visual-question-answering", "license: mit", "- minivlm"):
        assert line in head, line
    assert "model-index:" in head and "type: accuracy" in head and "value: 0.625" in head
    assert "eval_runtime" not in card and "{{" not in card
    assert "Trained for 40 steps" in card and "1.2345" in card
    assert "| `minivlm.encoder` |" in card and "| `classifier` |" in card
    assert f'pipeline("visual-question-answering", model="{repos["vqa"]["repo"]}", trust_remote_code=True)' in card
    assert f'pipeline("minivlm-vqa", model="{repos["vqa"]["repo"]}")' in card
    det_card = hub_server.read_file(repos["detector"]["repo"], "README.md").decode()
    assert "pipeline_tag: object-detection" in det_card and "TEE backbone" in det_card

    # Fresh processes.
    refs = fixed_inputs["references"]
    package, package_tensors = _pull("package", repos, fixed_inputs, tmp_path)
    remote, remote_tensors = _pull("remote", repos, fixed_inputs, tmp_path)

    for kind in ("detector", "caption", "vqa"):
        assert package[kind]["hash"] == refs[kind]["hash"], kind
        assert remote[kind]["hash"] == refs[kind]["hash"], kind
        assert package[kind]["model_class"].startswith("minivlm_hf.modeling."), package[kind]
        assert remote[kind]["model_class"].startswith("transformers_modules."), remote[kind]
        assert package[kind]["pipeline_output"] == remote[kind]["pipeline_output"], kind
    _assert_same_outputs(package_tensors, refs, "package")
    _assert_same_outputs(remote_tensors, refs, "remote")

    for results in (package, remote):
        assert results["detector"]["image_processor_class"].endswith(".MiniVLMImageProcessor")
        assert results["detector"]["pil_processor_class"].endswith(".MiniVLMImageProcessorPil")
        assert results["detector"]["pil_shape_matches"] and results["detector"]["pixels_match_fixed_input"]
        assert results["detector"]["pipeline_class"].endswith("ObjectDetectionPipeline")
        assert results["caption"]["processor_class"].endswith(".MiniVLMProcessor")  # not a tokenizer
        assert results["caption"]["processor_image_processor_class"].endswith(".MiniVLMImageProcessor")
        assert results["caption"]["pil_processor_class"].endswith(".MiniVLMImageProcessorPil")
        assert results["caption"]["pipeline_class"].endswith("ImageTextToTextPipeline")
        assert isinstance(results["caption"]["pipeline_output"], str)
        assert results["vqa"]["processor_class"].endswith(".MiniVLMProcessor")
        assert results["vqa"]["pipeline_class"].endswith(".MiniVLMVQAPipeline")
        assert len(results["vqa"]["pipeline_output"]) == 2 and results["vqa"]["id2label_size"] == len(SYNTHETIC_ANSWERS)
    assert remote["minivlm_hf_imported"] == []
    assert remote["vqa"]["pipeline_class"].startswith("transformers_modules.")
    assert remote["caption"]["pil_processor_class"].startswith("transformers_modules.")
    assert remote["vqa_explicit_remote_task_class"].endswith(".MiniVLMVQAPipeline")


def test_python_push_uploads_what_the_cli_uploads(hub_server, checkpoints, capsys):
    """model.push_to_hub + processor.push_to_hub publish every file the CLI publishes (same auto_map and code)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoModelForObjectDetection, AutoProcessor

    cases = (
        ("caption", AutoModelForImageTextToText, AutoProcessor),
        ("detector", AutoModelForObjectDetection, AutoImageProcessor),
    )
    for kind, model_auto, processor_auto in cases:
        folder = checkpoints[kind]
        cli_repo, py_repo = _repo(f"cli-{kind}"), _repo(f"py-{kind}")
        code, _, err = _push(capsys, folder, cli_repo)
        assert code == 0, err
        model = model_auto.from_pretrained(folder)
        processor = processor_auto.from_pretrained(folder)
        model.push_to_hub(py_repo)
        processor.push_to_hub(py_repo)
        cli_files = set(hub_server.list_files(cli_repo)) - RECORD_FILES
        py_files = set(hub_server.list_files(py_repo))
        assert cli_files - py_files == set(), kind
        for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
            if name in cli_files:
                cli_json = json.loads(hub_server.read_file(cli_repo, name))
                py_json = json.loads(hub_server.read_file(py_repo, name))
                assert py_json.get("auto_map") == cli_json.get("auto_map"), (kind, name)
                if name == "processor_config.json":
                    assert py_json["image_processor"]["auto_map"] == cli_json["image_processor"]["auto_map"]
        for name in cli_files:
            if name.endswith(".py") or name == "model.safetensors":
                assert hub_server.read_file(py_repo, name) == hub_server.read_file(cli_repo, name), name


def test_revision_branch_and_pull_request(hub_server, checkpoints, tmp_path, capsys):
    folder = tmp_path / "caption"
    shutil.copytree(checkpoints["caption"], folder)
    repo = _repo("tiny-branches")
    code, main_summary, err = _push(capsys, folder, repo)
    assert code == 0 and main_summary["changed"], err
    code, again, err = _push(capsys, folder, repo)  # same files: no empty commit
    assert code == 0 and not again["changed"] and again["commit"] == main_summary["commit"]
    assert "nothing to commit" in err

    # A new evaluation changes the model card: commit it to a branch, then propose it as a PR.
    (folder / "metrics.json").write_text(json.dumps({"cider": 0.42}))
    code, summary, err = _push(capsys, folder, repo, "--revision", "dev", "--commit-message", "to dev")
    assert code == 0 and summary["changed"], err
    assert summary["revision"] == "dev" and summary["pr_url"] is None
    assert hub_server.history(repo, revision="dev")[-1] == summary["commit"]
    assert hub_server.history(repo, revision="main")[-1] == main_summary["commit"]  # main untouched
    assert b"value: 0.42" in hub_server.read_file(repo, "README.md", revision="dev")
    assert "metrics.json" in hub_server.list_files(repo, revision="dev")

    code, summary, err = _push(capsys, folder, repo, "--create-pr")
    assert code == 0, err
    assert summary["pr_url"] and "/discussions/" in summary["pr_url"]
    pr_ref = "refs/pr/" + summary["pr_url"].rstrip("/").split("/")[-1]
    assert hub_server.history(repo, revision=pr_ref)[-1] == summary["commit"]
    assert "metrics.json" in hub_server.list_files(repo, revision=pr_ref)
    assert hub_server.history(repo, revision="main")[-1] == main_summary["commit"]


def test_refusals_happen_before_any_upload(hub_server, checkpoints, tmp_path, capsys):
    hub_server.clear_requests()
    # Repo id without a namespace.
    code, _, err = _push(capsys, checkpoints["caption"], "tiny")
    assert code == 2 and "has no namespace" in err and "'namespace/name'" in err
    # A folder without weights.
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copy(checkpoints["caption"] / "config.json", empty)
    code, _, err = _push(capsys, empty, "user/no-weights")
    assert code == 2 and "no model weights" in err
    # Pickled weights only.
    (empty / "pytorch_model.bin").write_bytes(b"not really")
    code, _, err = _push(capsys, empty, "user/no-weights")
    assert code == 2 and "pytorch_model.bin" in err and "safetensors" in err
    # Config and weights that disagree (found from the safetensors header, before uploading).
    mismatched = tmp_path / "mismatched"
    shutil.copytree(checkpoints["caption"], mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["intermediate_size"] = 48
    (mismatched / "config.json").write_text(json.dumps(config))
    code, _, err = _push(capsys, mismatched, "user/mismatched")
    assert code == 2 and "do not match" in err and "intermediate.dense.weight" in err and "[48, 32]" in err
    # Weights of another model.
    other = tmp_path / "other-weights"
    shutil.copytree(checkpoints["caption"], other)
    shutil.copy(checkpoints["detector"] / "model.safetensors", other / "model.safetensors")
    code, _, err = _push(capsys, other, "user/other")
    assert code == 2 and "missing minivlm.embeddings.word_embeddings.weight" in err and "unexpected tee." in err
    assert hub_server.requests == []  # nothing reached the Hub
    for repo in ("user/no-weights", "user/mismatched", "user/other", "user/tiny"):
        assert not hub_server.repo_exists(repo)


def test_token_required_by_the_server(checkpoints, tmp_path, capsys):
    """A Hub that demands a token: clear 401 messages, the local folder is untouched, the right token works."""
    server = start_server(port=0, storage_dir=tmp_path / "private-hub", token="hf_right_token")
    folder = checkpoints["detector"]
    before = _folder_hash(folder)
    try:
        code, _, err = _push(capsys, folder, "user/private", "--endpoint", server.url)
        assert code == 2 and "401 Unauthorized" in err and "no token was sent" in err and "--token" in err
        code, _, err = _push(capsys, folder, "user/private", "--endpoint", server.url, "--token", "hf_wrong")
        assert code == 2 and "401 Unauthorized" in err and "the token was refused" in err
        assert not server.repo_exists("user/private")
        assert _folder_hash(folder) == before
        code, summary, err = _push(
            capsys, folder, "user/private", "--endpoint", server.url, "--token", "hf_right_token", "--private"
        )
        assert code == 0, err
        assert summary["endpoint"] == server.url and "model.safetensors" in server.list_files("user/private")
        assert _folder_hash(folder) == before
        assert server.errors == []
    finally:
        server.shutdown()


def test_init_reports_text_weights_and_answers(tmp_path, capsys):
    """`minivlm-hf init`: text weights from a local BERT folder (loaded / missing keys), --answers for VQA."""
    from transformers import BertConfig, BertModel

    from minivlm_hf.convert import load_offline_tokenizer

    bert = tmp_path / "tiny-bert"  # 1 layer, hidden 32: fills layer 0 of minivlm-tiny's 2 layers
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    ).save_pretrained(bert)
    load_offline_tokenizer().save_pretrained(bert)
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["yes", "no", "two"]))

    capsys.readouterr()
    code = cli(["init", "minivlm-tiny", "--output", str(tmp_path / "ck"), "--task", "vqa", "--text-init", str(bert),
                "--answers", str(answers)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["architecture"] == "MiniVLMForQuestionAnswering"
    assert summary["text_loaded"] > 0
    assert summary["text_missing_keys"] and all(k.startswith("minivlm.encoder.layer.1.") for k in summary["text_missing_keys"])
    assert summary["not_from_text_source"] > 0  # the TEE and the region embedding stay random
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["id2label"] == {"0": "yes", "1": "no", "2": "two"}
    assert config["tag_token_ids"] and config["vision_config"]["model_type"] == "minivlm_tee"
    with torch.no_grad():
        loaded = BertModel.from_pretrained(bert).embeddings.word_embeddings.weight
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "ck" / "model.safetensors")
    assert torch.equal(weights["minivlm.embeddings.word_embeddings.weight"], loaded)

    # Refusals of init.
    code = cli(["init", "minivlm-tiny", "--output", str(tmp_path / "ck"), "--task", "vqa"])
    assert code == 2 and "not empty" in capsys.readouterr().err
    code = cli(["init", "minivlm-tee-tiny", "--output", str(tmp_path / "x"), "--task", "caption"])
    assert code == 2 and "only supports --task detector" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"yes": 0}')
    code = cli(["init", "minivlm-tiny", "--output", str(tmp_path / "y"), "--task", "vqa", "--answers", str(bad)])
    assert code == 2 and "JSON list" in capsys.readouterr().err


def test_hub_configs_are_generated_from_the_classes():
    """hub_configs/<variant>/ equals what `python -m minivlm_hf.hub.hub_configs` generates (no hand edits)."""
    from minivlm_hf.hub.hub_configs import write_variant
    from minivlm_hf.hub.variants import VARIANTS, variant_dir

    for name in VARIANTS:
        assert write_variant(name, check=True) == [], f"run: python -m minivlm_hf.hub.hub_configs {name}"
        assert (variant_dir(name) / "README.md").is_file()
    base = json.loads((variant_dir("minivlm-base") / "config.json").read_text())
    small = json.loads((variant_dir("minivlm-small") / "config.json").read_text())
    assert (base["num_hidden_layers"], small["num_hidden_layers"]) == (12, 6)
    assert base["hidden_size"] == small["hidden_size"] == 384
    assert base["vision_config"]["backbone"] == "efficientnet_b0" and base["region_feature_size"] == 1024
