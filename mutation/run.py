"""Mutation testing of the targets in targets.toml with cosmic-ray (``nox -s mutation``).

For each target: write a cosmic-ray config under ``.mutation/``, ``cosmic-ray init`` the
session, skip the mutants outside the target's functions and those of the bitwise/shift
operator families (on the floats and ints of these modules they only raise ``TypeError``: killed
by any test that runs the line, so they add time, not information), check the unmutated tests
pass (``cosmic-ray baseline``), ``cosmic-ray exec``, then print the score and every surviving
mutant. The score counts killed, timed-out and incompetent (not importable) mutants as killed.

Run it with the Python that has cosmic-ray; ``--python`` is the project's environment, which
runs the tests::

    python mutation/run.py --python .nox/virtex/bin/python cider-d voc07
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGETS = Path(__file__).with_name("targets.toml")
WORK = ROOT / ".mutation"
#: Operator families left out (see the module docstring).
EXCLUDED_OPERATORS = re.compile(r"ReplaceBinaryOperator_\w+_(BitOr|BitAnd|BitXor|LShift|RShift)$")


def _cosmic_ray(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", *args], check=True, env=env, cwd=ROOT)


def _check_imports_here(module: Path, python: str, env: dict[str, str]) -> None:
    """Fail unless ``python`` (with ``env``) imports ``module`` from this checkout: an environment
    whose editable installs point at another checkout would test unmutated sources, and every
    mutant would "survive"."""
    src = next(parent for parent in module.parents if parent.name == "src")
    name = ".".join(module.relative_to(src).with_suffix("").parts)
    found = subprocess.run(
        [python, "-c", f"import importlib.util; print(importlib.util.find_spec({name!r}).origin)"],
        check=True, env=env, cwd=ROOT, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if Path(found).resolve() != module.resolve():
        raise SystemExit(f"{python} imports {name} from {found}, not from {module}")


def _in_annotation(mutation: object, module: Path, cache: dict[Path, list[ast.expr]]) -> bool:
    """Whether the mutated operator lies inside an annotation of ``module`` and the module
    postpones their evaluation (``from __future__ import annotations``)."""
    if module not in cache:
        tree = ast.parse(module.read_text(encoding="utf-8"))
        found: list[ast.expr] = []
        postponed = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "__future__"
            and any(alias.name == "annotations" for alias in node.names)
            for node in tree.body
        )
        for node in ast.walk(tree) if postponed else ():
            if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
                found.append(node.annotation)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
                found.append(node.returns)
        cache[module] = found
    start = tuple(mutation.start_pos)  # type: ignore[attr-defined]
    return any(
        (a.lineno, a.col_offset) <= start <= (a.end_lineno or a.lineno, a.end_col_offset or 0)
        for a in cache[module]
    )


def _methods(module: Path) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """``{"Class.method": (start, end)}``: where each method of each class of ``module`` lies."""
    spans = {}
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    start = (child.lineno, child.col_offset)
                    end = (child.end_lineno or child.lineno, child.end_col_offset or 0)
                    spans[f"{node.name}.{child.name}"] = (start, end)
    return spans


def _wanted(mutation: object, functions: set[str], methods: dict[str, Any]) -> bool:
    """Whether the mutant lies in one of ``functions``: a definition name (every definition of
    that name: cosmic-ray's ``definition_name`` is unqualified) or ``Class.method`` (that one)."""
    name = mutation.definition_name  # type: ignore[attr-defined]
    if name in functions:
        return True
    start = tuple(mutation.start_pos)  # type: ignore[attr-defined]
    return any(
        qualified.rsplit(".", 1)[1] == name and span[0] <= start <= span[1]
        for qualified, span in methods.items()
        if qualified in functions
    )


def _skip_outside(session: Path, functions: set[str], module: Path) -> tuple[int, int]:
    """Mark as skipped the mutants outside ``functions``, of an excluded operator or inside an
    annotation (never evaluated under ``from __future__ import annotations``)."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    kept = skipped = 0
    cache: dict[Path, list[ast.expr]] = {}
    methods = _methods(module)
    if unknown := {f for f in functions if "." in f and f not in methods}:
        raise SystemExit(f"{module} has no method {sorted(unknown)}")
    with use_db(str(session)) as db:
        drop = []
        for item in db.pending_work_items:
            mutation = item.mutations[0]
            if (
                _wanted(mutation, functions, methods)
                and not EXCLUDED_OPERATORS.search(mutation.operator_name)
                and not _in_annotation(mutation, module, cache)
            ):
                kept += 1
            else:
                drop.append(item.job_id)
        skipped = len(drop)
        if drop:
            db.set_multiple_results(
                drop, WorkResult(output="outside the target", worker_outcome=WorkerOutcome.SKIPPED)
            )
    return kept, skipped


def _forget_survivors(session: Path) -> int:
    """Make the surviving and timed-out mutants of a finished session pending again (after
    adding tests: a killed mutant stays killed when tests are only added, but a timeout on a
    loaded machine may be a slow survivor)."""
    import sqlite3

    with sqlite3.connect(session) as db:
        cursor = db.execute(
            "DELETE FROM work_results WHERE test_outcome = 'SURVIVED' OR output = 'timeout'"
        )
        return cursor.rowcount


def _report(session: Path, module: Path) -> dict[str, object]:
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    lines = module.read_text(encoding="utf-8").splitlines()
    counts = {"killed": 0, "timeout": 0, "incompetent": 0, "survived": 0}
    survivors = []
    with use_db(str(session)) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            mutation = item.mutations[0]
            if result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                line = mutation.start_pos[0]
                survivors.append(
                    f"  line {line} ({mutation.definition_name}) {mutation.operator_name} "
                    f"#{mutation.occurrence}: {lines[line - 1].strip()}"
                )
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            elif result.output == "timeout":
                counts["timeout"] += 1
            else:
                counts["killed"] += 1
        pending = sum(1 for _ in db.pending_work_items)
    total = sum(counts.values())
    score = (total - counts["survived"]) / total if total else float("nan")
    return {"counts": counts, "total": total, "score": score, "pending": pending,
            "survivors": sorted(survivors)}  # fmt: skip


def run_target(
    name: str, target: dict, python: str, env: dict[str, str], survivors: bool = False
) -> dict[str, object]:
    module = ROOT / target["module"]
    original = module.read_bytes()
    WORK.mkdir(exist_ok=True)
    config, session = WORK / f"{name}.toml", WORK / f"{name}.sqlite"
    if not (survivors and session.is_file()):
        survivors = False
        session.unlink(missing_ok=True)
    tests = " ".join(shlex.quote(arg) for arg in target["tests"])
    command = f"{shlex.quote(python)} -m pytest -x -q -p no:cacheprovider {tests}"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(target['module'])}\n"
        f"timeout = {float(target.get('timeout', 60))}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        '[cosmic-ray.distributor]\nname = "local"\n',
        encoding="utf-8",
    )
    _check_imports_here(module, python, env)
    start = time.perf_counter()
    try:
        if survivors:
            forgotten = _forget_survivors(session)
            # A session made before a skip rule existed: apply today's rules to its survivors.
            kept, skipped = _skip_outside(session, set(target["functions"]), module)
            print(f"[{name}] {forgotten} survivors or timeouts forgotten; {kept} mutants to run")
        else:
            _cosmic_ray("init", str(config), str(session), env=env)
            kept, skipped = _skip_outside(session, set(target["functions"]), module)
            functions = ", ".join(target["functions"])
            print(f"[{name}] {kept} mutants in {functions} ({skipped} skipped)")
        _cosmic_ray("baseline", str(config), env=env)
        _cosmic_ray("exec", str(config), str(session), env=env)
    finally:
        # cosmic-ray restores each mutant; this also covers an interrupted run.
        if module.read_bytes() != original:
            module.write_bytes(original)
    report = _report(session, module)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main() -> int:
    targets = tomllib.loads(TARGETS.read_text(encoding="utf-8"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"targets (default: all of {list(targets)})")
    parser.add_argument("--python", required=True, help="the project's Python (runs the tests)")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-run the survivors and timeouts of each target's last session (after adding tests)",
    )
    args = parser.parse_args()
    unknown = [name for name in args.names if name not in targets]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; targets.toml has {list(targets)}")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        # The tests import this checkout's sources, whatever the environment has installed.
        "PYTHONPATH": os.pathsep.join(str(p) for p in sorted(ROOT.glob("packages/*/src"))),
    }
    results = {}
    for name in args.names or list(targets):
        report = run_target(name, targets[name], args.python, env, args.survivors)
        results[name] = report
        counts = report["counts"]
        print(
            f"[{name}] score {100 * report['score']:.1f}% of {report['total']} mutants "
            f"(killed {counts['killed']}, timeout {counts['timeout']}, "  # type: ignore[index]
            f"incompetent {counts['incompetent']}, survived {counts['survived']}) "  # type: ignore[index]
            f"in {report['seconds']} s"
        )
        for line in report["survivors"]:  # type: ignore[attr-defined]
            print(line)
    (WORK / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
