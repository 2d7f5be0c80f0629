"""Property-based fuzzing (hypothesis) of the two loaders that read files a user may be handed:
the LMDB record decoder and the tokenizer loader. Whatever the input, they return a valid value
or raise the project's own error (``LmdbFormatError``, ``TokenizerError``), never anything else.

Examples are derandomised (the same on every run and machine) and each test stays within a few
seconds; raise ``max_examples`` locally to search longer.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtex_data.lmdb_format import ImageRecord, LmdbFormatError, decode_record, encode_record
from virtex_data.tokenizer import CaptionTokenizer, TokenizerError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# msgpack values: what any msgpack file can hold (ints within msgpack's 64-bit range).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ("id", "file", "image", "format", "width", "height", "captions")
GOOD = {
    "id": 3,
    "file": "a.jpg",
    "image": b"\xff\xd8 jpeg bytes",
    "format": "jpeg",
    "width": 4,
    "height": 2,
    "captions": ["a red block", "a square"],
}


def check_record(record: ImageRecord) -> None:
    """What every decoded record guarantees to its users (datasets, inspect)."""
    assert isinstance(record.image_id, int) and not isinstance(record.image_id, bool)
    assert isinstance(record.file_name, str) and isinstance(record.image, bytes)
    assert record.format in ("jpeg", "png")
    assert record.width >= 1 and record.height >= 1
    assert record.captions and all(isinstance(c, str) for c in record.captions)


def decode_or_named_error(data: bytes) -> None:
    try:
        record = decode_record(data)
    except LmdbFormatError as error:
        assert str(error).startswith("malformed record") and "\n" not in str(error)
        return
    check_record(record)


@FUZZ
@given(st.binary(max_size=512))
def test_record_decoder_on_arbitrary_bytes(data: bytes) -> None:
    decode_or_named_error(data)


@FUZZ
@given(values)
def test_record_decoder_on_arbitrary_msgpack(value: Any) -> None:
    decode_or_named_error(msgpack.packb(value, use_bin_type=True))


@FUZZ
@given(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS)),
    st.sets(st.sampled_from(FIELDS)),
)
def test_record_decoder_on_records_with_fields_replaced(
    replaced: dict[str, Any], removed: set[str]
) -> None:
    record = {**GOOD, **replaced}
    for key in removed:
        record.pop(key, None)
    decode_or_named_error(msgpack.packb(record, use_bin_type=True))


# Values next to the valid ones: what a careless writer produces.
edges = st.sampled_from(
    [True, False, 0, -1, 2**64 - 1, "", "gif", b"", [], [None], ["ok", 1], [b"x"], {}, 1.5]
)


@FUZZ
@given(st.sampled_from(FIELDS), edges | values)
def test_record_decoder_on_a_real_record_with_one_field_replaced(key: str, value: Any) -> None:
    decode_or_named_error(msgpack.packb({**GOOD, key: value}, use_bin_type=True))


@FUZZ
@given(st.data())
def test_record_decoder_on_damaged_bytes_of_a_real_record(data: st.DataObject) -> None:
    raw = bytearray(encode_record(ImageRecord(3, "a.jpg", b"\xff\xd8xx", "jpeg", 4, 2, ["a b"])))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    decode_or_named_error(bytes(raw[:cut]))


def test_the_unchanged_record_decodes() -> None:
    record = decode_record(msgpack.packb(GOOD, use_bin_type=True))
    assert record == ImageRecord(3, "a.jpg", GOOD["image"], "jpeg", 4, 2, GOOD["captions"])


# ----------------------------------------------------------------------------- tokenizer
_TOKENIZER: dict[str, Any] = {}


def good_tokenizer_json() -> dict[str, Any]:
    if not _TOKENIZER:
        captions = ["a red block on the left", "two blue circles", "a green tree"] * 3
        _TOKENIZER.update(json.loads(CaptionTokenizer.train(captions, 40).to_json()))
    return json.loads(json.dumps(_TOKENIZER))  # a fresh deep copy


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    """Every key path into a JSON value (to depth 4), for replacing one part of a tokenizer."""
    found = [prefix] if prefix else []
    if depth >= 4:
        return found
    if isinstance(value, dict):
        items: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value[:3]))
    else:
        return found
    for key, item in items:
        found.extend(paths(item, (*prefix, key), depth + 1))
    return found


def load_or_named_error(text: str) -> None:
    try:
        tokenizer = CaptionTokenizer.from_json(text)
    except TokenizerError as error:
        assert "\n" not in str(error) and len(str(error)) < 400
        return
    # A loaded tokenizer is usable: its special ids are in range and captions round-trip
    # through encode/decode without errors.
    assert tokenizer.vocab_size >= 1
    assert max(tokenizer.special.as_dict().values()) < tokenizer.vocab_size
    ids = tokenizer.encode("a red block")
    assert isinstance(tokenizer.decode(ids), str)


@FUZZ
@given(st.text(max_size=300))
def test_tokenizer_loader_on_arbitrary_text(text: str) -> None:
    load_or_named_error(text)


@FUZZ
@given(json_values)
def test_tokenizer_loader_on_arbitrary_json(value: Any) -> None:
    load_or_named_error(json.dumps(value))


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_tokenizer_loader_on_a_real_tokenizer_with_one_part_replaced(data: st.DataObject) -> None:
    document = good_tokenizer_json()
    path = data.draw(st.sampled_from(paths(document)))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(json_values)
    load_or_named_error(json.dumps(document))


def test_the_unchanged_tokenizer_loads() -> None:
    tokenizer = CaptionTokenizer.from_json(json.dumps(good_tokenizer_json()))
    assert tokenizer.decode(tokenizer.encode("two blue circles")) == "two blue circles"
