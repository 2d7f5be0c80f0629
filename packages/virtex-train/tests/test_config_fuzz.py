"""Property-based fuzzing (hypothesis) of the experiment-config loader: whatever a YAML file
holds (any text, any nesting of known and unknown keys, values of every type), ``load_config``
returns an ``ExperimentConfig`` or raises ``ConfigError`` naming the file; never anything else.

Examples are derandomised (the same on every run and machine); each test takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtex_train.config import ConfigError, ExperimentConfig, load_config

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Real keys of the schema (so that examples get past the unknown-key check and reach the
#: value checks), mixed with keys that do not exist.
KEYS = st.sampled_from(
    [
        "seed", "base", "data", "model", "optim", "train", "kind", "visual", "textual",
        "name", "layers", "width", "heads", "ffn", "lr", "cnn_lr", "schedule", "warmup_steps",
        "num_steps", "batch_size", "train_lmdb", "tokenizer", "transform", "image_size",
        "lookahead", "enabled", "alpha", "zero_init_residual", "nope", "",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=5)


def _load(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as error:
        assert str(path) in str(error), str(error)  # the message names the file
        assert len(str(error)) < 2000  # bounded, whatever the value
    else:
        assert isinstance(config, ExperimentConfig)


@FUZZ
@given(document=DOCUMENTS)
def test_any_yaml_document_loads_or_names_the_file(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    _load(path)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_bytes_load_or_name_the_file(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    _load(path)
