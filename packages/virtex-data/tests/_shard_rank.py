"""One rank of test_shards.py's two-process gloo test (started with torchrun's variables).

Reads one epoch of a shard set with the rank and world size taken from the process group,
through ``workers`` DataLoader workers, and saves the image ids it saw and the gathered shard
state to ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from virtex_data.shards import ShardLoader, build_shard_dataset
from virtex_data.tokenizer import CaptionTokenizer
from virtex_data.transforms import TrainTransform, TransformConfig


def main(spec: str, tokenizer_path: str, out: Path, workers: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tokenizer = CaptionTokenizer.from_file(tokenizer_path)
    dataset = build_shard_dataset(
        spec, "captioning", tokenizer, TrainTransform(TransformConfig(image_size=16)),
        shuffle_buffer=4, seed=5,
    )  # fmt: skip
    assert (dataset.progress.rank, dataset.progress.world_size) == (rank, 2)
    loader = DataLoader(
        dataset, batch_size=3, num_workers=workers, collate_fn=dataset.collate, drop_last=False
    )
    ids: list[int] = []
    for batch in ShardLoader(loader, dataset.progress):
        ids.extend(batch.image_ids.tolist())
    state = dataset.progress.state_dict()  # a collective: both ranks call it
    (out / f"rank{rank}.json").write_text(json.dumps({"ids": ids, "state": state}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
