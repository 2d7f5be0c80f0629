"""Shared fixtures: a tiny built-in dataset, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtex_data.synth import generate


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train / 12 val images of 32 px (PNG)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=40, val=12, size=32, seed=3, workers=1, progress=False)
    return root
