"""SPICE (Anderson et al. 2016), only when Java and the SPICE jar with its CoreNLP jars are present.

SPICE parses captions into scene graphs with Stanford CoreNLP 3.6.0, which the SPICE jar does not
ship and the ``pycocoevalcap`` package downloads at first use; this module never downloads.
It looks for ``spice-1.0.jar`` in ``$VIRTEX_SPICE_JAR`` (the jar or its folder), then in
``pycocoevalcap``'s ``spice`` folder, and needs ``lib/stanford-corenlp-3.6.0.jar`` and
``lib/stanford-corenlp-3.6.0-models.jar`` next to it. Otherwise :class:`SpiceUnavailable` says
exactly what is missing.

Captions are PTB-tokenised (:func:`virtex_eval.ptb.coco_tokenize`) before scoring, as the COCO
toolkit does; the score is the mean of SPICE's per-image "All" F-score.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from virtex_eval.ptb import coco_tokenize

__all__ = ["SPICE_JAR_NAME", "SpiceUnavailable", "find_spice_jar", "spice_score"]

K = TypeVar("K", bound=Hashable)

SPICE_JAR_NAME = "spice-1.0.jar"
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class SpiceUnavailable(RuntimeError):
    """SPICE cannot run here; the message says what is missing and how to provide it."""


def _candidates() -> list[Path]:
    found: list[Path] = []
    env = os.environ.get("VIRTEX_SPICE_JAR")
    if env:
        path = Path(env)
        found.append(path / SPICE_JAR_NAME if path.is_dir() else path)
    try:
        from pycocoevalcap.spice import spice as module
    except ImportError:
        return found
    found.append(Path(module.__file__).parent / SPICE_JAR_NAME)
    return found


def find_spice_jar() -> Path:
    """The usable SPICE jar.

    Raises:
        SpiceUnavailable: no ``java``, no jar, or the CoreNLP 3.6.0 jars missing from ``lib/``.
    """
    if shutil.which("java") is None:
        raise SpiceUnavailable("SPICE needs Java (a `java` executable on PATH); none found")
    problems = []
    for jar in _candidates():
        if not jar.is_file():
            problems.append(f"{jar} does not exist")
            continue
        missing = [name for name in _CORENLP_JARS if not (jar.parent / "lib" / name).is_file()]
        if missing:
            problems.append(f"{jar.parent / 'lib'} lacks {', '.join(missing)}")
            continue
        return jar
    hint = "; ".join(problems) if problems else "no SPICE jar found"
    raise SpiceUnavailable(
        f"SPICE is unavailable: {hint}. Put {SPICE_JAR_NAME} and lib/ with "
        f"{' and '.join(_CORENLP_JARS)} (from stanford-corenlp-full-2015-12-09.zip) in a folder "
        "and set VIRTEX_SPICE_JAR to it. CIDEr, BLEU and ROUGE-L need none of this."
    )


def spice_score(
    predictions: Mapping[K, str],
    references: Mapping[K, Sequence[str]],
    *,
    jar: str | os.PathLike[str] | None = None,
    java: str = "java",
    memory: str = "8G",
) -> tuple[float, dict[K, float]]:
    """SPICE F-score: ``(mean over images, {image id: score})``.

    Raises:
        SpiceUnavailable: see :func:`find_spice_jar`.
        RuntimeError: the SPICE process failed (its output is included).
    """
    spice_jar = Path(jar) if jar is not None else find_spice_jar()
    keys = list(predictions)
    by_name = {str(index): key for index, key in enumerate(keys)}
    records = [
        {
            "image_id": str(index),
            "test": coco_tokenize(predictions[key]),
            "refs": [coco_tokenize(ref) for ref in references[key]],
        }
        for index, key in enumerate(keys)
    ]
    with tempfile.TemporaryDirectory(prefix="virtex-spice-") as folder:
        source = Path(folder) / "input.json"
        target = Path(folder) / "output.json"
        source.write_text(json.dumps(records), encoding="utf-8")
        command = [java, "-jar", f"-Xmx{memory}", str(spice_jar), str(source)]
        command += ["-cache", str(Path(folder) / "cache"), "-out", str(target), "-subset"]
        command += ["-silent"]
        result = subprocess.run(
            command, cwd=spice_jar.parent, capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not target.is_file():
            raise RuntimeError(
                f"SPICE failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}"
            )
        output = json.loads(target.read_text(encoding="utf-8"))
    per_image: dict[K, float] = {}
    for item in output:
        value = item["scores"]["All"]["f"]
        per_image[by_name[str(item["image_id"])]] = float("nan") if value is None else float(value)
    finite = [v for v in per_image.values() if not math.isnan(v)]
    return (sum(finite) / len(finite) if finite else float("nan")), per_image
