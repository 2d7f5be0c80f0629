"""``virtex-data`` on broken input: one ``Error:`` line, exit 1, nothing lost (issue 23).

Also ``synth --overwrite`` (refuses a non-empty folder without it, removes what the previous
dataset derived with it) and the bounded reprs of :mod:`virtex_data.config`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from virtex_data.cli import main
from virtex_data.config import DataConfig
from virtex_data.errors import brief, one_line

pytestmark = pytest.mark.timeout(180)


def _one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # A progress bar may precede it on the same terminal line (tqdm ends its frames with \r).
    errors = re.findall(r"Error: .*", result.output)
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _synth(outdir: Path, *extra: str) -> Result:
    args = ["synth", str(outdir), "--train", "6", "--val", "2", "--size", "32", "--workers", "1"]
    return CliRunner().invoke(main, [*args, *extra])


# ----------------------------------------------------------------------------- synth --overwrite
def test_synth_refuses_a_non_empty_folder_and_overwrite_removes_what_was_derived(
    tmp_path: Path,
) -> None:
    out = tmp_path / "synth"
    assert _synth(out).exit_code == 0
    # What the quickstart derives next to the images: tokenizer and LMDB files.
    for name in ("tokenizer.json", "train.lmdb", "train.lmdb-lock", "val.lmdb.partial"):
        (out / name).write_text("derived from the first dataset")
    before = _snapshot(out)

    _one_line_error(_synth(out, "--seed", "1"), str(out), "not empty", "--overwrite")
    assert _snapshot(out) == before  # nothing touched

    result = _synth(out, "--seed", "1", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "train", "val"]
    info = json.loads((out / "annotations" / "captions_train.json").read_text())["info"]
    assert info["seed"] == 1
    assert len(list((out / "train").iterdir())) == 6


def test_synth_overwrite_refuses_a_folder_that_is_not_a_synth_dataset(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "holiday.jpg").write_bytes(b"precious")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    _one_line_error(_synth(out, "--overwrite"), str(out), "not a virtex synth dataset")
    assert _snapshot(out) == before


def test_synth_into_an_empty_or_new_folder_needs_no_flag(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _synth(tmp_path / "empty").exit_code == 0
    assert _synth(tmp_path / "new" / "deeper").exit_code == 0


# ----------------------------------------------------------------------------- outputs
def test_unwritable_outputs_are_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(_synth(blocker / "out"), "not writable", str(blocker / "out"))
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "a.png", "caption": "a cat"}\n')
    result = CliRunner().invoke(
        main,
        ["build-lmdb", "--captions", str(captions), "--images", str(tmp_path)]
        + ["--output", str(blocker / "x.lmdb")],
    )
    _one_line_error(result, "not writable", str(blocker))
    result = CliRunner().invoke(
        main, ["build-vocab", "--captions", str(captions), "--output", str(blocker / "t.json")]
    )
    _one_line_error(result, "not writable", str(blocker))
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _one_line_error(_synth(folder / "s"), "not writable", str(folder))
    finally:
        folder.chmod(0o755)


_READ_ONLY = """
set -e
mount --bind "$1" "$1" && mount -o remount,ro,bind "$1"
"$2" -m virtex_data synth "$1/s" --train 4 --val 2 || echo "exit $?"
"$2" -m virtex_data build-lmdb --captions "$3" --images "$1" --output "$1/x.lmdb" || echo "exit $?"
"""


def test_a_read_only_file_system_is_refused_even_for_root(tmp_path: Path) -> None:
    """A read-only bind mount in a private mount namespace (skipped where not permitted)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    folder = tmp_path / "ro"
    folder.mkdir()
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "a.png", "caption": "a cat"}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", _READ_ONLY, "sh", str(folder), sys.executable, str(captions)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if "mount:" in result.stderr:
        pytest.skip(f"cannot bind-mount: {result.stderr.strip()}")
    assert "Traceback" not in result.stderr
    assert result.stdout.count("exit 1") == 2, (result.stdout, result.stderr)
    lines = re.findall(r"Error: .*", result.stderr)
    assert len(lines) == 2 and all("Read-only file system" in line for line in lines), lines
    assert str(folder / "s") in lines[0] and str(folder) in lines[1]
    assert list(folder.iterdir()) == []


def test_a_full_disk_during_synth_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    def full(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as Pillow raises it: no file

    monkeypatch.setattr(Image.Image, "save", full)
    _one_line_error(_synth(tmp_path / "s"), "No space left on device", str(tmp_path / "s"))


def test_a_full_disk_during_build_lmdb_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lmdb

    import virtex_data.lmdb_writer as writer

    assert _synth(tmp_path / "s").exit_code == 0

    def full(*args: Any, **kwargs: Any) -> None:
        raise lmdb.DiskError("mdb_txn_commit: No space left on device")

    monkeypatch.setattr(writer, "build_lmdb", full)
    out = tmp_path / "t.lmdb"
    result = CliRunner().invoke(
        main,
        ["build-lmdb", "--captions", str(tmp_path / "s/annotations/captions_train.json")]
        + ["--images", str(tmp_path / "s/train"), "--output", str(out)],
    )
    _one_line_error(result, str(out), "No space left", "MiB free")


_SMALL_DISK = """
set -e
mount -t tmpfs -o size=64k tmpfs "$1"
"$2" -m virtex_data build-lmdb --captions "$3/annotations/captions_train.json" \
    --images "$3/train" --output "$1/t.lmdb" || echo "exit $?"
"$2" -m virtex_data synth "$1/s" --train 300 --val 2 --workers 1 || echo "exit $?"
"""


@pytest.mark.slow  # two interpreters importing torch: 20-35 s on 2 shared cores
def test_a_real_full_disk_is_one_line(tmp_path: Path) -> None:
    """A 64 KiB tmpfs in a private mount namespace (skipped where unshare is not allowed).

    The fast tests above simulate the same errors; this one checks what LMDB and Pillow really
    raise on a full disk (LMDB: ``mdb_txn_commit: Input/output error``).
    """
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here")
    data = tmp_path / "data"
    assert (
        CliRunner()
        .invoke(main, ["synth", str(data), "--train", "60", "--val", "2", "--workers", "1"])
        .exit_code
        == 0
    )
    mount = tmp_path / "small"
    mount.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", _SMALL_DISK, "sh", str(mount), sys.executable, str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if "mount:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    lines = re.findall(r"Error: .*", result.stderr)  # progress bars share its line
    assert "Traceback" not in result.stderr
    assert result.stdout.count("exit 1") == 2, (result.stdout, result.stderr)
    assert len(lines) == 2, result.stderr
    assert str(mount / "t.lmdb") in lines[0]
    assert str(mount / "s") in lines[1] and "No space left" in lines[1]


# ----------------------------------------------------------------------------- caption files
def test_caption_files_that_are_not_utf8_are_named(tmp_path: Path) -> None:
    captions = tmp_path / "latin1.csv"
    captions.write_bytes("image,caption\na.png,un café noir\n".encode("latin-1"))
    result = CliRunner().invoke(
        main, ["build-vocab", "--captions", str(captions), "--output", str(tmp_path / "t.json")]
    )
    _one_line_error(result, "latin1.csv", "not UTF-8")
    result = CliRunner().invoke(
        main,
        ["build-lmdb", "--captions", str(captions), "--images", str(tmp_path)]
        + ["--output", str(tmp_path / "x.lmdb")],
    )
    _one_line_error(result, "latin1.csv", "not UTF-8")
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "x.lmdb").exists()


def test_debug_lets_the_traceback_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTEX_DEBUG", raising=False)
    captions = tmp_path / "c.json"
    captions.write_text("{not json")
    args = ["build-vocab", "--captions", str(captions), "--output", str(tmp_path / "t.json")]
    quiet = CliRunner().invoke(main, args)
    assert quiet.exit_code != 0 and "Traceback" not in quiet.output
    loud = CliRunner().invoke(main, args, env={"VIRTEX_DEBUG": "1"})
    assert loud.exit_code == 1 and not isinstance(loud.exception, SystemExit)


# ----------------------------------------------------------------------------- bounded reprs
def _alias_bomb(depth: int = 9) -> list[Any]:
    """What PyYAML builds from a 400-byte alias bomb: 9 references to one list, 9 levels."""
    value: list[Any] = ["lol"] * 9
    for _ in range(depth - 1):
        value = [value] * 9
    return value


def test_config_errors_never_print_an_unbounded_value() -> None:
    bomb = _alias_bomb()  # repr() of it would be 9**9 strings: gigabytes
    start = time.perf_counter()
    with pytest.raises(ValueError, match="data.tokenizer") as caught:
        DataConfig.from_dict({"tokenizer": bomb})
    with pytest.raises(ValueError, match="data.max_caption_length") as other:
        DataConfig.from_dict({"max_caption_length": "x" * 10**6})
    assert time.perf_counter() - start < 2
    assert len(str(caught.value)) < 200 and len(str(other.value)) < 200
    assert len(brief(bomb)) <= 80


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import virtex_data.synth as synth

    def broken(*args: Any, **kwargs: Any) -> None:
        raise AttributeError("'NoneType' object has no attribute 'size'")

    monkeypatch.setattr(synth, "generate", broken)
    _one_line_error(_synth(tmp_path / "s"), "AttributeError: 'NoneType'", "--debug")


def test_one_line_names_the_file_of_an_os_error() -> None:
    error = OSError(errno.ELOOP, os.strerror(errno.ELOOP), "runs/x/loop")
    assert one_line(error) == f"{os.strerror(errno.ELOOP)}: runs/x/loop"
    assert one_line(ValueError("a\nb")) == "a b"
    assert len(one_line(ValueError("x" * 10_000))) <= 600
