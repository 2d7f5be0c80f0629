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


# ----------------------------------------------------------------------------- which device
# NCCL (the backend init_distributed picks for a CUDA device) gathers only CUDA tensors; gloo
# (picked for every other device) only CPU tensors. Without GPUs, a tensor "moved" to a
# non-CPU device by ``.to(device)`` becomes one of these stand-ins (a CPU tensor of a subclass
# that survives torch operations, as a device does), and ``.cpu()`` / ``.to(cpu)`` turns it back.
class _OnDevice(torch.Tensor):
    kind = ""


class _OnCuda(_OnDevice):
    kind = "cuda"


class _OnMps(_OnDevice):
    kind = "mps"


_STAND_INS: dict[str, type[_OnDevice]] = {"cuda": _OnCuda, "mps": _OnMps}


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return torch.Tensor.clone(tensor).as_subclass(torch.Tensor)


def _where(tensor: torch.Tensor) -> str:
    return tensor.kind if isinstance(tensor, _OnDevice) else tensor.device.type


@pytest.fixture
def fake_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Tensor.to(device)`` / ``Tensor.cpu()`` move between CPU and the stand-in devices."""
    original_to, original_cpu = torch.Tensor.to, torch.Tensor.cpu

    def to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        targets = [a for a in (*args, kwargs.get("device")) if isinstance(a, torch.device | str)]
        if targets:
            device = torch.device(targets[0])  # type: ignore[arg-type]
            if device.type != "cpu":
                return _plain(self).as_subclass(_STAND_INS[device.type])
            if isinstance(self, _OnDevice):
                return _plain(self)
        return original_to(self, *args, **kwargs)  # type: ignore[arg-type]

    def cpu(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return _plain(self) if isinstance(self, _OnDevice) else original_cpu(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)


def _backend_check(device: torch.device, tensors: list[torch.Tensor]) -> None:
    """Raise as the backend ``init_distributed`` picks for ``device`` does on a wrong tensor."""
    wanted = "cuda" if device.type == "cuda" else "cpu"
    where = {_where(t) for t in tensors}
    if where != {wanted}:
        backend = "NCCL" if wanted == "cuda" else "gloo"
        raise RuntimeError(f"{backend} takes {wanted} tensors, got {sorted(where)}")


@pytest.mark.usefixtures("fake_devices")
@pytest.mark.parametrize("device_type", ["cuda", "mps", "cpu"])
@pytest.mark.parametrize("rank", [0, 1])
def test_collectives_get_tensors_on_the_backends_device(
    monkeypatch: pytest.MonkeyPatch, device_type: str, rank: int
) -> None:
    device = torch.device(device_type)
    ctx = DistEnv(rank=rank, world_size=WORLD, device=device)
    shards = [ROWS[shard_indices(TOTAL, r, WORLD)] for r in range(WORLD)]
    handed: list[str] = []

    def all_gather(parts: list[torch.Tensor], wire: torch.Tensor) -> None:
        _backend_check(device, [wire, *parts])
        handed.append(_where(wire))
        for part, shard in zip(parts, shards, strict=True):  # what each rank sent
            part.zero_()
            part[: len(shard)] = shard

    def all_reduce(wire: torch.Tensor) -> None:
        _backend_check(device, [wire])
        handed.append(_where(wire))
        wire += 10.0  # the other rank's value

    monkeypatch.setattr(dist, "all_gather", all_gather)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    gathered = gather_rows(shards[rank], TOTAL, ctx)
    value = torch.tensor([float(rank + 1)])
    summed = all_reduce_sum(value, ctx)
    wanted = "cuda" if device_type == "cuda" else "cpu"
    assert handed == [wanted, wanted]
    # Results come back on the inputs' device (plain CPU tensors here), in dataset order.
    assert type(gathered) is torch.Tensor and torch.equal(gathered, ROWS)
    assert type(summed) is torch.Tensor and summed.tolist() == [rank + 11.0]
    assert value.tolist() == [rank + 1.0]
