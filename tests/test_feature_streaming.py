"""`minivlm-hf data features` (region features extracted into parquet shards, data parallel under torchrun) and the
fusion stages trained on a stream of such shards (`data.stream`): 1 process vs 2, disjoint ranks, exact resume."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from minivlm_hf.cli import main as cli

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SIZES = ["--num-train", "8", "--num-validation", "4", "--num-test", "4", "--min-size", "96", "--max-size", "128"]


def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(28000 + os.getpid() % 500), *args]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Scenes as 4 parquet shards per split, a tiny (untrained) TEE and its single-process feature folder."""
    from tee_utils import tiny_image_processor, tiny_tee_config

    from minivlm_hf.modeling.modeling_minivlm_tee import TEEForObjectDetection

    root = tmp_path_factory.mktemp("feature-stream")
    assert cli(["data", "scenes", "--format", "parquet", "--shards", "4", "--output-dir", str(root / "scenes"),
                "--quiet", *SIZES]) == 0
    torch.manual_seed(0)
    TEEForObjectDetection(tiny_tee_config()).save_pretrained(root / "tee")
    tiny_image_processor().save_pretrained(root / "tee")
    # a tag threshold the untrained TEE's scores reach, so the tags are compared too
    assert cli(["data", "features", "--detector", str(root / "tee"), "--scenes", str(root / "scenes"),
                "--out", str(root / "features"), "--batch-size", "3", "--tag-threshold", "0.01", "--quiet"]) == 0
    return root


def _rows(files) -> dict[str, dict]:
    stream = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)
    return {row["image_id"]: row for row in stream}


def test_two_ranks_extract_disjoint_shards_whose_union_is_the_single_process_extraction(folders):
    single = folders / "features"
    names = sorted(p.relative_to(single).as_posix() for p in (single / "data").rglob("*.parquet"))
    assert names == [f"data/{s}/features-r00000-{i:05d}.parquet" for s in ("test", "train", "validation")
                     for i in range(4)]  # one feature shard per scene shard
    proc = _torchrun("-m", "minivlm_hf.cli", "data", "features", "--detector", str(folders / "tee"), "--scenes",
                     str(folders / "scenes"), "--out", str(folders / "features2"), "--batch-size", "3",
                     "--tag-threshold", "0.01", "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    double = folders / "features2"
    manifest = json.loads((double / "minivlm_features.json").read_text())
    assert manifest["world_size"] == 2 and manifest["splits"] == {"train": 8, "validation": 4, "test": 4}
    scenes = datasets.load_dataset(str(folders / "scenes"), streaming=True)
    for split in ("train", "validation", "test"):
        ranks = [_rows(sorted((double / "data" / split).glob(f"features-r{r:05d}-*.parquet"))) for r in (0, 1)]
        assert [len(list((double / "data" / split).glob(f"features-r{r:05d}-*.parquet"))) for r in (0, 1)] == [2, 2]
        assert len(ranks[0]) == len(ranks[1]) > 0 and set(ranks[0]).isdisjoint(ranks[1])
        union = {**ranks[0], **ranks[1]}
        expected = _rows((single / "data" / split).glob("*.parquet"))
        assert sorted(union) == sorted(expected) == sorted(r["image_id"] for r in scenes[split])
        assert sum(len(r["tags"]) for r in expected.values()) > 0
        for image_id, row in expected.items():
            other = union[image_id]
            for column in ("region_features", "region_boxes", "region_scores"):
                np.testing.assert_allclose(np.asarray(other[column], dtype=np.float32),
                                           np.asarray(row[column], dtype=np.float32), rtol=1e-3, atol=1e-3)
            for column in ("region_mask", "region_labels", "tags", "captions", "questions", "objects"):
                assert other[column] == row[column], (image_id, column)
    # a dataset card that datasets reads (splits, sizes, the Array2D region features)
    streamed = datasets.load_dataset(str(double), streaming=True)
    assert streamed["train"].features["region_features"].shape == (10, 32)
    assert streamed["train"].num_shards == 4 and len(list(streamed["validation"])) == 4


def test_data_features_errors_and_keeps_existing_folders(folders, tmp_path, capsys):
    common = ["data", "features", "--detector", str(folders / "tee"), "--scenes", str(folders / "scenes"), "--quiet"]
    assert cli([*common, "--out", str(folders / "features")]) != 0
    assert "exists and is not empty (use --overwrite" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli([*common, "--out", str(mine), "--overwrite"]) != 0
    assert "not a feature folder written by `minivlm-hf data features`" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    assert cli([*common[:3], str(tmp_path), *common[4:], "--out", str(tmp_path / "x")]) != 0
    assert "is not a trained detector folder" in capsys.readouterr().err


def test_stream_task_examples_match_the_in_memory_tables(folders):
    from minivlm_hf.training.features import caption_examples, pretraining_examples, vqa_examples
    from minivlm_hf.training.streamed_examples import stage_stream, stream_task_examples

    table = datasets.concatenate_datasets([datasets.Dataset.from_parquet(str(p)) for p in sorted(
        (folders / "features" / "data" / "train").glob("*.parquet"))])
    ids = table["image_id"]
    for stage, expected, key in (
        ("caption", caption_examples(table), ("image_index", "caption")),
        ("vqa", vqa_examples(table), ("image_index", "question", "question_id")),
        ("pretrain", pretraining_examples(table), ("image_index", "caption", "source")),
    ):
        rows = list(stream_task_examples(stage, folders / "features"))
        want = Counter(tuple(ids[r[k]] if k == "image_index" else r[k] for k in key) for r in expected)
        assert Counter(tuple(r["image_id" if k == "image_index" else k] for k in key) for r in rows) == want
        by_id = {r["image_id"]: r for r in table}
        for row in rows[:3]:  # every row carries its own image's regions and tags
            assert row["region_features"] == by_id[row["image_id"]]["region_features"]
            assert row["tags"] == by_id[row["image_id"]]["tags"]
    shuffled = [r["question_id"] for r in stream_task_examples("vqa", folders / "features", shuffle_buffer=8, seed=3)]
    plain = [r["question_id"] for r in stream_task_examples("vqa", folders / "features")]
    assert shuffled != plain and sorted(shuffled) == sorted(plain)

    with pytest.raises(ValueError, match="holds no region features.*minivlm-hf data features"):
        stream_task_examples("caption", folders / "scenes")
    with pytest.raises(ValueError, match="the nlvr stage trains on the features of NLVR pairs"):
        stream_task_examples("nlvr", folders / "features")
    with pytest.raises(ValueError, match="holds 10 regions of 32 features per image, the model takes 10 of 64"):
        stream_task_examples("vqa", folders / "features", region_shape=(10, 64))
    with pytest.raises(ValueError, match="the detector stage trains on scenes with images; data.stream .* has none"):
        stage_stream("detector", {"data": {"stream": str(folders / "features")}})
    with pytest.raises(ValueError, match=r"extracted with tag_threshold=0.01 but the recipe has data.tag_threshold=0.3"):
        stage_stream("caption", {"data": {"stream": str(folders / "features"), "tag_threshold": 0.3}})


def _stream_config(folders, cache_dir, **training):
    from test_training import tiny_config

    config = tiny_config(cache_dir, **training)
    config["data"].update(stream=str(folders / "features"), features="detector", detector=str(folders / "tee"),
                          stream_shuffle_buffer=8, tag_threshold=0.01)
    return config


def test_caption_stage_trains_on_the_stream_and_resumes_exactly_past_a_pass(folders, tmp_path):
    from minivlm_hf.training.data_setup import RecipeData
    from minivlm_hf.training.recipes import load_recipe_config, run_stage
    from minivlm_hf.training.trainers import StopAtStepCallback, parameter_hash

    # 40 caption rows in batches of 8: a pass of the stream is 5 steps; the checkpoint is in the second pass
    config = load_recipe_config(None, _stream_config(folders, tmp_path / "cache", max_steps=7, save_steps=6,
                                                     per_device_train_batch_size=8))
    data = RecipeData(config)
    full = run_stage("caption", config, tmp_path / "full", data=data, progress=False)
    assert isinstance(full.trainer.train_dataset, datasets.IterableDataset) and full.metrics["global_step"] == 7
    # evaluated on the feature folder's test split: no scenes generated, no regions extracted in memory
    assert len(full.details["captions"]) == 4 and "test_cider" in full.metrics, sorted(full.metrics)
    assert data._scenes is None and list(data._features) == ["test"]
    assert full.trainer.args.accelerator_config.dispatch_batches is False
    interrupted = run_stage("caption", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                            callbacks=(StopAtStepCallback(6),))
    assert parameter_hash(interrupted.model) != parameter_hash(full.model)
    resumed = run_stage("caption", config, tmp_path / "resumed", data=data, evaluate=False, progress=False,
                        resume_from_checkpoint="auto")
    assert parameter_hash(resumed.model) == parameter_hash(full.model)
    losses = [h["loss"] for h in full.trainer.state.log_history if "loss" in h]
    assert [h["loss"] for h in resumed.trainer.state.log_history if "loss" in h] == losses and len(losses) == 7


def test_two_process_vqa_on_the_stream_reads_disjoint_rows_and_ends_in_sync(folders, tmp_path):
    config = _stream_config(folders, tmp_path / "cache", max_steps=3, save_strategy="no")
    config["debug"] = {"param_hash": True}
    (tmp_path / "ddp.json").write_text(json.dumps(config))
    out = tmp_path / "ddp_out"
    proc = _torchrun(str(TESTS / "feature_stream_ddp_worker.py"), str(tmp_path), "--", "train", "vqa", "--config",
                     str(tmp_path / "ddp.json"), "--output-dir", str(out), "--no-eval", "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads((out / f"param_hash_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2] and [r["global_step"] for r in records] == [3, 3]
    assert records[0]["hash"] == records[1]["hash"] != records[0]["initial_hash"]  # trained, in sync
    seen = [json.loads((tmp_path / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) >= 12 and set(seen[0]).isdisjoint(seen[1])
    # each rank reads whole shards of its own: two of the four feature files, not the other rank's
    files = sorted((folders / "features" / "data" / "train").glob("*.parquet"))
    questions = {f: {str(q) for row in _rows([f]).values() for q in row["question_ids"]} for f in files}
    read = [{f for f in files if questions[f] & set(s)} for s in seen]
    assert len(read[0]) == len(read[1]) == 2 and read[0].isdisjoint(read[1])
    assert all(set(s) <= set().union(*(questions[f] for f in r)) for s, r in zip(seen, read))


def test_feature_folder_pushed_to_the_hub_streams_the_same_task_rows(hub_server, folders):
    from minivlm_hf.training.streamed_examples import stream_task_examples

    assert cli(["data", "push", str(folders / "features"), "user/scene-features"]) == 0
    files = hub_server.list_files("user/scene-features", repo_type="dataset")
    assert sorted(f for f in files if f.endswith(".parquet")) == sorted(
        p.relative_to(folders / "features").as_posix() for p in (folders / "features" / "data").rglob("*.parquet"))
    local = [(r["question_id"], r["region_features"]) for r in stream_task_examples("vqa", folders / "features")]
    hub = [(r["question_id"], r["region_features"]) for r in stream_task_examples("vqa", "user/scene-features")]
    assert hub == local and len(hub) > 8
