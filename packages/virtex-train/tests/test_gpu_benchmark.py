"""``benchmarks/gpu.py``: its batch search, and its dry run's table (a subprocess, slow)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("limit", "start", "cap", "expected"),
    [(48, 2, 1024, 32), (1000, 32, 256, 256), (32, 32, 1024, 32), (63, 1, 64, 32)],
)
def test_batch_search_doubles_until_the_first_oom(
    monkeypatch: pytest.MonkeyPatch, limit: int, start: int, cap: int, expected: int
) -> None:
    gpu = load_script()
    tried: list[int] = []

    def fits(setup: object, batch: int) -> bool:  # stands in for "2 steps without OOM"
        tried.append(batch)
        return batch <= limit

    monkeypatch.setattr(gpu, "fits", fits)
    setup = gpu.Setup(None, True, "resnet18", 64, 64, 2, cap, start, 16, 0, "eager")
    assert gpu.largest_batch(setup) == expected
    # Powers-of-two multiples of the start, each tried once, ending at the first misfit or cap.
    assert tried == [start * 2**i for i in range(len(tried))]


def test_batch_search_stops_when_the_first_batch_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = load_script()
    monkeypatch.setattr(gpu, "fits", lambda setup, batch: False)
    setup = gpu.Setup(None, True, "resnet18", 64, 64, 2, 64, 8, 16, 0, "eager")
    with pytest.raises(SystemExit, match="batch 8 does not fit"):
        gpu.largest_batch(setup)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_run_prints_the_full_table() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("DRY RUN")
    table = [line for line in lines if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == list(load_script().COLUMNS)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]
    assert [row[0] for row in rows] == [
        "train bf16",
        "train bf16 compile",
        "data CPU decode",
        "data GPU decode",
        "caption beam-5",
    ]
    assert all(len(row) == len(header) for row in rows)
    for row in rows:
        assert float(row[3]) > 0  # img/s
    assert rows[0][4] == "1.00x" and rows[2][4] == "1.00x"  # baselines of their pairs
    assert rows[0][5].endswith("%") and rows[1][5].endswith("%")  # MFU on the CPU's peak
    assert "backend eager" in rows[1][7]  # compiled, not an eager fallback
