"""One rank of the 2-process streaming check (run by tests/test_data_streaming.py under torchrun, gloo on CPU).

Each rank streams its shards of a parquet scenes folder (minivlm_hf.data.streaming.stream_dataset), trains a tiny
DistributedDataParallel regressor on them for a few steps, and checks that a stream resumed from a saved state equals
the uninterrupted one. It writes what it saw to OUT/rank{R}.json.

    torchrun --nproc_per_node 2 tests/stream_ddp_worker.py PARQUET_DIR OUT
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from minivlm_hf.data.streaming import stream_dataset


def features(row: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(width, height, object count) -> total object area / image area: a target every row defines."""
    x = torch.tensor([row["width"] / 128, row["height"] / 128, len(row["objects"]["area"]) / 8])
    y = torch.tensor([sum(row["objects"]["area"]) / (row["width"] * row["height"])])
    return x, y


def main(folder: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    stream = stream_dataset(folder, "train")  # rank and world size from the process group
    seen, losses = [], []
    for row in stream:
        seen.append(row["image_id"])
        x, y = features(row)
        loss = torch.nn.functional.mse_loss(model(x[None]), y[None])
        optimizer.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients of the two ranks here
        optimizer.step()
        losses.append(loss.item())

    # resume: stop after `stop` rows, save the position, continue in a fresh stream from that state
    resumed = {}
    for stop in range(len(seen) + 1):
        first = stream_dataset(folder, "train")
        iterator = iter(first)
        head = [next(iterator)["image_id"] for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))
        second = stream_dataset(folder, "train")
        second.load_state_dict(state)
        resumed[stop] = head + [r["image_id"] for r in second]

    record = {
        "rank": rank, "world_size": world_size, "seen": seen, "losses": losses, "resumed": resumed,
        "parameters": [p.detach().flatten().tolist() for p in model.module.parameters()],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
