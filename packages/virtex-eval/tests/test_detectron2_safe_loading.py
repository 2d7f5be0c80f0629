"""detectron2 transfer runs no code from its input files: hostile YAML (also in a ``_BASE_``) and
hostile pickles are refused before anything in them is built; real weight pickles still load.

These run without detectron2 (the safe loaders do not import it); the end-to-end CLI check at the
bottom needs it.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from virtex_eval.detectron2 import detectron2_available, runner
from virtex_eval.detectron2.cli import detectron2_command
from virtex_eval.detectron2.safe_loading import (
    UnsafeFileError,
    detectron2_checkpoint,
    load_weights_file,
    read_config_chain,
    read_pickled_weights,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "detectron2"


def _evil_yaml(marker: Path) -> str:
    return f'MODEL:\n  WEIGHTS: !!python/object/apply:os.system ["touch {marker}"]\n'


class _Payload:
    """Pickles as a call to ``os.system`` (what a hostile ``.pkl`` carries)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_python_tag_in_config_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(_evil_yaml(marker))
    with pytest.raises(UnsafeFileError, match=r"evil\.yaml: refused: .*Python object"):
        read_config_chain(evil)
    assert not marker.exists()


def test_python_tag_in_a_base_file_is_refused_naming_the_base(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "evil_base.yaml").write_text(_evil_yaml(marker))
    (tmp_path / "middle.yaml").write_text(
        '_BASE_: "bases/evil_base.yaml"\nSOLVER:\n  BASE_LR: 0.1\n'
    )
    top = tmp_path / "top.yaml"
    top.write_text('_BASE_: "middle.yaml"\nSOLVER:\n  MAX_ITER: 3\n')
    with pytest.raises(UnsafeFileError, match=r"evil_base\.yaml: refused"):
        read_config_chain(top)
    assert not marker.exists()


def test_chain_is_resolved_relative_to_each_file_root_first(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "root.yaml").write_text("MODEL:\n  MASK_ON: true\n")
    (tmp_path / "mid.yaml").write_text("_BASE_: a/root.yaml\n")
    (tmp_path / "top.yaml").write_text("_BASE_: mid.yaml\n")
    chain = read_config_chain(tmp_path / "top.yaml")
    assert chain == [(tmp_path / n).resolve() for n in ("a/root.yaml", "mid.yaml", "top.yaml")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"top.yaml": "_BASE_: top.yaml\n"}, "circular _BASE_ chain"),
        ({"top.yaml": "_BASE_: gone.yaml\n"}, "_BASE_ of .*top.yaml .*gone.yaml does not exist"),
        ({"top.yaml": "_BASE_: https://example.com/x.yaml\n"}, "is remote"),
        ({"top.yaml": "a: &x [1, 2]\nb: [*x, *x]\n"}, "top.yaml: line 2: YAML aliases"),
        ({"top.yaml": "- 1\n- 2\n"}, "a mapping of keys"),
        ({"top.yaml": "a: [1,\n"}, "top.yaml: not valid YAML"),
    ],
)
def test_bad_chains_are_named(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_config_chain(tmp_path / "top.yaml")


def test_the_shipped_virtex_configs_pass_the_safe_reader() -> None:
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert configs
    for path in configs:
        assert read_config_chain(path)[-1] == path.resolve()


def test_reduce_payload_in_pkl_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pkl"
    # Hidden inside otherwise plausible weights, at protocol 2 (the model zoo's) and 5.
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        content = {"model": {"w": np.zeros(3), "x": _Payload(marker)}, "__author__": "zoo"}
        evil.write_bytes(pickle.dumps(content, protocol=protocol))
        with pytest.raises(
            UnsafeFileError, match=r"model\.pkl: refused: the pickle names .*system"
        ):
            read_pickled_weights(evil)
        with pytest.raises(UnsafeFileError):
            load_weights_file(str(evil))
        # The runner checks --checkpoint before any work, the same way.
        with pytest.raises(UnsafeFileError):
            runner._is_virtex_checkpoint(evil)
        assert not marker.exists()


def test_reduce_payload_in_pth_is_refused_without_torch_advice(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}, evil)
    with pytest.raises(UnsafeFileError, match=r"model\.pth: refused") as caught:
        runner._is_virtex_checkpoint(evil)
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_torch_tensors_pickled_plainly_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": torch.zeros(2)}, "__author__": "x"}))
    with pytest.raises(UnsafeFileError, match="tensor.pkl: refused"):
        read_pickled_weights(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pickle_of_numpy_arrays_loads_unchanged(tmp_path: Path, protocol: int) -> None:
    rng = np.random.default_rng(0)
    weights = OrderedDict(
        [
            ("backbone.stem.conv1.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
            ("backbone.stem.conv1.norm.running_mean", rng.standard_normal(4)),
            ("roi_heads.box_predictor.cls_score.bias", np.arange(5, dtype=np.int64)),
            ("scalar", np.float32(2.5)),  # numpy scalars occur in some files
        ]
    )
    path = tmp_path / "zoo.pkl"
    path.write_bytes(
        pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"}, protocol=protocol)
    )
    loaded = read_pickled_weights(path)
    assert loaded["__author__"] == "Detectron2 Model Zoo"
    assert list(loaded["model"]) == list(weights)
    for key, value in weights.items():
        assert np.array_equal(loaded["model"][key], value) and loaded["model"][key].dtype == (
            value.dtype
        )
    with pytest.raises(ValueError, match="weight 'scalar' is a float32, not an array"):
        detectron2_checkpoint(loaded, str(path))


def test_caffe2_blobs_become_a_caffe2_checkpoint_without_momentum(tmp_path: Path) -> None:
    blobs = {"conv1_w": np.ones((2, 3, 1, 1), np.float32), "conv1_w_momentum": np.zeros(1)}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs, "cfg": "a yaml string"}, protocol=2))
    checkpoint = load_weights_file(str(path))
    assert checkpoint["__author__"] == "Caffe2" and checkpoint["matching_heuristics"] is True
    assert list(checkpoint["model"]) == ["conv1_w"]
    assert np.array_equal(checkpoint["model"]["conv1_w"], blobs["conv1_w"])


def test_object_arrays_and_non_pickles_are_refused(tmp_path: Path) -> None:
    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}}))
    with pytest.raises(ValueError, match=r"objects\.pkl: .*'w'\] is an object array"):
        read_pickled_weights(objects)
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    with pytest.raises(ValueError, match=r"notes\.pkl: not a readable weights pickle"):
        read_pickled_weights(text)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(pickle.dumps({"model": {"w": np.zeros(100)}})[:-20])
    with pytest.raises(ValueError, match=r"cut\.pkl: not a readable weights pickle"):
        read_pickled_weights(cut)


def test_checkpointers_are_routed_through_the_safe_reader(tmp_path: Path) -> None:
    class StandIn:  # detectron2's checkpointer calls self._load_file(path) for every load
        def _load_file(self, filename: str) -> object:
            with open(filename, "rb") as handle:
                return pickle.load(handle)  # what detectron2 does

    marker = tmp_path / "ran"
    evil = tmp_path / "last.pkl"
    evil.write_bytes(pickle.dumps({"model": _Payload(marker), "__author__": "x"}))
    checkpointer = runner._make_safe(StandIn())
    with pytest.raises(UnsafeFileError):
        checkpointer._load_file(str(evil))
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    loaded = checkpointer._load_file(str(good))
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_help_says_how_pkl_files_are_read() -> None:
    result = CliRunner().invoke(detectron2_command, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "restricted loader" in text and "never run" in text


@pytest.mark.detectron2
@pytest.mark.skipif(not detectron2_available(), reason="detectron2 is not installed")
def test_cli_refuses_hostile_config_and_weights(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'_BASE_: "{CONFIGS / "synth_segm_quick.yaml"}"\n' + _evil_yaml(marker))
    result = CliRunner().invoke(
        detectron2_command, ["--d2-config", str(evil), "--output-dir", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "evil.yaml: refused" in result.output
    weights = tmp_path / "model.pkl"
    weights.write_bytes(pickle.dumps({"model": _Payload(marker), "__author__": "x"}))
    args = ["--d2-config", str(CONFIGS / "synth_segm_quick.yaml"), "--checkpoint", str(weights)]
    result = CliRunner().invoke(detectron2_command, [*args, "--output-dir", str(tmp_path / "o")])
    assert result.exit_code != 0 and "model.pkl: refused" in result.output
    assert not marker.exists()
