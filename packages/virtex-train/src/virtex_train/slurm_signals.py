"""Signals of a SLURM job: SIGUSR2 (time limit, preemption) -> the trainer's graceful stop.

Slurm sends ``SIGUSR2`` ``signal_delay_s`` seconds before the time limit (submitit's
``--signal=USR2@<delay>``; its ``job._interrupt()`` sends the same, after a SIGTERM for a
preemption). :class:`UsrSignalBridge` replaces submitit's handler for that signal while the task
trains: the signal becomes the trainer's own SIGTERM handler (every rank finishes its step, rank 0
writes a checkpoint), and submitit's handler (``checkpoint()`` + ``scontrol requeue``) runs only
afterwards, through :meth:`UsrSignalBridge.hand_over`. Used by :class:`virtex_train.slurm.TrainJob`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["UsrSignalBridge"]


class UsrSignalBridge:
    """Routes ``usr_signal`` to the trainer's graceful stop and remembers that it came.

    Args:
        usr_signal: the signal submitit asks Slurm for (``SIGUSR2``).
        running: whether training is under way (then a signal that arrives before the trainer
            installed its handler requeues at once: nothing new to save yet).
    """

    def __init__(self, usr_signal: int, running: Callable[[], bool]) -> None:
        self.usr_signal = usr_signal
        self.requeue: Any = signal.getsignal(usr_signal)  # submitit's checkpoint-and-requeue
        self.outer_term: Any = signal.getsignal(signal.SIGTERM)
        self.signalled = False
        self._running = running

    def install(self) -> None:
        signal.signal(self.usr_signal, self._on_usr_signal)

    def _on_usr_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True
        term = signal.getsignal(signal.SIGTERM)
        if term is not self.outer_term and callable(term):
            # The trainer's loop is running: its graceful stop checkpoints first.
            term(signal.SIGTERM, frame)
        elif self._running() and callable(self.requeue):
            self.requeue(signum, frame)  # nothing new to save yet: requeue right away

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the signal (a SIGUSR2 that may follow a SIGTERM)."""
        deadline = time.monotonic() + seconds
        while not self.signalled and time.monotonic() < deadline:
            time.sleep(0.05)

    def hand_over(self) -> bool:
        """After the signal: run submitit's handler (rank 0: checkpoint + requeue + exit).

        Returns:
            False when there was no signal or no submitit handler to run.
        """
        if not (self.signalled and callable(self.requeue)):
            return False
        self.requeue(self.usr_signal, None)
        return True
