"""The benchmark scripts run and compare equal captions (slow: excluded by default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["decoding.py", "train_step.py"])
def test_benchmark_quick_run_prints_a_table(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 3
    assert "differ" not in done.stdout and "failed" not in done.stdout
