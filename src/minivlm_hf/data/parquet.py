"""Sharded parquet export of a ``DatasetDict`` in the Hub's layout, with a dataset card.

Layout (what ``datasets.load_dataset(folder)`` and the Hub's dataset viewer understand)::

    README.md                                 dataset card: YAML ``configs`` (split -> file pattern) + ``dataset_info``
    data/<split>-<i:05d>-of-<n:05d>.parquet   contiguous shards of each split (``Dataset.shard(contiguous=True)``)

Each shard is a unit of parallel reading: a streaming reader splits a split's shards across the ranks of a job
(:func:`minivlm_hf.data.streaming.stream_dataset`), so a split should have at least as many shards as ranks.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import ClassLabel, DatasetInfo, List
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

DATA_DIR = "data"
CARD_NAME = "README.md"


@contextmanager
def _no_progress_bars():
    """datasets' per-call bars (casting, one per written shard) would drown the command's own summary."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``data/train-00000-of-00004.parquet``: the names ``push_to_hub`` gives its shards."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.parquet"


def with_object_class_names(dataset: datasets.Dataset, names: list[str]) -> datasets.Dataset:
    """Every ``*objects.category_id`` column (``objects``; NLVR's ``left_objects`` / ``right_objects``) as a
    ``ClassLabel`` sequence of ``names``: the same integers, and readers get the class names with the data."""
    features = dataset.features.copy()
    for column in [c for c in features if c.endswith("objects") and "category_id" in features[c]]:
        bad = [c for row in dataset.select_columns([column])[column] for c in row["category_id"]
               if not 0 <= c < len(names)]
        if bad:
            raise ValueError(f"{column}.category_id {bad[0]} is outside the {len(names)} object classes {names}")
        features[column] = {**features[column], "category_id": List(ClassLabel(names=list(names)))}
    with _no_progress_bars():
        return dataset.cast(features)


def shard_folder(dataset: datasets.DatasetDict, folder: str | Path, num_shards: int) -> Path:
    """Check that every non-empty split of ``dataset`` can be cut into ``num_shards`` shards and create
    ``folder/data``; returns ``folder`` as a ``Path`` (shared by the parquet and webdataset writers)."""
    if num_shards < 1:
        raise ValueError(f"--shards must be at least 1, got {num_shards}")
    too_small = {name: split.num_rows for name, split in dataset.items() if 0 < split.num_rows < num_shards}
    if too_small:
        raise ValueError(f"cannot cut {num_shards} shards from splits with fewer rows: {too_small}")
    folder = Path(folder)
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    return folder


def write_parquet_shards(
    dataset: datasets.DatasetDict, folder: str | Path, num_shards: int, *, pretty_name: str, description: str,
    task_categories: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Write every split of ``dataset`` as ``num_shards`` parquet files under ``folder/data`` and a dataset card;
    returns ``{split: [relative file names]}``. ``folder`` must be empty or absent (callers stage into a temporary
    folder and swap it in)."""
    folder = shard_folder(dataset, folder, num_shards)
    files: dict[str, list[str]] = {}
    info = DatasetInfo(description=description, features=None, splits=datasets.SplitDict(), dataset_size=0,
                       download_size=0)
    for name, split in dataset.items():
        if info.features is None:
            info.features = split.features
        elif split.features != info.features:
            raise ValueError(f"split {name!r} has other features than the first split")
        count = num_shards if split.num_rows else 1
        files[name] = []
        nbytes = 0
        with _no_progress_bars():
            for index in range(count):
                relative = shard_name(name, index, count)
                nbytes += split.shard(num_shards=count, index=index, contiguous=True).to_parquet(folder / relative)
                files[name].append(relative)
        size = sum((folder / f).stat().st_size for f in files[name])
        info.splits.add(datasets.SplitInfo(name=name, num_bytes=nbytes, num_examples=split.num_rows))
        info.dataset_size += nbytes
        info.download_size += size
    write_card(folder, info, list(files), pretty_name=pretty_name, task_categories=task_categories)
    return files


def write_card(
    folder: Path, info: DatasetInfo, splits: list[str], *, pretty_name: str, task_categories: tuple[str, ...] = (),
    file_pattern: str = "{split}-*",
) -> None:
    """README.md with the YAML ``configs`` / ``dataset_info`` header that ``datasets`` and the Hub read; a split's
    files are ``data/`` + ``file_pattern`` with the split's name."""
    card_data = DatasetCardData(pretty_name=pretty_name, task_categories=list(task_categories) or None)
    MetadataConfigs({"default": {"data_files": [
        {"split": s, "path": f"{DATA_DIR}/{file_pattern.format(split=s)}"} for s in splits]}}
    ).to_dataset_card_data(card_data)
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    classes = ""
    for name, feature in _class_labels(info.features):
        classes += f"\n`{name}`: " + ", ".join(f"{i} = {label}" for i, label in enumerate(feature.names)) + "\n"
    rows = "\n".join(f"| {s} | {info.splits[s].num_examples} |" for s in splits)
    body = (
        f"# {pretty_name}\n\n{info.description}\n\n| split | rows |\n|---|---|\n{rows}\n\n## Classes\n{classes}\n"
        "## Loading\n\n```python\nfrom datasets import load_dataset\n\n"
        "ds = load_dataset(\"<this folder or repo id>\", streaming=True)\n```\n"
    )
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    (folder / CARD_NAME).write_text(str(card), encoding="utf-8")


def _class_labels(features, prefix: str = ""):
    for name, feature in features.items():
        while isinstance(feature, List):
            feature = feature.feature
        if isinstance(feature, ClassLabel):
            yield prefix + name, feature
        elif isinstance(feature, dict):
            yield from _class_labels(feature, prefix + name + ".")


def push_dataset_folder(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a folder written by :func:`write_parquet_shards` to the dataset repo ``repo_id`` (created if needed) in
    one commit; returns the commit URL. The folder is checked first: a card and parquet shards, nothing else."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"dataset folder not found: {folder}")
    # data/*.parquet (scenes), data/*.tar (webdataset) or data/<split>/*.parquet (features); the upload patterns' *
    # spans folders too
    shards = sorted(p.relative_to(folder).as_posix() for pattern in ("*.parquet", "*.tar")
                    for p in (folder / DATA_DIR).rglob(pattern))
    if not (folder / CARD_NAME).is_file() or not shards:
        raise ValueError(
            f"{folder} is not a parquet dataset folder (it needs {CARD_NAME} and {DATA_DIR}/*.parquet; write one with "
            "`minivlm-hf data scenes --format parquet`)"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo id {repo_id!r} must be namespace/name")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=folder, revision=revision,
        allow_patterns=[CARD_NAME, f"{DATA_DIR}/*.parquet", f"{DATA_DIR}/*.tar"],
        commit_message=commit_message or f"Upload {len(shards)} shards",
    )
    return str(info)
