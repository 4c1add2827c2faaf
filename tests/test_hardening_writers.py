"""Every folder the package writes is written atomically: a fault (an exception or SIGKILL mid-write) leaves the old
folder or the new one, whole and loadable; a written folder holds that model's files only, with the umask's modes;
`train` resumes from the newest complete checkpoint and says where it is when interrupted."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minivlm_hf  # noqa: F401
from minivlm_hf.cli import main as cli_main
from minivlm_hf.hub.init_checkpoint import init_checkpoint
from minivlm_hf.io import atomic_directory, checkpoint_problem, latest_complete_checkpoint
from minivlm_hf.io.atomic import recover_interrupted

REPO = Path(__file__).resolve().parents[1]


class Fault(RuntimeError):
    pass


def _weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def _same_weights(folder, reference) -> bool:
    weights = _weights(folder)
    return weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


def _no_leftovers(folder: Path):
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


# ------------------------------------------------------------------------------------------------------------------
# the helper itself
# ------------------------------------------------------------------------------------------------------------------
def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("old")
    with pytest.raises(Fault), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("new")
        raise Fault
    assert [p.name for p in target.iterdir()] == ["a.txt"] and (target / "a.txt").read_text() == "old"
    (target / "checkpoint-3").mkdir()
    (target / "checkpoint-3" / "x").write_text("kept")
    (target / "checkpoint-3" / "x").chmod(0o600)
    (target / "tokenizer.json").write_text("stale")
    with atomic_directory(target, carry=lambda name: name.startswith("checkpoint-")) as staging:
        (staging / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "checkpoint-3"]
    assert (target / "checkpoint-3" / "x").read_text() == "kept"
    assert (target / "checkpoint-3" / "x").stat().st_mode & 0o777 == 0o600  # carried files keep their modes
    _no_leftovers(target)


def test_atomic_directory_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "m") as staging:
            fd = os.open(staging / "w.bin", os.O_WRONLY | os.O_CREAT, 0o600)  # as a mkstemp-based writer leaves it
            os.close(fd)
    finally:
        os.umask(old)
    assert (tmp_path / "m" / "w.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from minivlm_hf.io import atomic, atomic_directory
    target, where = Path(sys.argv[1]), sys.argv[2]
    if where == "swap":  # the two-rename fallback, killed between its renames
        atomic._exchange = lambda a, b: False
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if ".old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("new")
        if where == "write":
            os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("where", ["write", "swap"])
def test_sigkill_mid_write_leaves_the_old_folder(tmp_path, where):
    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("old")
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(target), where], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    recover_interrupted(target)  # what the next write does first
    assert (target / "a.txt").read_text() == "old"
    _no_leftovers(target)


# ------------------------------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------------------------------
def test_init_fault_keeps_the_old_checkpoint_and_overwrite_leaves_no_stale_files(tmp_path, monkeypatch):
    from minivlm_hf.modeling.image_processing_minivlm import MiniVLMImageProcessor
    from minivlm_hf.modeling.processing_minivlm import MiniVLMProcessor

    out = tmp_path / "ckpt"
    init_checkpoint("minivlm-tiny", out, task="caption", text_init="none", seed=0)
    assert {"tokenizer.json", "processor_config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    old = _weights(out)
    before = sorted(p.name for p in out.iterdir())

    def boom(self, *args, **kwargs):
        raise Fault("disk full")

    with monkeypatch.context() as patch:  # the weights are written, then the processor fails
        patch.setattr(MiniVLMProcessor, "save_pretrained", boom)
        with pytest.raises(Fault):
            init_checkpoint("minivlm-tiny", out, task="caption", text_init="none", seed=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before and _same_weights(out, old)
    assert checkpoint_problem(out) is None
    _no_leftovers(out)

    with monkeypatch.context() as patch:
        patch.setattr(MiniVLMImageProcessor, "save_pretrained", boom)
        with pytest.raises(Fault):
            init_checkpoint("minivlm-tee-tiny", out, task="detector", overwrite=True)
    assert _same_weights(out, old)

    old_umask = os.umask(0o022)
    try:
        result = init_checkpoint("minivlm-tee-tiny", out, task="detector", overwrite=True)
    finally:
        os.umask(old_umask)
    names = {p.name for p in out.iterdir()}
    assert not names & {"tokenizer.json", "tokenizer_config.json", "processor_config.json", "generation_config.json",
                        "modeling_minivlm_captioning.py"}
    assert set(result.files) == names
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {oct(0o644)}  # weights too, not 0600
    from minivlm_hf import inference

    model, _ = inference.load("detector", str(out))
    assert type(model).__name__ == "TEEForObjectDetection"


def test_init_overwrite_refuses_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("keep me")
    (out / "photos").mkdir()
    assert cli_main(["init", "minivlm-tee-tiny", "--output", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "photos/" in err and "not part of a saved model" in err
    assert (out / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------------------------
def test_export_fault_keeps_the_previous_export(tmp_path, monkeypatch):
    from minivlm_hf.export import onnx as onnx_export
    from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection
    from tee_utils import tiny_tee_config

    pytest.importorskip("onnx")
    model = TEEForObjectDetection(tiny_tee_config()).eval()
    out = tmp_path / "onnx"
    onnx_export.export_onnx(model, out, verify=False)
    before = {p.name: p.stat().st_size for p in out.iterdir()}
    assert (out / onnx_export.MANIFEST).is_file()

    def boom(*args, **kwargs):
        raise Fault("killed")

    monkeypatch.setattr(onnx_export, "verify_tee", boom)  # graphs written, verification fails
    with pytest.raises(Fault):
        onnx_export.export_onnx(model, out, verify=True)
    assert {p.name: p.stat().st_size for p in out.iterdir()} == before
    _no_leftovers(out)
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="refusing to replace .*thesis.tex"):
        onnx_export.export_onnx(model, foreign, verify=False)
    assert (foreign / "thesis.tex").read_text() == "x"


# ------------------------------------------------------------------------------------------------------------------
# data scenes
# ------------------------------------------------------------------------------------------------------------------
def test_data_overwrite_only_replaces_its_own_output(tmp_path, monkeypatch, capsys):
    import datasets

    from minivlm_hf.data import cache

    args = ["--num-train", "2", "--num-validation", "1", "--num-test", "1", "--min-size", "64", "--max-size", "64"]
    out = tmp_path / "scenes"
    assert cli_main(["data", "scenes", "--out", str(out), *args]) == 0
    assert json.loads((out / "minivlm_dataset.json").read_text())["dataset"] == "scenes"
    first = datasets.load_from_disk(str(out))["train"][0]["captions"]

    def boom(dataset, path):
        (Path(path) / "partial.arrow").write_bytes(b"x")
        raise Fault("killed")

    with monkeypatch.context() as patch:
        patch.setattr(cache, "save_quietly", boom)
        with pytest.raises(Fault):
            cli_main(["data", "scenes", "--out", str(out), "--overwrite", "--seed", "3", *args])
    assert datasets.load_from_disk(str(out))["train"][0]["captions"] == first
    _no_leftovers(out)

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("x")
    assert cli_main(["data", "scenes", "--out", str(home), "--overwrite", *args]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and "thesis.tex" in err and "minivlm_dataset.json" in err
    assert (home / "thesis.tex").read_text() == "x"


# ------------------------------------------------------------------------------------------------------------------
# train: final save, resume, interruption
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("scenes-cache")


def _config(cache_dir, **training):
    from minivlm_hf.training.recipes import load_recipe_config
    from test_training import tiny_config

    return load_recipe_config(None, tiny_config(cache_dir, **training))


def test_train_final_save_fault_keeps_the_old_model_and_its_checkpoints(tmp_path, cache_dir, monkeypatch):
    from minivlm_hf.training.data_setup import RecipeData
    from minivlm_hf.training.recipes import run_stage

    out = tmp_path / "vqa"
    run_stage("vqa", _config(cache_dir, max_steps=2, save_steps=2), out, progress=False, evaluate=False)
    old = _weights(out)
    # stale shards of another save: the next save must not leave them next to its single file
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}}))
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale")

    def boom(self, *args, **kwargs):
        raise Fault("killed while saving the processor")

    with monkeypatch.context() as patch:
        patch.setattr(RecipeData, "save_processor", boom)
        with pytest.raises(Fault):
            run_stage("vqa", _config(cache_dir, max_steps=4, save_steps=2, seed=1), out, progress=False,
                      evaluate=False)
    assert _same_weights(out, old) and checkpoint_problem(out) is None
    assert (out / "checkpoint-4").is_dir()  # written by the failed run before its final save
    _no_leftovers(out)
    run_stage("vqa", _config(cache_dir, max_steps=4, save_steps=2), out, progress=False, evaluate=False)
    assert not _same_weights(out, old) and checkpoint_problem(out) is None
    assert not (out / "model.safetensors.index.json").exists() and not (out / "model-00001-of-00002.safetensors").exists()
    assert {"checkpoint-2", "checkpoint-4", "metrics.json"} <= {p.name for p in out.iterdir()}


_KILLED_CHECKPOINT = textwrap.dedent("""
    import json, os, signal, sys
    from transformers import Trainer
    from minivlm_hf.training.recipes import load_recipe_config, run_stage
    config, out = json.loads(sys.argv[1]), sys.argv[2]
    real = Trainer._save_rng_state
    def save_rng_state(self, output_dir):
        if output_dir.endswith("checkpoint-4"):  # model and optimizer written, trainer_state.json not yet
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, output_dir)
    Trainer._save_rng_state = save_rng_state
    run_stage("vqa", load_recipe_config(None, config), out, progress=False, evaluate=False)
""")


def test_resume_auto_skips_a_checkpoint_killed_mid_write(tmp_path, cache_dir, caplog):
    from minivlm_hf.training.recipes import run_stage
    from test_training import tiny_config

    out = tmp_path / "run"
    config = tiny_config(cache_dir, max_steps=6, save_steps=2, save_total_limit=5)
    proc = subprocess.run([sys.executable, "-c", _KILLED_CHECKPOINT, json.dumps(config), str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert "trainer_state.json" in checkpoint_problem(out / "checkpoint-4", trainer_state=True)
    (out / "checkpoint-5").mkdir()  # an empty one too (killed before anything was written)
    with caplog.at_level(logging.WARNING, logger="minivlm_hf.training.recipes"):
        result = run_stage("vqa", _config(cache_dir, max_steps=6, save_steps=2, save_total_limit=5), out,
                           progress=False, evaluate=False, resume_from_checkpoint="auto")
    log = caplog.text
    assert "skipping" in log and "checkpoint-5: incomplete (no config.json)" in log
    assert "checkpoint-4: incomplete (no trainer_state.json" in log and f"resuming from {out / 'checkpoint-2'}" in log
    assert result.metrics["global_step"] == 6 and checkpoint_problem(out) is None
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-5: no config.json"):
        run_stage("vqa", _config(cache_dir, max_steps=6), out, progress=False, evaluate=False,
                  resume_from_checkpoint=str(out / "checkpoint-5"))


def test_train_refuses_a_folder_of_other_folders_and_keeps_unsaved_work(tmp_path, cache_dir, monkeypatch):
    from minivlm_hf.io import atomic
    from minivlm_hf.training.recipes import run_stage

    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"refusing to train into .*home: it holds folders that are not a training "
                                         r"run's \(Documents/\)"):
        run_stage("vqa", _config(cache_dir, max_steps=1), home, progress=False, evaluate=False)
    assert [p.name for p in home.iterdir()] == ["Documents"]

    def cannot_swap(staging, target):  # e.g. the output folder is a mount point
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(atomic, "_commit", cannot_swap)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"could not replace .*run \(Device or resource busy\); the new files are in "):
        run_stage("vqa", _config(cache_dir, max_steps=1, save_strategy="no"), out, progress=False, evaluate=False)
    (kept,) = tmp_path.glob("run.unsaved-*")
    assert checkpoint_problem(kept) is None  # the trained model is not lost


def test_ctrl_c_during_train_says_where_the_last_checkpoint_is(tmp_path, monkeypatch, capsys):
    from minivlm_hf.training import recipes

    out = tmp_path / "run"
    assert latest_complete_checkpoint(out) is None

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes, "run_stage", interrupted)
    assert cli_main(["train", "vqa", "--output-dir", str(out)]) == 130
    assert "no complete checkpoint in" in capsys.readouterr().err
    init_checkpoint("minivlm-tee-tiny", out / "checkpoint-7")
    (out / "checkpoint-7" / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert cli_main(["train", "vqa", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"the last complete checkpoint is {out / 'checkpoint-7'}" in err and "--resume-from-checkpoint auto" in err
