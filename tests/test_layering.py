"""The dependency direction of ARCHITECTURE.md, checked on every import statement.

    virtex_data      virtex_models        (siblings: neither imports the other)
            \\          /      \\
            virtex_train     virtex_eval  (eval imports models + data, never train)

Every ``.py`` file under ``packages/<pkg>/`` (sources and tests) and ``hubconf.py`` is parsed
with :mod:`ast`; lazy imports inside functions count too. Run ``python tests/test_layering.py``
for a report, or ``nox -s layering``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Internal packages each package may NOT import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "virtex_data": frozenset({"virtex_models", "virtex_train", "virtex_eval"}),
    "virtex_models": frozenset({"virtex_data", "virtex_train", "virtex_eval"}),
    "virtex_train": frozenset({"virtex_eval"}),
    "virtex_eval": frozenset({"virtex_train"}),
}

#: ``hubconf.py`` must work with torch + torchvision + virtex_models alone.
HUBCONF_FORBIDDEN = frozenset({"virtex_data", "virtex_train", "virtex_eval"})


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level module)`` for every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def layering_violations(repo: Path) -> list[str]:
    """One message per forbidden import, naming the file, the line and the import."""
    violations: list[str] = []
    for package, forbidden in FORBIDDEN.items():
        folder = repo / "packages" / package.replace("_", "-")
        for path in sorted(folder.rglob("*.py")):
            if any(part.startswith(".") or part == "build" for part in path.parts):
                continue
            for line, module in imported_modules(path):
                if module in forbidden:
                    violations.append(
                        f"{path.relative_to(repo)}:{line}: {package} must not import {module}"
                    )
    hubconf = repo / "hubconf.py"
    if hubconf.exists():
        for line, module in imported_modules(hubconf):
            if module in HUBCONF_FORBIDDEN:
                violations.append(f"hubconf.py:{line}: hubconf must not import {module}")
    return violations


def test_repository_respects_dependency_direction() -> None:
    violations = layering_violations(REPO)
    assert not violations, "forbidden imports:\n" + "\n".join(violations)


def test_every_package_is_scanned() -> None:
    for package in FORBIDDEN:
        folder = REPO / "packages" / package.replace("_", "-") / "src" / package
        assert (folder / "__init__.py").exists(), f"missing package {folder}"


@pytest.mark.parametrize(
    ("package", "statement"),
    [
        ("virtex_data", "import virtex_models"),
        ("virtex_models", "from virtex_data.batch import CaptionBatch"),
        ("virtex_eval", "def f():\n    import virtex_train.cli\n"),
        ("virtex_data", "from virtex_train import x"),
    ],
)
def test_forbidden_import_is_reported_with_its_file(
    tmp_path: Path, package: str, statement: str
) -> None:
    source = tmp_path / "packages" / package.replace("_", "-") / "src" / package / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text("import os\n" + statement + "\n")
    violations = layering_violations(tmp_path)
    assert len(violations) == 1
    relative = source.relative_to(tmp_path)
    line = 1 + next(i for i, text in enumerate(statement.splitlines(), 1) if "virtex" in text)
    assert violations[0].startswith(f"{relative}:{line}: {package} must not import")


def test_allowed_imports_pass(tmp_path: Path) -> None:
    source = tmp_path / "packages" / "virtex-train" / "src" / "virtex_train" / "ok.py"
    source.parent.mkdir(parents=True)
    source.write_text("import virtex_data\nfrom virtex_models import protocols\n")
    assert layering_violations(tmp_path) == []


if __name__ == "__main__":
    problems = layering_violations(REPO)
    print("\n".join(problems) or "layering ok")
    sys.exit(1 if problems else 0)


def module_import_graph(repo: Path) -> dict[str, set[str]]:
    """``{module: internal modules it imports}`` over the packages' sources, lazy imports too
    (imports under ``if TYPE_CHECKING:`` are left out: they never run, and exist to name a type
    without a runtime cycle).

    Package ``__init__`` modules are left out: re-exporting from submodules is their job, and a
    submodule importing a sibling through the package name is not a cycle between the two.
    """
    modules: dict[str, Path] = {}
    for path in sorted(repo.glob("packages/*/src/*/**/*.py")):
        if path.name != "__init__.py":
            src = next(p for p in path.parents if p.name == "src")
            modules[".".join(path.relative_to(src).with_suffix("").parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycles_between_modules() -> None:
    graph = module_import_graph(REPO)
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def is_cli_module(path: Path) -> bool:
    """A command-line module: ``cli.py``, ``cli_*.py`` or anything in a ``cli`` package."""
    return path.stem == "cli" or path.stem.startswith("cli_") or "cli" in path.parent.parts[-1:]


def test_click_is_imported_only_by_cli_modules() -> None:
    found = []
    for path in sorted(REPO.glob("packages/*/src/**/*.py")):
        if is_cli_module(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "click" for name in names):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, "click imported outside cli modules (library code holds no click):\n" + (
        "\n".join(found)
    )
