"""``virtex_models.atomic_file``: the old file or the new one, never half, never a stray temp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtex_models.atomic_file import atomic_link, atomic_write, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_old_file_and_wraps_the_error(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def broken(handle: object) -> None:
        handle.write(b"12345")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(RuntimeError, match=r"a.bin: disk full after 5 bytes"):
        atomic_write(
            target,
            broken,
            wrap_error=lambda e, n: RuntimeError(f"{target.name}: {e} after {n} bytes"),
        )
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(OSError, match="disk full"):  # no wrapper: the error itself
        atomic_write(target, broken)


def test_written_file_gets_the_umask_permissions(tmp_path: Path) -> None:
    # mkstemp would make it 0600; a checkpoint must stay readable as a plain write leaves it.
    plain = tmp_path / "plain"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_link_to_itself_and_over_an_older_target(tmp_path: Path) -> None:
    source = tmp_path / "step.pt"
    source.write_bytes(b"new")
    final = tmp_path / "final.pt"
    final.write_bytes(b"old")
    atomic_link(source, final)
    assert final.read_bytes() == b"new" and os.path.samefile(source, final)
    # Linking again (same inode already): renaming a link onto the same file is a no-op on
    # POSIX that would leave the temporary name behind; nothing may be left.
    atomic_link(source, final)
    atomic_link(final, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt", "step.pt"]
