"""Stream a sharded parquet or WebDataset dataset (a local folder or a Hub dataset repo) for training on one or many ranks.

:func:`stream_dataset` opens one split as a ``datasets.IterableDataset`` and hands each rank of a ``torchrun`` /
``accelerate launch`` job its own shards (``datasets.distributed.split_dataset_by_node`` with the ``"shards"``
strategy): ranks never read the same file, and no rank reads a file it does not train on. The stream position is
saved and restored exactly with the dataset's own ``state_dict()`` / ``load_state_dict()``::

    stream = stream_dataset("scenes_parquet", "train")      # rank / world size from torch.distributed
    for i, row in enumerate(stream):
        if i == 99:
            state = stream.state_dict()                      # after 100 rows
            break
    resumed = stream_dataset("scenes_parquet", "train")
    resumed.load_state_dict(state)                           # continues at row 101

Write such a folder with ``minivlm-hf data scenes --format parquet --shards N`` (or ``--format webdataset``: tar
shards, whose samples are streamed back as the same rows).
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node


def node_rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the running ``torch.distributed`` job, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def stream_dataset(
    source: str | Path,
    split: str = "train",
    *,
    rank: int | None = None,
    world_size: int | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> datasets.IterableDataset:
    """The ``split`` of ``source`` (a parquet / webdataset folder, or a Hub dataset repo id) as an ``IterableDataset`` that
    reads only the shards of ``rank`` out of ``world_size`` (default: the running ``torch.distributed`` job's).

    The split's shard count must be a multiple of ``world_size``, so every rank gets the same number of shards
    (and, with the contiguous equal shards ``minivlm-hf data`` writes, rows within one of each other)."""
    if (rank is None) != (world_size is None):
        raise ValueError("pass both rank and world_size, or neither (to use torch.distributed's)")
    if rank is None:
        rank, world_size = node_rank_and_world_size()
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    path = Path(source)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{source} is a file; expected a parquet dataset folder or a Hub dataset repo id")
    if path.is_dir() and next(path.glob("**/*.parquet"), next(path.glob("**/*.tar"), None)) is None:
        raise ValueError(
            f"{source} holds no parquet files (nor webdataset .tar ones); write a streamable dataset with "
            "`minivlm-hf data scenes --format parquet`"
        )
    stream = datasets.load_dataset(str(source), split=split, streaming=True, revision=revision, token=token)
    from .webdataset import is_webdataset, webdataset_rows

    if is_webdataset(stream.features):
        stream = webdataset_rows(stream)
    if world_size > 1:
        if stream.num_shards % world_size:
            raise ValueError(
                f"{source} split {split!r} has {stream.num_shards} shards, which {world_size} ranks cannot share "
                f"evenly; write it with --shards a multiple of {world_size}"
            )
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size, strategy="shards")
    return stream

