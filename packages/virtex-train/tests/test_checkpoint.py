"""Atomic checkpoint files, pruning, the latest pointer, RNG state and self-contained loading."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from virtex_train.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    package_versions,
    rng_state,
    set_rng_state,
)


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    atomic_save({"format_version": FORMAT_VERSION, "rng": rng_state()}, tmp_path / "r.pt")
    expected = _draws()
    _draws()
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])  # weights_only=True inside
    assert _draws() == expected


def test_manager_keeps_last_k_and_points_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None
    for step in (10, 20, 30):
        path = manager.save({"format_version": FORMAT_VERSION, "step": step}, step)
    assert path.name == "step_0000030.pt"
    assert manager.steps() == [20, 30]
    assert (tmp_path / "latest").read_text().strip() == "step_0000030.pt"
    assert load_checkpoint(manager.latest())["step"] == 30  # type: ignore[arg-type]
    final = manager.finalize(path)
    assert final.samefile(path)
    (tmp_path / "latest").unlink()  # a lost pointer falls back to the newest step file
    assert manager.latest() == path
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_failed_torch_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({"format_version": FORMAT_VERSION, "step": 1, "w": torch.ones(3)}, 1)

    def full_disk(obj: object, handle: object) -> None:
        handle.write(b"partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    free = shutil.disk_usage(tmp_path).free / 2**20
    with pytest.raises(CheckpointError, match=r"step_0000002\.pt.*No space left") as caught:
        manager.save({"format_version": FORMAT_VERSION, "step": 2}, 2)
    monkeypatch.undo()
    # torch reports a full disk as "unexpected pos": the message says what was written and free.
    message = str(caught.value)
    assert "0.0 MiB written before the failure" in message
    reported = float(message.split("MiB written before the failure, ")[1].split(" MiB free")[0])
    assert abs(reported - free) < 512
    assert manager.steps() == [1]
    assert load_checkpoint(manager.latest())["step"] == 1  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001.pt"]


def test_failed_rename_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "c.pt"
    atomic_save({"format_version": FORMAT_VERSION, "v": 1}, target)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CheckpointError, match="Input/output error"):
        atomic_save({"format_version": FORMAT_VERSION, "v": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_package_versions_name_ours() -> None:
    versions = package_versions()
    assert versions["torch"] == str(torch.__version__)
    assert all(type(v) is str for v in versions.values())  # weights_only-loadable
    assert versions["virtex_train"] == "0.1.0"


def _save_steps(manager: CheckpointManager, *steps: int) -> None:
    for step in steps:
        manager.save({"format_version": FORMAT_VERSION, "step": step}, step)


def test_default_keeps_three_and_keep_last_must_be_positive(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    _save_steps(manager, 1, 2, 3, 4, 5)
    assert manager.steps() == [3, 4, 5]
    one = CheckpointManager(tmp_path / "one", keep_last=1)
    _save_steps(one, 7, 8)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["latest", "step_0000008.pt"]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"keep_last must be at least 1, got {bad}"):
            CheckpointManager(tmp_path, keep_last=bad)


def test_step_files_are_named_and_listed_by_number(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert manager.path_for(42) == tmp_path / "checkpoints" / "step_0000042.pt"
    assert manager.steps() == [] and manager.latest() is None  # no folder yet
    (tmp_path / "checkpoints").mkdir()
    for name in ("step_0000100.pt", "step_0000020.pt", "step_12.pt.tmp", "final.pt", "notes"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert manager.steps() == [20, 100]  # ascending by number, other files ignored


def test_latest_falls_back_to_the_newest_step_file(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=5)
    _save_steps(manager, 10, 30, 20)
    assert manager.latest() == tmp_path / "step_0000020.pt"  # what the pointer names
    pointer = tmp_path / "latest"
    # A pointer naming a file that is gone, an empty one: the highest step, not the last saved.
    for text in ("step_0000040.pt\n", "", "\n"):
        pointer.write_text(text)
        assert manager.latest() == tmp_path / "step_0000030.pt", repr(text)
    pointer.write_bytes(b"\xff\xfe step")
    with pytest.raises(CheckpointError, match="latest: unreadable pointer"):
        manager.latest()


@pytest.mark.parametrize("name", ["..", ".", "../x.pt", "/tmp/x.pt", "sub/step_0000010.pt"])
def test_latest_refuses_a_pointer_outside_its_folder(tmp_path: Path, name: str) -> None:
    manager = CheckpointManager(tmp_path / "run")
    _save_steps(manager, 10)
    (tmp_path / "run" / "sub").mkdir()
    (tmp_path / "run" / "sub" / "step_0000010.pt").write_bytes(b"")
    (tmp_path / "run" / "latest").write_text(name + "\n")
    with pytest.raises(CheckpointError, match="outside"):
        manager.latest()


def test_refused_pointer_message_shows_the_first_100_characters(tmp_path: Path) -> None:
    name = "../" + "x" * 200
    (tmp_path / "latest").write_text(name)
    with pytest.raises(CheckpointError) as caught:
        CheckpointManager(tmp_path).latest()
    assert repr(name[:100]) in str(caught.value)
    assert name[:101] not in str(caught.value)


def test_a_checkpoint_that_cannot_be_pruned_does_not_fail_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(tmp_path, keep_last=1)
    _save_steps(manager, 1)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert manager.save({"format_version": FORMAT_VERSION, "step": 2}, 2).name == "step_0000002.pt"
    monkeypatch.undo()
    assert manager.steps() == [1, 2]
    assert load_checkpoint(manager.latest())["step"] == 2  # type: ignore[arg-type]


def test_text_and_final_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "note", "caf\u00e9\n")
    assert (tmp_path / "note").read_bytes() == "caf\u00e9\n".encode()
    manager = CheckpointManager(tmp_path)
    _save_steps(manager, 5)
    final = manager.finalize(tmp_path / "step_0000005.pt")
    assert final == tmp_path / "final.pt"
    assert load_checkpoint(final)["step"] == 5


# ------------------------------------------------- loading, the training layout, versions, RNG
def test_load_refuses_an_older_or_missing_format_version(tmp_path: Path) -> None:
    for name, content in [("old.pt", {"format_version": 0}), ("none.pt", {"step": 3})]:
        torch.save(content, tmp_path / name)
    with pytest.raises(CheckpointError, match=r"old.pt: format_version 0 is not 1"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"none.pt: format_version None is not 1"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"format_version": 1, "step": 3}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt") == {"format_version": 1, "step": 3}


def test_training_checkpoint_is_the_model_the_trainer_state_and_the_versions() -> None:
    from types import SimpleNamespace

    from virtex_train.checkpoint import training_checkpoint

    model = SimpleNamespace(to_dict=lambda: {"format_version": 1, "model": {"w": 1}})
    state = {"step": 7, "optimizer": {"lr": 0.1}}
    saved = training_checkpoint(model, state)  # type: ignore[arg-type]
    assert saved == {
        "format_version": 1, "model": {"w": 1}, "step": 7, "optimizer": {"lr": 0.1},
        "versions": package_versions(),
    }  # fmt: skip


def test_package_versions_fall_back_to_the_installed_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib
    import importlib.metadata

    real_import, real_version = importlib.import_module, importlib.metadata.version

    def import_module(name: str) -> object:
        if name in ("torchvision", "virtex_data"):  # not importable here
            raise ImportError(name)
        return real_import(name)

    def version(name: str) -> str:
        if name == "virtex-data":  # nor installed
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    expected_torchvision = real_version("torchvision")
    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(importlib.metadata, "version", version)
    versions = package_versions()
    assert versions["torchvision"] == expected_torchvision
    assert "virtex_data" not in versions and versions["virtex_models"] == "0.1.0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_cuda_rng_state_is_left_alone_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # A checkpoint of a GPU run resumed on a CPU: the CPU generators are restored, and the CUDA
    # state is not handed to torch.cuda (which would queue it silently until a first CUDA call).
    handed: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", handed.append)
    torch.manual_seed(5)
    state = {**rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    expected = _draws()
    set_rng_state(state)
    assert _draws() == expected and handed == []


@pytest.mark.gpu
def test_cuda_rng_state_round_trips() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.cuda.manual_seed_all(7)
    state = rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda").tolist()
    torch.rand(3, device="cuda")
    set_rng_state(state)
    assert torch.rand(3, device="cuda").tolist() == expected
