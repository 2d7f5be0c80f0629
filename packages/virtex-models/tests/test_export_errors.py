"""``python -m virtex_models.export`` on bad files: one ``Error:`` line, exit 1 (issue 23).

Also: :func:`virtex_models.torchfile.load_weights_only` says what a non-checkpoint file is
(issue 16), and :class:`ModelConfig` errors print bounded values (YAML alias bombs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from virtex_models import ModelConfig
from virtex_models.export import main
from virtex_models.torchfile import describe_file, load_weights_only


def _one_line(text: str, *needles: str) -> str:
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), text
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (json.dumps({"model": {}}).encode(), "not a PyTorch checkpoint (it is JSON text)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), "not a PyTorch checkpoint (it is a PNG image)"),
        (b"", "not a PyTorch checkpoint (it is an empty file)"),
        (b"PK\x03\x04" + bytes(60), "a damaged or truncated torch file"),
    ],
)
def test_export_of_a_bad_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, what: str
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    out = tmp_path / "out.pth"
    assert main([str(bad), str(out)]) == 1
    captured = capsys.readouterr()
    _one_line(captured.err, str(bad), what, "expected a PyTorch checkpoint")
    assert "weights_only" not in captured.err
    assert not out.exists() and not (tmp_path / "out.pth.tmp").exists()


def test_export_of_a_missing_file_and_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "none.pt"), str(tmp_path / "o.pth")]) == 1
    _one_line(capsys.readouterr().err, "none.pt", "no such checkpoint file")
    with pytest.raises(ValueError, match="none.pt"):
        main([str(tmp_path / "none.pt"), str(tmp_path / "o.pth"), "--debug"])


def test_export_as_a_module_prints_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0"}')
    result = subprocess.run(
        [sys.executable, "-m", "virtex_models.export", str(bad), str(tmp_path / "o.pth")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    _one_line(result.stderr, "tokenizer.json", "JSON text")


class Payload:
    """A class the weights-only unpickler does not admit."""


def test_a_pickle_with_objects_is_refused_without_rerun_advice(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(ValueError) as caught:
        load_weights_only(path)
    message = str(caught.value)
    assert "refuses" in message or "refused" in message
    assert "weights_only=False" not in message and "\n" not in message


def test_describe_file_by_magic_bytes(tmp_path: Path) -> None:
    cases = {"a.json": b" [1, 2]", "a.yaml": b"model:\n  kind: x\n", "a.jpg": b"\xff\xd8\xff\xe0"}
    names = {"a.json": "JSON text", "a.yaml": "text (YAML or other)", "a.jpg": "a JPEG image"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert describe_file(tmp_path / name) == names[name]


def _alias_bomb(depth: int = 9) -> list[Any]:
    value: list[Any] = ["lol"] * 9
    for _ in range(depth - 1):
        value = [value] * 9
    return value


def test_model_config_errors_print_bounded_values() -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"model.visual.name") as caught:
        ModelConfig.from_dict({"visual": {"name": _alias_bomb()}})
    with pytest.raises(ValueError, match=r"model.textual.width") as other:
        ModelConfig.from_dict({"textual": {"width": "9" * 10**6}})
    assert time.perf_counter() - start < 2
    assert len(str(caught.value)) < 300 and len(str(other.value)) < 300
