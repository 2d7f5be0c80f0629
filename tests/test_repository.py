"""Repository-level promises: CI runs the README's test command, every package is complete."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "models", "train", "eval")


def _nox_commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.match(r"^\s*nox( |$)", line)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = _nox_commands((REPO / ".ci" / "run").read_text())
    assert len(ci) == 1, f".ci/run should call nox once, found {ci}"
    readme = (REPO / "README.md").read_text()
    assert ci[0] in _nox_commands(readme), f"README does not show {ci[0]!r}"


@pytest.mark.parametrize("name", PACKAGES)
def test_package_has_metadata_docs_and_marker(name: str) -> None:
    folder = REPO / "packages" / f"virtex-{name}"
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"virtex-{name}"
    assert project["version"] == "0.1.0"
    for required in ("README.md", "CHANGELOG.md", f"src/virtex_{name}/py.typed"):
        assert (folder / required).exists(), f"virtex-{name} lacks {required}"
    init = (folder / "src" / f"virtex_{name}" / "__init__.py").read_text()
    assert '__version__ = "0.1.0"' in init


def test_constraints_pin_the_tested_torch() -> None:
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def _string_constants(path: Path) -> set[str]:
    """String literals of a module, except the names listed in ``__all__`` (Python objects that
    happen to share a kind's name, like ``virtex_models.hub.captioning``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exported: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            exported |= {id(item) for item in ast.walk(node.value)}
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in exported
    }


def test_no_objective_kind_is_spelled_in_more_than_three_source_files() -> None:
    # The objective registry is the one place that knows the kinds: the rest asks it.
    from virtex_models.registry import objectives

    sources = sorted(REPO.glob("packages/*/src/**/*.py"))
    constants = {path: _string_constants(path) for path in sources}
    kinds = set(objectives())
    assert {"bicaptioning", "captioning", "cappa"} <= kinds
    for kind in sorted(kinds):
        spelled = [str(p.relative_to(REPO)) for p, strings in constants.items() if kind in strings]
        assert 1 <= len(spelled) <= 3, (kind, spelled)


@pytest.mark.parametrize("module", ["atomic_file.py", "strict_config.py"])
def test_the_two_copies_of_a_shared_helper_are_identical(module: str) -> None:
    # data and models never import each other, so each holds the helper (see its docstring).
    data = REPO / "packages/virtex-data/src/virtex_data" / module
    models = REPO / "packages/virtex-models/src/virtex_models" / module
    assert data.read_bytes() == models.read_bytes(), f"{data} and {models} differ: copy one over"
