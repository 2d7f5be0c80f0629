"""LoggingHook's records and bar, CheckpointHook's schedule, against hand-worked values.

Both hooks run here on stand-in trainers, logs and checkpoint managers that record what they
are told (no model, no files), so each number below is a sum one can check by hand. Written
for the ``logging-checkpoint-hooks`` mutation target (TESTING.md).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

import virtex_train.hooks as hooks_module
from virtex_train.hooks import CheckpointHook, LoggingHook
from virtex_train.trainer import NonFiniteLossError, StepResult

pytestmark = pytest.mark.timeout(60)


class Log:
    """Stands in for RunLog: keeps the records."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.closed = 0

    def metrics(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed += 1


class Bar:
    """Stands in for tqdm: keeps its settings, postfixes and updates."""

    made: list[Bar] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.postfixes: list[tuple[str, bool]] = []
        self.updates: list[int] = []
        self.closed = 0
        Bar.made.append(self)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfixes.append((text, refresh))

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed += 1


def _trainer(num_steps: int, step: int = 0, world: int = 1, flops: float | None = None) -> Any:
    return types.SimpleNamespace(
        num_steps=num_steps,
        step=step,
        device="cpu",
        precision="fp32",
        env=types.SimpleNamespace(world_size=world),
        flops_per_image=flops,
    )


@pytest.fixture
def peaks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """Every ``device_peak_flops`` call; the peak is 4e12 FLOP/s ("a test peak")."""
    calls: list[tuple[Any, Any]] = []

    def peak(device: Any, precision: Any) -> tuple[float, str]:
        calls.append((device, precision))
        return 4e12, "a test peak"

    monkeypatch.setattr(hooks_module, "device_peak_flops", peak)
    Bar.made.clear()
    monkeypatch.setattr(hooks_module, "tqdm", Bar)
    return calls


def _result(step: int, loss: float, images: int, seconds: float, tokens: int = 0) -> StepResult:
    return StepResult(
        step=step,
        loss=loss,
        components={"forward": loss / 4, "backward": 3 * loss / 4},
        lrs={"lr/visual": 0.1 * step, "lr/textual": 0.01 * step},
        images=images,
        seconds=seconds,
        tokens=tokens,
    )


def test_records_average_each_window_and_the_last_step(peaks: list[Any]) -> None:
    log = Log()
    hook = LoggingHook(log, every=2, progress=False)  # type: ignore[arg-type]
    trainer = _trainer(num_steps=5, world=2, flops=1e9)
    hook.before_train(trainer)
    steps = [
        _result(1, 2.0, images=8, seconds=1.0, tokens=40),
        _result(2, 5.0, images=8, seconds=3.0, tokens=24),
        _result(3, 1.0, images=6, seconds=0.5, tokens=10),
        _result(4, 3.0, images=10, seconds=1.5, tokens=14),
        _result(5, 8.0, images=5, seconds=2.0, tokens=0),
    ]
    for result in steps:
        hook.after_step(trainer, result)  # type: ignore[arg-type]
    assert [r["step"] for r in log.records] == [2, 4, 5]  # every 2 steps, and the last one
    first, second, last = log.records
    # Steps 1-2: 16 images, 64 tokens in 4 s; 1e9 FLOPs an image: 4e9 FLOP/s = 0.004 TFLOP/s,
    # against a 4e12 peak on each of 2 ranks: MFU 4e9 / 8e12 = 5e-4.
    assert first == pytest.approx(
        {
            "step": 2, "split": "train", "loss": 3.5, "forward": 0.875, "backward": 2.625,
            "lr/visual": 0.2, "lr/textual": 0.02, "images_per_s": 4.0, "tokens_per_s": 16.0,
            "model_tflops_per_s": 0.004, "peak_tflops": 4.0, "mfu": 5e-4,
        }
    )  # fmt: skip
    # Steps 3-4 alone (the window starts again): 16 images, 24 tokens in 2 s.
    assert second == pytest.approx(
        {
            "step": 4, "split": "train", "loss": 2.0, "forward": 0.5, "backward": 1.5,
            "lr/visual": 0.4, "lr/textual": 0.04, "images_per_s": 8.0, "tokens_per_s": 12.0,
            "model_tflops_per_s": 0.008, "peak_tflops": 4.0, "mfu": 1e-3,
        }
    )  # fmt: skip
    # Step 5 alone, without tokens: no tokens_per_s.
    assert last == pytest.approx(
        {
            "step": 5, "split": "train", "loss": 8.0, "forward": 2.0, "backward": 6.0,
            "lr/visual": 0.5, "lr/textual": 0.05, "images_per_s": 2.5,
            "model_tflops_per_s": 0.0025, "peak_tflops": 4.0, "mfu": 2.5e-3 / 8,
        }
    )  # fmt: skip
    assert peaks == [("cpu", "fp32")]
    # TFLOP/s are FLOP/s over exactly 10**12 (one correctly rounded division each).
    assert (first["model_tflops_per_s"], first["peak_tflops"]) == (0.004, 4.0)


def test_no_flop_count_or_no_peak_leaves_those_keys_out(
    peaks: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Log()
    hook = LoggingHook(log, every=1, progress=False)  # type: ignore[arg-type]
    hook.before_train(_trainer(num_steps=3))
    hook.after_step(_trainer(num_steps=3), _result(1, 1.0, images=4, seconds=2.0, tokens=6))
    assert set(log.records[0]) == {
        "step", "split", "loss", "forward", "backward", "lr/visual", "lr/textual",
        "images_per_s", "tokens_per_s",
    }  # fmt: skip
    monkeypatch.setattr(hooks_module, "device_peak_flops", lambda d, p: (None, "unknown"))
    hook = LoggingHook(log, every=1, progress=False)  # type: ignore[arg-type]
    trainer = _trainer(num_steps=3, flops=2e9)
    hook.before_train(trainer)
    hook.after_step(trainer, _result(1, 1.0, images=4, seconds=2.0))
    assert log.records[1]["model_tflops_per_s"] == pytest.approx(4e-3)
    assert not {"peak_tflops", "mfu", "tokens_per_s"} & set(log.records[1])
    assert hook.peak_source == "unknown"


def test_flops_per_second_are_not_rounded(peaks: list[Any]) -> None:
    log = Log()
    hook = LoggingHook(log, every=1, progress=False)  # type: ignore[arg-type]
    trainer = _trainer(num_steps=1, flops=1.0)
    hook.before_train(trainer)
    hook.after_step(trainer, _result(1, 1.0, images=3, seconds=2.0))  # type: ignore[arg-type]
    assert log.records[0]["model_tflops_per_s"] == pytest.approx(1.5e-12, abs=0)


def test_a_step_of_no_measurable_time_divides_by_a_nanosecond(peaks: list[Any]) -> None:
    log = Log()
    hook = LoggingHook(log, every=1, progress=False)  # type: ignore[arg-type]
    trainer = _trainer(num_steps=1, flops=1e3)
    hook.before_train(trainer)
    hook.after_step(trainer, _result(1, 1.0, images=2, seconds=0.0, tokens=3))
    (record,) = log.records
    assert record["images_per_s"] == pytest.approx(2e9)
    assert record["tokens_per_s"] == pytest.approx(3e9)
    assert record["model_tflops_per_s"] == pytest.approx(2e3 * 1e9 / 1e12)


def test_the_last_step_is_found_by_value(peaks: list[Any]) -> None:
    # 300 steps: past CPython's cache of small integers (-5..256).
    log = Log()
    hook = LoggingHook(log, every=1000, progress=False)  # type: ignore[arg-type]
    trainer = _trainer(num_steps=int("300"))
    hook.before_train(trainer)
    for step in range(1, 301):
        hook.after_step(trainer, _result(step, 1.0, images=1, seconds=1.0))
    assert [r["step"] for r in log.records] == [300]


def test_every_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="train.log_every must be >= 1, got 0"):
        LoggingHook(Log(), every=0)  # type: ignore[arg-type]
    assert LoggingHook(Log(), every=1).every == 1  # type: ignore[arg-type]


def test_the_bar_on_the_logging_rank(peaks: list[Any]) -> None:
    log = Log()
    hook = LoggingHook(log, every=10)  # type: ignore[arg-type]  # a bar by default
    trainer = _trainer(num_steps=9, step=3)  # resumed at step 3
    hook.before_train(trainer)
    (bar,) = Bar.made
    assert bar.kwargs == {"total": 9, "initial": 3, "desc": "pretrain", "unit": "step"}
    result = StepResult(
        step=4, loss=1.23456, lrs={"lr/a": 0.001, "lr/b": 0.0005}, images=10, seconds=0.3
    )
    hook.after_step(trainer, result)  # type: ignore[arg-type]
    assert bar.postfixes == [("loss 1.235 lr 1.00e-03 5.00e-04 33.3 img/s", False)]
    assert bar.updates == [1]
    hook.close()
    hook.close()  # closing twice closes the bar once
    assert bar.closed == 1 and log.closed == 2
    # Measured once per process: a second run of the same hook does not measure again.
    hook.before_train(trainer)
    assert len(peaks) == 1


def test_no_bar_and_no_peak_on_other_ranks(peaks: list[Any]) -> None:
    hook = LoggingHook(Log(enabled=False), every=1, progress=True)  # type: ignore[arg-type]
    hook.before_train(_trainer(num_steps=2))
    assert Bar.made == [] and peaks == [] and not hook.progress
    hook = LoggingHook(Log(), every=1, progress=False)  # type: ignore[arg-type]
    hook.before_train(_trainer(num_steps=2))
    assert Bar.made == [] and len(peaks) == 1


# ------------------------------------------------------------------------------ CheckpointHook
class Manager:
    """Stands in for CheckpointManager: keeps what was saved and finalised."""

    def __init__(self, directory: Path, latest: Path | None = None) -> None:
        self.directory = directory
        self._latest = latest
        self.saved: list[tuple[dict[str, Any], int]] = []
        self.finalized: list[Path] = []

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step}"

    def save(self, checkpoint: dict[str, Any], step: int) -> Path:
        self.saved.append((checkpoint, step))
        return self.directory / f"saved-{step}"

    def latest(self) -> Path | None:
        return self._latest

    def finalize(self, path: Path) -> Path:
        self.finalized.append(path)
        return self.directory / "finalized"


class Run:
    """Stands in for the trainer: a step count and whether the weights are finite."""

    def __init__(self, num_steps: int, step: int = 0, finite: bool = True) -> None:
        self.num_steps = num_steps
        self.step = step
        self.finite = finite

    def parameters_finite(self) -> bool:
        return self.finite


def _build(trainer: Any) -> dict[str, Any]:
    return {"step": trainer.step}


def _run(hook: CheckpointHook, run: Run, until: int) -> None:
    hook.before_train(run)  # type: ignore[arg-type]
    while run.step < until:
        run.step += 1
        hook.after_step(run, StepResult(step=run.step, loss=0.0))  # type: ignore[arg-type]
    hook.after_train(run)  # type: ignore[arg-type]


def test_checkpoints_every_n_steps_and_finalises_the_last(tmp_path: Path) -> None:
    manager = Manager(tmp_path)
    hook = CheckpointHook(manager, _build, every=3)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=7), until=7)
    # Steps 3 and 6 by the schedule, 7 at the end; final.pt is the last one.
    assert manager.saved == [({"step": 3}, 3), ({"step": 6}, 6), ({"step": 7}, 7)]
    assert manager.finalized == [tmp_path / "saved-7"]
    assert hook.final_path == tmp_path / "finalized"
    assert (hook.last_saved, hook.last_path) == (7, tmp_path / "saved-7")


def test_a_run_ending_on_a_checkpoint_step_saves_it_once(tmp_path: Path) -> None:
    manager = Manager(tmp_path)
    hook = CheckpointHook(manager, _build, every=2)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=4), until=4)
    assert [step for _, step in manager.saved] == [2, 4]
    assert manager.finalized == [tmp_path / "saved-4"]


def test_an_interrupted_run_saves_its_step_but_is_not_final(tmp_path: Path) -> None:
    manager = Manager(tmp_path)
    hook = CheckpointHook(manager, _build, every=2)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=10), until=5)
    assert [step for _, step in manager.saved] == [2, 4, 5]
    assert manager.finalized == [] and hook.final_path is None


def test_a_resumed_run_already_done_finalises_the_latest_without_saving(tmp_path: Path) -> None:
    manager = Manager(tmp_path, latest=tmp_path / "step-6")
    hook = CheckpointHook(manager, _build, every=4)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=6, step=6), until=6)
    assert manager.saved == [] and manager.finalized == [tmp_path / "step-6"]
    # Resumed past the end (a shorter schedule): final too.
    manager = Manager(tmp_path, latest=tmp_path / "step-8")
    hook = CheckpointHook(manager, _build, every=4)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=6, step=8), until=8)
    assert manager.saved == [] and manager.finalized == [tmp_path / "step-8"]


def test_a_resumed_run_without_its_checkpoint_saves_again(tmp_path: Path) -> None:
    manager = Manager(tmp_path, latest=None)  # the checkpoint was deleted
    hook = CheckpointHook(manager, _build, every=4)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=6, step=6), until=6)
    assert [step for _, step in manager.saved] == [6]
    assert manager.finalized == [tmp_path / "saved-6"]


def test_a_run_of_no_step_saves_its_initial_weights(tmp_path: Path) -> None:
    manager = Manager(tmp_path, latest=None)
    hook = CheckpointHook(manager, _build, every=1)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=0), until=0)
    assert manager.saved == [({"step": 0}, 0)]
    assert manager.finalized == [tmp_path / "saved-0"]


def test_other_ranks_build_but_do_not_write(tmp_path: Path) -> None:
    manager = Manager(tmp_path)
    built: list[int] = []

    def build(trainer: Any) -> dict[str, Any]:
        built.append(trainer.step)
        return {}

    hook = CheckpointHook(manager, build, every=2, write=False)  # type: ignore[arg-type]
    _run(hook, Run(num_steps=3), until=3)
    assert built == [2, 3] and manager.saved == [] and manager.finalized == []
    assert hook.last_path == tmp_path / "step-3"
    assert hook.final_path == tmp_path / "final.pt"


def test_non_finite_weights_are_refused_by_step(tmp_path: Path) -> None:
    manager = Manager(tmp_path)
    hook = CheckpointHook(manager, _build, every=1)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLossError, match="non-finite weights at step 7"):
        hook.save(Run(num_steps=9, step=7, finite=False))  # type: ignore[arg-type]
    assert manager.saved == [] and hook.last_saved is None and hook.last_path is None
    assert hook.save(Run(num_steps=9, step=7)) == tmp_path / "saved-7"  # type: ignore[arg-type]


def test_the_saved_step_is_compared_by_value(tmp_path: Path) -> None:
    # A resumed run stopped before its first new step: its step, 300, equal to the one it
    # resumed at but another int object (past CPython's small-int cache), is saved already.
    manager = Manager(tmp_path, latest=tmp_path / "step-300")
    hook = CheckpointHook(manager, _build, every=1000)  # type: ignore[arg-type]
    run = Run(num_steps=1000, step=int("300"))
    hook.before_train(run)  # type: ignore[arg-type]
    run.step = int("300")
    hook.after_train(run)  # type: ignore[arg-type]
    assert manager.saved == []


def test_checkpoint_every_must_be_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train.checkpoint_every must be >= 1, got 0"):
        CheckpointHook(Manager(tmp_path), _build, every=0)  # type: ignore[arg-type]
    assert CheckpointHook(Manager(tmp_path), _build, every=1).every == 1  # type: ignore[arg-type]
