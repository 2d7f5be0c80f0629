"""How ``pretrain`` splits the global batch and holds the run directory, before any training.

``_pretrain`` runs here with the run itself (``_run``), the data check and the cross-rank
maximum replaced by recorders: what reaches the run (images per micro-batch and rank), who
takes the run directory's lock and what every rank learns when rank 0 cannot. Written for the
``pretrain-wiring`` mutation target (TESTING.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import virtex_train.pretrain as pretrain_module
from virtex_train.config import load_config
from virtex_train.distributed import DistEnv
from virtex_train.pretrain import PretrainError
from virtex_train.runlock import LOCK_NAME, RunLock, RunLockedError

pytestmark = pytest.mark.timeout(60)


class Recorded:
    """Stand-ins for ``_run``, ``check_data_paths`` and ``all_reduce_max``; what they saw."""

    def __init__(self, other_rank_refused: bool = False) -> None:
        self.other_rank_refused = other_rank_refused
        self.runs: list[dict[str, Any]] = []
        self.checked: list[Any] = []
        self.flags: list[float] = []

    def run(self, config: Any, output_dir: Path, env: Any, device: Any, *rest: Any) -> str:
        locked = (output_dir / LOCK_NAME).exists()
        self.runs.append({"per_rank": rest[-1], "locked": locked, "device": device})
        return "result"

    def all_reduce_max(self, flag: torch.Tensor) -> torch.Tensor:
        self.flags.append(float(flag))
        if self.other_rank_refused:
            flag.fill_(1.0)
        return flag


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    record = Recorded()
    monkeypatch.setattr(pretrain_module, "_run", record.run)
    monkeypatch.setattr(pretrain_module, "check_data_paths", record.checked.append)
    monkeypatch.setattr(pretrain_module.distributed, "all_reduce_max", record.all_reduce_max)
    return record


def _pretrain(
    output_dir: Path, batch: int, accumulation: int = 1, rank: int = 0, world: int = 1
) -> Any:
    config = load_config(None, ["train.num_workers=0"])
    config.train.batch_size = batch  # set after loading: the config's own check is bypassed
    config.train.grad_accumulation = accumulation
    env = DistEnv(rank=rank, world_size=world)
    device = torch.device("cpu")
    return pretrain_module._pretrain(config, output_dir, env, device, False, False, False)


@pytest.mark.parametrize(
    ("batch", "accumulation", "world", "per_rank"),
    [(12, 1, 1, 12), (12, 3, 2, 2), (4, 2, 2, 1), (6, 1, 3, 2)],
)
def test_each_rank_gets_the_batch_over_ranks_and_accumulation(
    batch: int, accumulation: int, world: int, per_rank: int, recorded: Recorded, tmp_path: Path
) -> None:
    assert _pretrain(tmp_path / "run", batch, accumulation, world=world) == "result"
    assert [r["per_rank"] for r in recorded.runs] == [per_rank]
    assert len(recorded.checked) == 1  # the data paths were checked first


@pytest.mark.parametrize(
    ("batch", "accumulation", "world"), [(6, 4, 1), (2, 1, 4), (6, 2, 2), (0, 1, 1), (0, 2, 2)]
)
def test_a_batch_that_does_not_split_is_refused_before_anything(
    batch: int, accumulation: int, world: int, recorded: Recorded, tmp_path: Path
) -> None:
    expected = (
        rf"train.batch_size={batch} \(global\) does not split into {world} rank\(s\) x "
        rf"{accumulation} accumulation step\(s\)"
    )
    with pytest.raises(PretrainError, match=expected):
        _pretrain(tmp_path / "run", batch, accumulation, world=world)
    assert recorded.runs == [] and recorded.checked == []
    assert not (tmp_path / "run").exists()


def test_rank_0_holds_the_lock_for_the_run_and_frees_it(recorded: Recorded, tmp_path: Path) -> None:
    _pretrain(tmp_path / "run", 4)
    assert recorded.runs[0]["locked"] and recorded.flags == [0.0]
    with RunLock(tmp_path / "run"):  # free again
        pass


def test_the_lock_is_freed_when_the_run_fails(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(pretrain_module, "_run", fail)
    with pytest.raises(RuntimeError, match="planted"):
        _pretrain(tmp_path / "run", 4)
    with RunLock(tmp_path / "run"):
        pass


def test_a_held_run_directory_is_refused_on_rank_0(recorded: Recorded, tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"), pytest.raises(RunLockedError):
        _pretrain(tmp_path / "run", 4)
    assert recorded.runs == [] and recorded.flags == [1.0]  # told the other ranks


def test_other_ranks_take_no_lock_and_stop_when_rank_0_could_not(
    recorded: Recorded, tmp_path: Path
) -> None:
    _pretrain(tmp_path / "run", 4, rank=1, world=2)
    assert recorded.runs[0]["locked"] is False and recorded.flags == [0.0]
    recorded.other_rank_refused = True
    with pytest.raises(PretrainError, match="rank 0 could not take the run directory's lock"):
        _pretrain(tmp_path / "other", 4, rank=1, world=2)
    assert len(recorded.runs) == 1 and recorded.flags == [0.0, 0.0]


def test_a_run_directory_that_cannot_be_made_is_refused_on_every_rank(
    recorded: Recorded, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):
        _pretrain(tmp_path / "file" / "run", 4)
    assert recorded.runs == [] and recorded.flags == [1.0]  # told the other ranks first
