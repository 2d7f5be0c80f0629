"""The click side of one-line errors: the command group class and parse-time checks.

Every ``virtex-*`` command group uses :class:`OneLineErrors` as its click ``cls``: an exception
that escapes a command becomes ``Error: <what>, <which file/key>`` on stderr with exit status 1
and no traceback. ``--debug`` (before or after the subcommand: ``virtex-data --debug
build-lmdb ...``) or ``VIRTEX_DEBUG=1`` lets the traceback through instead. :func:`add_checks`
gives ``--device`` and output options their checks at parse time. ``virtex_train`` and
``virtex_eval`` import this module for their command lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from virtex_data.errors import DEBUG_ENV, EXPECTED, check_writable, debug_enabled, one_line

__all__ = [
    "OneLineErrors",
    "add_checks",
    "check_device",
    "device_option_callback",
    "output_dir_callback",
    "output_file_callback",
]


class OneLineErrors(click.Group):
    """A click group whose commands' exceptions print as one ``Error:`` line (exit 1).

    Adds a ``--debug`` option to the group (tracebacks, as ``VIRTEX_DEBUG=1`` does), also
    accepted after the subcommand.
    ``click`` errors (usage, ``ClickException``), ``SystemExit`` and ``KeyboardInterrupt`` pass
    through unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["--debug"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_set_debug,
                help=f"Show tracebacks instead of one-line errors (also {DEBUG_ENV}=1).",
            )
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # --debug is accepted after the subcommand too (`virtex-train pretrain ... --debug`).
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            position = args.index("--debug", 1)
            args = [*args[:position], *args[position + 1 :]]
            ctx.meta[_DEBUG_KEY] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            if ctx.meta.get(_DEBUG_KEY) or debug_enabled():
                raise
            context = getattr(error, "__notes__", None)
            message = one_line(error)
            if context:
                message = f"{message} ({'; '.join(map(str, context))})"
            if not isinstance(error, EXPECTED):  # likely a bug: say how to see where
                message += " (unexpected: rerun with --debug for the traceback)"
            raise click.ClickException(message) from None


_DEBUG_KEY = "virtex.debug"  # in ctx.meta: this invocation only, not the process environment


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_DEBUG_KEY] = True


def check_device(device: str | None, option: str = "--device") -> str | None:
    """Check that ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``auto``/``None``) exists.

    Returns ``device`` unchanged. Raises ``click.ClickException`` (one line) naming the device
    and what this machine has, instead of torch's traceback ending in "Found no NVIDIA driver".
    """
    if device is None or device in ("auto", "cpu"):
        return device
    import torch

    available = _available_devices()
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count and (not index or (index.isdigit() and int(index) < count)):
            return device
    elif kind == "mps" and "mps" in available:
        return device
    note = "; this torch is a CPU-only build" if torch.version.cuda is None else ""
    raise click.ClickException(
        f"{option} {device}: not available on this machine (available: "
        f"{', '.join(available)}{note})"
    )


def _available_devices() -> Sequence[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def output_file_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``callback=`` for output-file options: the file's folder must be writable, at parse time
    (before a model is loaded or any image is read)."""
    if value is not None and value != "-":
        check_writable(Path(value).absolute().parent, f"folder of {param.opts[-1]} {value}")
    return value


def output_dir_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``callback=`` for output-folder options: created if needed and writable, at parse time."""
    if value is not None:
        check_writable(value, f"{param.opts[-1]} {value}")
    return value


#: Option names :func:`add_checks` recognises.
_OUTPUT_FILES = ("output", "out", "metrics_path", "per_image_path", "predictions_path", "save")
_OUTPUT_DIRS = ("output_dir",)


def add_checks(command: click.Command) -> click.Command:
    """Give ``command``'s ``--device`` and output options their parse-time checks.

    ``--device``: :func:`check_device`; ``--output``/``--out``: the folder is writable;
    ``--output-dir``: created and writable. Options that have a callback keep it. Applied by each
    package's command group to every command it registers, so the commands need not repeat it.
    """
    for param in command.params:
        if not isinstance(param, click.Option) or param.callback is not None:
            continue
        if param.name == "device":
            param.callback = device_option_callback
        elif param.name in _OUTPUT_FILES:
            param.callback = output_file_callback
        elif param.name in _OUTPUT_DIRS:
            param.callback = output_dir_callback
    return command


def device_option_callback(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    """``callback=`` for ``--device`` options: :func:`check_device` at parse time."""
    return check_device(value, option="--device")
