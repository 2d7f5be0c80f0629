"""The documented command chain on the built-in data, and ``python -m virtex_data``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from virtex_data.cli import main
from virtex_data.lmdb_reader import LmdbReader
from virtex_data.tokenizer import CaptionTokenizer


def test_synth_build_vocab_build_lmdb_inspect_chain(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "synth"

    def ok(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    ok("synth", str(out), "--train", "30", "--val", "6", "--size", "32", "--workers", "1")
    ok(
        "build-vocab",
        "--captions",
        str(out / "annotations/captions_train.json"),
        "--vocab-size",
        "120",
        "--output",
        str(out / "tokenizer.json"),
    )
    for split in ("train", "val"):
        ok(
            "build-lmdb",
            "--captions",
            str(out / f"annotations/captions_{split}.json"),
            "--images",
            str(out / split),
            "--output",
            str(out / f"{split}.lmdb"),
            "--tokenizer",
            str(out / "tokenizer.json"),
            "--workers",
            "2",
        )
    printed = ok("inspect", str(out / "train.lmdb"))
    assert "30 records" in printed
    tokenizer = CaptionTokenizer.from_file(out / "tokenizer.json")
    reader = LmdbReader(out / "val.lmdb")
    assert len(reader) == 6
    assert reader.manifest.tokenizer_sha256 == tokenizer.sha256


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in ("build-vocab", "build-lmdb", "synth", "inspect"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output and "Example" in result.output


def test_python_dash_m_runs_the_cli() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    result = subprocess.run(
        [sys.executable, "-m", "virtex_data", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("build-vocab", "build-lmdb", "synth", "inspect"):
        assert command in result.stdout
