"""``virtex_models.strict_config``: the one strict dict -> dataclass parser of the configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from virtex_models.strict_config import from_dict, to_plain


@dataclass
class Inner:
    size: int = 1
    scale: tuple[float, float] = (0.5, 1.0)
    rate: float = 0.1

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    optional: Inner | None = None
    kind: Literal["a", "b"] = "a"
    flag: bool = False
    names: list[str] = field(default_factory=list)
    either: int | str = 0


def test_values_are_converted_and_defaults_kept() -> None:
    parsed = from_dict(
        Outer, {"inner": {"scale": [1, 2], "rate": 3}, "names": ["x"], "either": "s"}, "cfg"
    )
    assert parsed == Outer(inner=Inner(scale=(1.0, 2.0), rate=3.0), names=["x"], either="s")
    assert isinstance(parsed.inner.rate, float) and isinstance(parsed.inner.scale[0], float)
    assert from_dict(Outer, {"optional": None}, "cfg").optional is None
    assert from_dict(Outer, {"optional": {"size": 4}}, "cfg").optional == Inner(size=4)
    assert to_plain({"t": (1, (2, 3))}) == {"t": [1, [2, 3]]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inner": {"sise": 1}}, r"unknown key cfg\.inner\.sise \(known: rate, scale, size\)"),
        ({"optional": {"x": 1}}, r"unknown key cfg\.optional\.x"),
        ({"inner": {"size": True}}, r"cfg\.inner\.size must be an integer, got True"),
        ({"inner": {"size": "3"}}, r"cfg\.inner\.size must be an integer, got '3'"),
        ({"inner": {"rate": False}}, r"cfg\.inner\.rate must be a number"),
        ({"inner": {"scale": [1, 2, 3]}}, r"cfg\.inner\.scale must be a list of 2 values"),
        ({"inner": {"scale": [1, "x"]}}, r"cfg\.inner\.scale\[1\] must be a number"),
        ({"kind": "c"}, r"cfg\.kind='c' is not one of a, b"),
        ({"flag": 1}, r"cfg\.flag must be true/false"),
        ({"names": "x"}, r"cfg\.names must be a list"),
        ({"inner": []}, r"cfg\.inner must be a mapping"),
        ({"inner": {"size": -1}}, r"cfg\.inner: size must be >= 0, got -1"),
        ({"either": 1.5}, r"cfg\.either=1\.5 does not match"),
    ],
)
def test_errors_name_the_dotted_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(Outer, data, "cfg")
