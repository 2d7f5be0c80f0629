"""``virtex-eval`` on broken input: one ``Error:`` line, exit 1, no work done (issues 16, 23).

--device names what exists, outputs are checked writable before a model loads, a file that is
not a checkpoint says what it is, a symlink loop in a run directory is named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from virtex_eval.cli import main

pytestmark = pytest.mark.timeout(120)


def _one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = re.findall(r"Error: .*", result.output)
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0]), result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


#: Each command that takes --device, with the least else it needs to reach the device check.
DEVICE_COMMANDS = {
    "caption": ["--checkpoint", "{missing}"],
    "zero-shot": ["--checkpoint", "{missing}"],
    "retrieval": ["--checkpoint", "{missing}", "--captions", "{missing}", "--images", "{missing}"],
    "features": ["--weights", "random", "--out", "{out}"],
    "voc07-svm": ["--weights", "random", "--voc-root", "{missing}"],
    "linear": ["--weights", "random", "--train", "{missing}", "--val", "{missing}"],
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_a_gpu_is_one_line(tmp_path: Path, command: str, device: str) -> None:
    rest = [
        a.format(missing=tmp_path / "missing", out=tmp_path / "f.pt")
        for a in DEVICE_COMMANDS[command]
    ]
    result = CliRunner().invoke(main, [command, "--device", device, *rest])
    _one_line_error(result, f"--device {device}", "not available", "available: cpu")
    assert list(tmp_path.iterdir()) == []


def test_every_device_option_is_checked() -> None:
    """A new command with --device gets the check too (no list to forget)."""
    for name, command in main.commands.items():
        for param in command.params:
            if param.name == "device":
                assert param.callback is not None, name
                assert name in DEVICE_COMMANDS, name


def test_unwritable_output_is_refused_before_the_checkpoint_is_read(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(
        main,
        ["caption", "--output", str(blocker / "c.json"), "--checkpoint", str(tmp_path / "none")]
        + [str(tmp_path)],
    )
    _one_line_error(result, "not writable", str(blocker))


def test_a_tokenizer_as_checkpoint_says_what_it_is(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    result = CliRunner().invoke(main, ["caption", "--checkpoint", str(tokenizer), str(image)])
    line = _one_line_error(result, "tokenizer.json", "not a PyTorch checkpoint (it is JSON text)")
    assert "expected a PyTorch checkpoint" in line and "weights_only" not in result.output


def test_a_symlink_loop_in_a_run_directory_is_named(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    (run / "loop.json").symlink_to("loop.json")
    result = CliRunner().invoke(main, ["report", str(run)])
    _one_line_error(result, "symbolic links", "loop.json")
    assert not (run / "report.html").exists()
