"""Helpers shared by the virtex-models tests (imported through conftest's sys.path entry)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class Batch:
    """A stand-in for virtex_data's batches (virtex_models must not import virtex_data)."""

    image_ids: Tensor
    images: Tensor
    tokens: Tensor
    lengths: Tensor


@dataclass
class MaskedBatch(Batch):
    mlm_labels: Tensor


@dataclass
class TokenBatch(Batch):
    token_labels: Tensor


@dataclass
class MultilabelBatch(Batch):
    multilabels: Tensor


def random_captions(
    lengths: list[int], vocab_size: int, sos: int, eos: int, pad: int, first_word: int, seed: int
) -> tuple[Tensor, Tensor]:
    """``[SOS] w.. [EOS]`` rows right-padded with ``pad``; words drawn from
    ``[first_word, vocab_size)``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    tokens = torch.full((len(lengths), width), pad, dtype=torch.long)
    for row, length in enumerate(lengths):
        words = torch.randint(first_word, vocab_size, (length - 2,), generator=generator)
        tokens[row, 0] = sos
        tokens[row, 1 : length - 1] = words
        tokens[row, length - 1] = eos
    return tokens, torch.tensor(lengths)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving ``directory``: ``(base_url, requested_paths)``."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    factory = functools.partial(handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
