"""Sharded WebDataset export (``minivlm-hf data scenes --format webdataset``) and its rows read back as table rows.

Layout (what ``datasets.load_dataset(folder)`` reads with its ``webdataset`` builder)::

    README.md                                 dataset card: ``configs`` (split -> tar pattern) + ``dataset_info``
    data/<split>-<i:05d>-of-<n:05d>.tar       contiguous shards of each split

A row is one sample of a tar: ``<key>.<column>.png`` per image column (the PNG bytes the arrow table holds) and
``<key>.json`` with the other columns. The card's ``dataset_info`` gives the builder the exact types (``json`` as the
struct of the table's columns, object classes as ``ClassLabel``), and :func:`webdataset_rows` turns a streamed
sample back into the table's row (``image``, ``image_id``, ``objects``, ...), so a webdataset streams like the
parquet export of the same data.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
from datasets import DatasetInfo, Features, Image, Value

from .parquet import DATA_DIR, _no_progress_bars, shard_folder, write_card

IMAGE_SUFFIX = ".png"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.tar"


def sample_features(features: Features) -> Features:
    """The webdataset builder's columns for rows of ``features``: ``__key__``, ``__url__``, ``<image>.png`` per
    image column and ``json`` (a struct of the other columns)."""
    images = [k for k, v in features.items() if isinstance(v, Image)]
    return Features({"__key__": Value("string"), "__url__": Value("string"),
                     **{k + IMAGE_SUFFIX: Image() for k in images},
                     "json": {k: v for k, v in features.items() if k not in images}})


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no clock or owner in the file: reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_webdataset_shards(
    dataset: datasets.DatasetDict, folder: str | Path, num_shards: int, *, pretty_name: str, description: str,
    task_categories: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Write every split of ``dataset`` as ``num_shards`` tar files under ``folder/data`` and a dataset card; returns
    ``{split: [relative file names]}`` (the counterpart of :func:`~minivlm_hf.data.parquet.write_parquet_shards`)."""
    folder = shard_folder(dataset, folder, num_shards)
    first = next(iter(dataset.values())).features
    images = [k for k, v in first.items() if isinstance(v, Image)]
    info = DatasetInfo(description=description, features=sample_features(first), splits=datasets.SplitDict(),
                       dataset_size=0, download_size=0)
    files: dict[str, list[str]] = {}
    for name, split in dataset.items():
        if split.features != first:
            raise ValueError(f"split {name!r} has other features than the first split")
        count = num_shards if split.num_rows else 1
        files[name] = []
        row_index = 0
        with _no_progress_bars():
            raw = split.cast(Features({**split.features, **{k: Image(decode=False) for k in images}}))
            for index in range(count):
                relative = shard_name(name, index, count)
                with tarfile.open(folder / relative, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for row in raw.shard(num_shards=count, index=index, contiguous=True):
                        key = f"{name}_{row_index:08d}"  # no dot: the builder splits a file name at the first one
                        row_index += 1
                        for column in images:
                            _add(tar, f"{key}.{column}{IMAGE_SUFFIX}", row[column]["bytes"])
                        other = {k: v for k, v in row.items() if k not in images}
                        _add(tar, f"{key}.json", json.dumps(other, separators=(",", ":")).encode())
                files[name].append(relative)
        size = sum((folder / f).stat().st_size for f in files[name])
        info.splits.add(datasets.SplitInfo(name=name, num_bytes=size, num_examples=split.num_rows))
        info.dataset_size += size
        info.download_size += size
    write_card(folder, info, list(files), pretty_name=pretty_name, task_categories=task_categories)
    return files


def is_webdataset(features) -> bool:
    return features is not None and "__key__" in features and "json" in features


def webdataset_rows(stream: datasets.IterableDataset) -> datasets.IterableDataset:
    """Samples of a webdataset stream as the table rows they were written from (``<image>.png`` -> ``<image>``,
    ``json`` -> its columns; ``__key__`` / ``__url__`` dropped)."""
    features = stream.features
    images = [k for k, v in features.items() if isinstance(v, Image)]
    if not isinstance(features["json"], dict):
        raise ValueError("the webdataset's json files do not hold one object per sample")
    target = Features({**{k[: -len(IMAGE_SUFFIX)]: Image() for k in images}, **features["json"]})
    # the PNG bytes pass through undecoded and are decoded once, by the target's Image feature
    stream = stream.cast(Features({**features, **{k: Image(decode=False) for k in images}}))

    def convert(sample: dict) -> dict:
        return {**{k[: -len(IMAGE_SUFFIX)]: sample[k] for k in images}, **sample["json"]}

    return stream.map(convert, remove_columns=list(features)).cast(target)


__all__ = ["is_webdataset", "sample_features", "webdataset_rows", "write_webdataset_shards"]
