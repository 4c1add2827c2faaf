"""Region features extracted data-parallel into parquet shards (``minivlm-hf data features``).

Each rank of a ``torchrun`` / ``accelerate launch`` job streams its own scene shards
(:func:`~minivlm_hf.data.streaming.stream_dataset`, i.e. ``split_dataset_by_node``), runs the TEE on them and writes
one feature shard per scene shard it read; a single process writes the same files. Layout::

    README.md                                          dataset card (configs: split -> data/<split>/*.parquet)
    minivlm_features.json                              the detector, tag settings, source and rows per split
    data/<split>/features-r<rank:05d>-<shard:05d>.parquet

A feature row is the scene row without its image, plus the region columns of
:data:`~minivlm_hf.training.features.REGION_COLUMNS` (NLVR statements: ``left_*`` and ``right_*`` columns, one set per
image). The folder is a parquet dataset like the scenes one: ``datasets.load_dataset(folder, streaming=True)`` reads
it, ``minivlm-hf data push`` publishes it, and a recipe's ``data.stream`` trains the fusion stages on it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets import DatasetInfo, Features
from datasets.arrow_writer import ParquetWriter

from ..data.parquet import DATA_DIR, _no_progress_bars, write_card
from ..data.streaming import node_rank_and_world_size, stream_dataset
from ..io.atomic import atomic_directory, atomic_write_text
from ..progress import progress_enabled
from .features import region_extractor

MANIFEST = "minivlm_features.json"
# image column -> prefix of its region columns
IMAGE_SIDES = {"scenes": (("image", ""),), "nlvr": (("left_image", "left_"), ("right_image", "right_"))}


def feature_shard_name(split: str, rank: int, index: int) -> str:
    """``data/train/features-r00001-00000.parquet``: the ``index``-th shard written by ``rank``."""
    return f"{DATA_DIR}/{split}/features-r{rank:05d}-{index:05d}.parquet"


def image_sides(features) -> tuple[tuple[str, str], ...]:
    """The image columns of a scenes (``image``) or NLVR (``left_image`` / ``right_image``) row and the prefixes of
    their region columns."""
    for sides in IMAGE_SIDES.values():
        if all(column in features for column, _ in sides):
            return sides
    raise ValueError(f"rows have no image column to extract regions from ('image', or 'left_image' and "
                     f"'right_image'); columns: {sorted(features)}")


def is_feature_dataset(features) -> bool:
    """Whether rows with these columns carry precomputed regions (written by ``minivlm-hf data features``)."""
    return any(f"{prefix}region_features" in features for sides in IMAGE_SIDES.values() for _, prefix in sides)


def _broadcast(value):
    """``value`` of rank 0 on every rank (itself in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _output_problem(out: Path, overwrite: bool) -> str | None:
    if out.exists() and not out.is_dir():
        return f"--out {out} exists and is not a folder"
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            return f"output folder {out} exists and is not empty (use --overwrite to replace it)"
        if not (out / MANIFEST).is_file():
            return f"refusing to overwrite {out}: it is not a feature folder written by `minivlm-hf data features` " \
                   f"(no {MANIFEST})"
    return None


def source_splits(source: str | Path, splits=None, *, revision: str | None = None, token: str | None = None):
    """``splits`` (default: every split of ``source``) without the empty ones the dataset card lists."""
    names = list(splits) if splits else datasets.get_dataset_split_names(str(source), revision=revision, token=token)
    with contextlib.suppress(Exception):  # sizes are optional in a card
        info = datasets.load_dataset_builder(str(source), revision=revision, token=token).info.splits or {}
        names = [n for n in names if n not in info or info[n].num_examples]
    return names


def extract_feature_shards(
    detector,
    image_processor,
    source: str | Path,
    out: str | Path,
    *,
    splits: list[str] | None = None,
    batch_size: int = 16,
    tag_threshold: float = 0.3,
    tag_attributes: bool = False,
    attribute_threshold: float = 0.5,
    max_attributes: int = 2,
    tag_order: str = "score",
    overwrite: bool = False,
    revision: str | None = None,
    token: str | None = None,
    progress: bool = True,
    detector_name: str | None = None,
) -> dict[str, int]:
    """Extract the regions of every image of ``source`` (a parquet / webdataset scenes or NLVR folder, or a Hub dataset repo) into the
    feature folder ``out``, this rank's share only when ``torch.distributed`` runs (every rank calls it with the same
    arguments). Returns the rows written per split over all ranks.

    ``out`` is staged next to itself and swapped in whole by rank 0 once every rank has written its shards (it must
    be on a file system all ranks see); an existing folder is replaced only with ``overwrite`` and only if this
    function wrote it. The tag settings are those of :func:`~minivlm_hf.training.features.extract_features`."""
    rank, world_size = node_rank_and_world_size()
    out = Path(out)
    extract, schema = region_extractor(
        detector, image_processor, tag_threshold=tag_threshold, tag_attributes=tag_attributes,
        attribute_threshold=attribute_threshold, max_attributes=max_attributes, tag_order=tag_order)
    with contextlib.ExitStack() as stack:
        message = None
        if rank == 0:
            try:
                problem = _output_problem(out, overwrite)
                if problem:
                    raise ValueError(problem)
                names = source_splits(source, splits, revision=revision, token=token)
                if not names:
                    raise ValueError(f"{source} has no rows to extract")
                message = ("ok", str(stack.enter_context(atomic_directory(out))), names)
            except Exception as err:  # noqa: BLE001 - every rank must stop with rank 0's error, not wait for it
                message = ("error", f"{type(err).__name__}: {err}" if not isinstance(err, ValueError) else str(err))
        message = _broadcast(message)
        if message[0] == "error":
            raise ValueError(message[1])
        staging, names = Path(message[1]), message[2]
        info = DatasetInfo(description="Region features (TEE) of a MiniVLM dataset, from `minivlm-hf data features`.",
                           splits=datasets.SplitDict(), dataset_size=0, download_size=0)
        for split in names:
            stream = stream_dataset(source, split, rank=rank, world_size=world_size, revision=revision, token=token)
            sides = image_sides(stream.features)
            base = {k: v for k, v in stream.features.items() if k not in {column for column, _ in sides}}
            features = Features({**base, **{prefix + k: v for _, prefix in sides for k, v in schema.items()}})
            info.features = features
            bar = _progress(f"Extracting regions ({split}, rank {rank})", progress and rank == 0)
            for index in range(stream.num_shards):
                part = stream.shard(num_shards=stream.num_shards, index=index, contiguous=True)
                path = staging / feature_shard_name(split, rank, index)
                path.parent.mkdir(parents=True, exist_ok=True)
                with ParquetWriter(path=str(path), features=features) as writer:
                    for batch in part.iter(batch_size=batch_size):
                        rows = {key: batch[key] for key in base}
                        for column, prefix in sides:
                            rows.update(extract(batch[column], prefix))
                        writer.write_batch(rows)
                        bar.update(len(batch[sides[0][0]]))
                    writer.finalize()
            bar.close()
        _barrier()  # every rank's shards are written
        counts = {}
        if rank == 0:
            for split in names:
                files = sorted((staging / DATA_DIR / split).glob("*.parquet"))
                counts[split] = sum(pq.read_metadata(f).num_rows for f in files)
                size = sum(f.stat().st_size for f in files)
                info.splits.add(datasets.SplitInfo(name=split, num_bytes=size, num_examples=counts[split]))
                info.dataset_size += size
                info.download_size += size
            _write_card(staging, info, names)
            settings = {
                "source": str(source), "detector": detector_name, "splits": counts, "world_size": world_size,
                "tag_threshold": tag_threshold, "tag_attributes": tag_attributes,
                "tag_attribute_threshold": attribute_threshold, "max_attributes": max_attributes,
                "tag_order": tag_order,
            }
            atomic_write_text(staging / MANIFEST, json.dumps(settings, indent=1) + "\n")
    _barrier()  # rank 0 has swapped the folder in
    return _broadcast(counts)


def _write_card(folder: Path, info: DatasetInfo, splits: list[str]) -> None:
    with _no_progress_bars():
        write_card(folder, info, splits, pretty_name="MiniVLM region features",
                   task_categories=("image-feature-extraction",), file_pattern="{split}/*.parquet")


def _progress(desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="image", disable=not progress_enabled(enabled))


__all__ = ["MANIFEST", "extract_feature_shards", "feature_shard_name", "image_sides", "is_feature_dataset",
           "source_splits"]
