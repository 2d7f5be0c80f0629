"""The probes' process-group helpers with two real gloo ranks (forked: no new interpreter)."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from virtex_eval.distributed import DistEnv, all_reduce_sum, gather_rows, shard_indices

pytestmark = pytest.mark.timeout(60)

WORLD = 2
# 7 rows over 2 ranks: shards of 4 and 3 rows (the padding path); each row says its index.
TOTAL = 7
ROWS = torch.arange(TOTAL * 3, dtype=torch.float32).reshape(TOTAL, 3)


def _rank(rank: int, store: str, out: Path) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
        ctx = DistEnv(rank=rank, world_size=WORLD)
        local = ROWS[shard_indices(TOTAL, rank, WORLD)]
        gathered = gather_rows(local, TOTAL, ctx)
        # 3 rows: shards of 2 and 1 (fewer rows than twice the ranks).
        few = gather_rows(ROWS[:3][shard_indices(3, rank, WORLD)], 3, ctx)
        summed = all_reduce_sum(torch.tensor([float(rank + 1)]), ctx)
        torch.save({"gathered": gathered, "few": few, "summed": summed}, out / f"rank{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def test_gather_rows_puts_two_ranks_rows_back_in_dataset_order(tmp_path: Path) -> None:
    # By hand: rank 0 holds rows 0, 2, 4, 6 and rank 1 rows 1, 3, 5.
    assert shard_indices(TOTAL, 0, WORLD) == [0, 2, 4, 6]
    assert shard_indices(TOTAL, 1, WORLD) == [1, 3, 5]
    context = multiprocessing.get_context("fork")
    store = tmp_path / "store"
    workers = [
        context.Process(target=_rank, args=(rank, str(store), tmp_path)) for rank in range(WORLD)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(45)
    errors = [p.read_text() for p in sorted(tmp_path.glob("*.err"))]
    assert not errors, errors
    assert [worker.exitcode for worker in workers] == [0, 0]
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # Every rank gets all 7 rows, row i being [3i, 3i+1, 3i+2].
        assert torch.equal(result["gathered"], ROWS), rank
        assert torch.equal(result["few"], ROWS[:3]), rank
        assert result["summed"].item() == 3.0  # 1 + 2


def test_one_process_returns_rows_as_they_are() -> None:
    local = ROWS[:3]
    assert gather_rows(local, 3, DistEnv()) is local
    value = torch.tensor([2.0])
    summed = all_reduce_sum(value, DistEnv())
    assert summed.item() == 2.0 and summed is not value
