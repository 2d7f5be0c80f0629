"""Every repository path named in a ``--help`` text or a README code example exists (issue 16).

``virtex-train submit --help`` once showed ``configs/pretrain/bicaptioning_r50.yaml``, a file
that never existed. This test collects the help text of every command of every CLI (and of
``python -m virtex_models.export``) and the fenced code blocks of every README, finds tokens that
start with a tracked top-level folder of the repository (``configs/``, ``demo/``, ``packages/``
...), and checks each names a file or folder (or, with ``*``, matches one).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def _top_level_folders() -> list[str]:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    if not tracked:  # not a git checkout (an sdist): the folders present
        return sorted(p.name for p in REPO.iterdir() if p.is_dir() and p.name[0] not in "._")
    return sorted({path.split("/")[0] for path in tracked if "/" in path})


def _paths_in(text: str, folders: list[str]) -> set[str]:
    alternatives = "|".join(re.escape(folder) for folder in folders)
    # A token that starts a path (not the tail of "runs/configs/..." or a URL), and its
    # characters up to whitespace, a quote, a bracket, a comma or a trailing period.
    pattern = re.compile(rf"(?<![\w./:-])((?:{alternatives})/[\w.*/{{}},-]*[\w*/}}])")
    found: set[str] = set()
    for match in pattern.finditer(text):
        found.update(path.rstrip("/") for path in _expand_braces(match.group(1)))
    return found


def _expand_braces(token: str) -> list[str]:
    """Shell brace expansion of one level: ``a/{x,y}/b`` -> ``a/x/b``, ``a/y/b``."""
    found = re.search(r"\{([^{}]*)\}", token)
    if found is None:
        return [token.rstrip(",")]
    head, tail = token[: found.start()], token[found.end() :]
    return [p for part in found.group(1).split(",") for p in _expand_braces(head + part + tail)]


def _exists(path: str) -> bool:
    if "*" in path:
        return any(REPO.glob(path))
    return (REPO / path).exists()


def _help_texts() -> dict[str, str]:
    from virtex_data.cli import main as data_main
    from virtex_eval.cli import main as eval_main
    from virtex_models.export import main as export_main
    from virtex_train.cli import main as train_main

    texts: dict[str, str] = {}

    def walk(command: click.Command, prefix: list[str], root: click.Command) -> None:
        name = " ".join(prefix)
        result = CliRunner().invoke(root, [*prefix[1:], "--help"], prog_name=prefix[0])
        assert result.exit_code == 0, (name, result.output)
        texts[name] = result.output
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                walk(sub, [*prefix, sub_name], root)

    for prog, group in (
        ("virtex-data", data_main),
        ("virtex-train", train_main),
        ("virtex-eval", eval_main),
    ):
        walk(group, [prog], group)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        export_main(["--help"])
    texts["python -m virtex_models.export"] = out.getvalue()
    return texts


def _readme_code() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for readme in sorted(
        [REPO / "README.md", *REPO.glob("*/README.md"), *REPO.glob("*/*/README.md")]
    ):
        text = readme.read_text(encoding="utf-8")
        code = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        code += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        blocks[str(readme.relative_to(REPO))] = "\n".join(code)
    return blocks


def test_the_path_finder_finds_and_checks_paths() -> None:
    folders = ["configs", "demo"]
    text = (
        "virtex-train submit configs/pretrain/nope.yaml -o runs/configs/x\n"
        "see https://github.com/configs/a and demo/README.md, or configs/pretrain/*.yaml.\n"
        "pip install demo/{a,b}"
    )
    assert _paths_in(text, folders) == {
        "configs/pretrain/nope.yaml",
        "demo/README.md",
        "configs/pretrain/*.yaml",
        "demo/a",
        "demo/b",
    }
    assert not _exists("configs/pretrain/nope.yaml")
    assert _exists("demo/README.md") and _exists("configs/pretrain/*.yaml")


@pytest.mark.timeout(180)
def test_every_repository_path_in_help_texts_exists() -> None:
    folders = _top_level_folders()
    texts = _help_texts()
    assert len(texts) >= 12  # three groups, their commands, export
    missing = {
        f"{name}: {path}"
        for name, text in texts.items()
        for path in _paths_in(text, folders)
        if not _exists(path)
    }
    assert not missing, sorted(missing)


def test_every_repository_path_in_readme_examples_exists() -> None:
    folders = _top_level_folders()
    blocks = _readme_code()
    assert "README.md" in blocks and len(blocks) >= 5
    # A package README may name its own files relative to its folder (tests/test_x.py).
    missing = {
        f"{name}: {path}"
        for name, text in blocks.items()
        for path in _paths_in(text, folders)
        if not _exists(path) and not _exists(f"{Path(name).parent}/{path}")
    }
    assert not missing, sorted(missing)
