"""Sharded parquet export (`minivlm-hf data scenes --format parquet`), `minivlm-hf data push` against the loopback Hub,
and the streaming reader: disjoint shards per rank, exact resume, and a 2-process (gloo) training run on the stream."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from minivlm_hf.cli import main as cli
from minivlm_hf.data import load_scenes
from minivlm_hf.data.streaming import stream_dataset
from minivlm_hf.data.vocab import SHAPES

TESTS = Path(__file__).resolve().parent
SIZES = {"num_train": 8, "num_validation": 4, "num_test": 4, "min_size": 96, "max_size": 128}


def _export(folder: Path, shards: int, *extra: str) -> int:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
    return cli(["data", "scenes", "--format", "parquet", "--shards", str(shards), "--output-dir", str(folder),
                "--quiet", *args, *extra])


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes") / "parquet"
    assert _export(folder, 4) == 0
    return folder


def _plain(row: dict) -> dict:
    """A row with the image as its PNG bytes (PIL images compare by identity)."""
    import io

    buffer = io.BytesIO()
    row["image"].save(buffer, format="PNG")
    return {**row, "image": buffer.getvalue()}


def test_parquet_export_has_hub_layout_card_and_equal_rows(parquet_dir):
    names = sorted(p.relative_to(parquet_dir).as_posix() for p in (parquet_dir / "data").iterdir())
    assert names == [f"data/{s}-{i:05d}-of-00004.parquet" for s in ("test", "train", "validation") for i in range(4)]
    card = (parquet_dir / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": s, "path": f"data/{s}-*"} for s in ("train", "validation", "test")]}]
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == {
        "train": 8, "validation": 4, "test": 4}
    assert "0 = circle" in card

    expected = load_scenes(**SIZES, use_cache=False, progress=False)
    streamed = datasets.load_dataset(str(parquet_dir), streaming=True)
    for split in ("train", "validation", "test"):
        category = streamed[split].features["objects"]["category_id"]
        assert category.feature.names == list(SHAPES)
        rows = [_plain(r) for r in streamed[split]]
        # the original rows, image bytes included (PNG re-encoding of the same pixels is deterministic)
        assert rows == [_plain(r) for r in expected[split]]


def test_parquet_export_errors(tmp_path, capsys):
    assert _export(tmp_path / "too_many", 5) != 0
    assert "--shards 5 is more than the rows of validation (4), test (4)" in capsys.readouterr().err
    assert not (tmp_path / "too_many").exists()
    assert _export(tmp_path / "two", 2) == 0
    with pytest.raises(ValueError, match="has 2 shards, which 3 ranks cannot share evenly"):
        stream_dataset(tmp_path / "two", "train", rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        stream_dataset(tmp_path / "two", "train", rank=2, world_size=2)
    (tmp_path / "no_parquet").mkdir()
    (tmp_path / "no_parquet" / "train.json").write_text("{}")
    with pytest.raises(ValueError, match="no_parquet holds no parquet files"):
        stream_dataset(tmp_path / "no_parquet", "train")


def test_ranks_read_disjoint_shards_and_resume_exactly(parquet_dir):
    every = [r["image_id"] for r in stream_dataset(parquet_dir, "train")]
    assert every == [f"train_{i:06d}" for i in range(8)]
    per_rank = [[r["image_id"] for r in stream_dataset(parquet_dir, "train", rank=k, world_size=2)] for k in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 4
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == every
    for stop in range(4):
        stream = stream_dataset(parquet_dir, "train", rank=1, world_size=2)
        iterator = iter(stream)
        for _ in range(stop):
            next(iterator)
        state = json.loads(json.dumps(stream.state_dict()))  # what a checkpoint stores
        resumed = stream_dataset(parquet_dir, "train", rank=1, world_size=2)
        resumed.load_state_dict(state)
        assert [r["image_id"] for r in resumed] == per_rank[1][stop:]


def test_data_push_publishes_a_loadable_dataset_repo(hub_server, parquet_dir, capsys):
    assert cli(["data", "push", str(parquet_dir), "user/scenes-parquet"]) == 0
    assert "pushed" in capsys.readouterr().out
    files = hub_server.list_files("user/scenes-parquet", repo_type="dataset")
    assert sorted(set(files) - {".gitattributes"}) == ["README.md"] + sorted(  # the repo's own .gitattributes
        p.relative_to(parquet_dir).as_posix() for p in (parquet_dir / "data").iterdir())
    assert hub_server.read_file("user/scenes-parquet", "README.md", repo_type="dataset").decode() == (
        parquet_dir / "README.md").read_text()
    local = [r["image_id"] for r in stream_dataset(parquet_dir, "test", rank=0, world_size=2)]
    hub = [r["image_id"] for r in stream_dataset("user/scenes-parquet", "test", rank=0, world_size=2)]
    assert hub == local and len(hub) == 2

    assert cli(["data", "push", str(parquet_dir / "data"), "user/x"]) != 0
    assert "is not a parquet dataset folder" in capsys.readouterr().err


def test_two_process_stream_reads_disjoint_shards_trains_in_sync_and_resumes(parquet_dir, tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(29000 + os.getpid() % 500),
               str(TESTS / "stream_ddp_worker.py"), str(parquet_dir), str(out)]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [r["seen"] for r in ranks]
    every = [r["image_id"] for r in stream_dataset(parquet_dir, "train")]
    assert len(seen[0]) == len(seen[1]) == 4 and set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == every
    # each rank reads whole shards: two files of two consecutive rows each
    assert all(int(s[1][-6:]) == int(s[0][-6:]) + 1 and int(s[3][-6:]) == int(s[2][-6:]) + 1 for s in seen)
    # different rows, so different losses, yet the same parameters after 4 all-reduced steps
    assert ranks[0]["losses"] != ranks[1]["losses"]
    assert ranks[0]["parameters"] == ranks[1]["parameters"]
    torch.manual_seed(0)
    initial = [p.detach().flatten().tolist() for p in torch.nn.Linear(3, 1).parameters()]  # the workers' init
    assert ranks[0]["parameters"] != initial
    for r in ranks:
        assert r["resumed"] == {str(stop): r["seen"] for stop in range(5)}


def test_detector_recipe_trains_on_a_stream_and_resumes_exactly(tmp_path):
    from test_training import tiny_config

    from minivlm_hf.training.data_setup import RecipeData
    from minivlm_hf.training.recipes import load_recipe_config, run_stage
    from minivlm_hf.training.trainers import StopAtStepCallback, parameter_hash

    assert _export(tmp_path / "stream", 2) == 0
    config = tiny_config(tmp_path / "cache", max_steps=2, save_steps=1, per_device_train_batch_size=2)
    config["data"]["stream"] = str(tmp_path / "stream")
    config = load_recipe_config(None, config)
    data = RecipeData(config)
    full = run_stage("detector", config, tmp_path / "full", data=data, evaluate=False, progress=False)
    # the stream, not the recipe's in-memory scenes (a datasets.Dataset)
    assert isinstance(full.trainer.train_dataset, datasets.IterableDataset) and full.metrics["global_step"] == 2
    assert full.trainer.args.accelerator_config.dispatch_batches is False  # each rank reads its own shards
    interrupted = run_stage("detector", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                            callbacks=(StopAtStepCallback(1),))
    assert parameter_hash(interrupted.model) != parameter_hash(full.model)
    resumed = run_stage("detector", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                        resume_from_checkpoint="auto")
    assert parameter_hash(resumed.model) == parameter_hash(full.model)
    losses = [h["loss"] for h in full.trainer.state.log_history if "loss" in h]
    assert [h["loss"] for h in resumed.trainer.state.log_history if "loss" in h] == losses and len(losses) == 2


def test_nlvr_parquet_export_reads_back(tmp_path):
    folder = tmp_path / "nlvr"
    assert cli(["data", "nlvr", "--format", "parquet", "--shards", "2", "--output-dir", str(folder), "--quiet",
                "--num-train", "2", "--num-validation", "1", "--num-test", "1", "--min-size", "96",
                "--max-size", "128"]) == 0
    streamed = datasets.load_dataset(str(folder), streaming=True)
    features = streamed["train"].features
    assert features["label"].names == ["false", "true"]
    for side in ("left_objects", "right_objects"):
        assert features[side]["category_id"].feature.names == list(SHAPES)
    rows = list(streamed["train"])
    assert len(rows) == 4 and sorted(r["label"] for r in rows) == [0, 0, 1, 1]
    assert "`right_objects.category_id`: 0 = circle" in (folder / "README.md").read_text()


def test_webdataset_export_streams_the_same_rows_as_the_parquet_one(parquet_dir, tmp_path):
    folder = tmp_path / "web"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
    assert cli(["data", "scenes", "--format", "webdataset", "--shards", "4", "--output-dir", str(folder), "--quiet",
                *args]) == 0
    names = sorted(p.relative_to(folder).as_posix() for p in (folder / "data").iterdir())
    assert names == [f"data/{s}-{i:05d}-of-00004.tar" for s in ("test", "train", "validation") for i in range(4)]
    import tarfile

    with tarfile.open(folder / "data" / "train-00000-of-00004.tar") as tar:
        assert tar.getnames() == ["train_00000000.image.png", "train_00000000.json",
                                  "train_00000001.image.png", "train_00000001.json"]
    for split in ("train", "validation", "test"):
        web, parquet = stream_dataset(folder, split), stream_dataset(parquet_dir, split)
        assert web.features == parquet.features  # ClassLabel object classes included
        assert [_plain(r) for r in web] == [_plain(r) for r in parquet]
    for rank in (0, 1):
        ids = [r["image_id"] for r in stream_dataset(parquet_dir, "train", rank=rank, world_size=2)]
        stream = stream_dataset(folder, "train", rank=rank, world_size=2)
        assert [r["image_id"] for r in stream] == ids
        iterator = iter(stream)
        next(iterator)
        state = json.loads(json.dumps(stream.state_dict()))
        resumed = stream_dataset(folder, "train", rank=rank, world_size=2)
        resumed.load_state_dict(state)
        assert [r["image_id"] for r in resumed] == ids[1:]
