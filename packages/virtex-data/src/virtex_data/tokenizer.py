"""``CaptionTokenizer``: a BPE vocabulary with special tokens pinned to fixed ids.

The tokenizer is a ``tokenizers`` pipeline (so encoding runs in Rust, in batches) plus the
:class:`~virtex_data.special_tokens.SpecialTokens` ids it was built with:

- normaliser: :func:`virtex_data.normalize.tokenizer_normalizer` (the one caption normalisation);
- pre-tokeniser: punctuation split, then ``Metaspace`` (a word-start marker, prepended to the first
  word only), with the matching ``Metaspace`` decoder, so ``decode(encode(c))`` gives back
  ``normalize_caption(c)`` exactly;
- model: BPE (the ``tokenizers`` Unigram trainer splits frequent words into letters and can stop
  short of the requested size; BPE does neither).

File format (one JSON object, also embedded in checkpoints)::

    {"format": "virtex-tokenizer", "format_version": 1, "normalization_version": 1,
     "special": {"pad": 0, "unk": 1, "sos": 2, "eos": 3, "mask": 4},
     "special_strings": {"pad": "[PAD]", ...}, "tokenizer": {...the tokenizers JSON...}}

A plain ``tokenizers`` JSON is accepted too: the special ids are then looked up by their strings.

Loading (:meth:`CaptionTokenizer.from_json`, :meth:`CaptionTokenizer.from_file`) raises
:class:`TokenizerError` (a ``ValueError``, one line) for anything that is not a usable tokenizer,
whatever the input: property-based tests feed it arbitrary text and JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from virtex_data.atomic_file import atomic_write_text
from virtex_data.normalize import NORMALIZATION_VERSION, tokenizer_normalizer
from virtex_data.special_tokens import SpecialTokens

__all__ = ["TOKENIZER_FORMAT_VERSION", "CaptionTokenizer", "TokenizerError"]

#: Version of the JSON wrapper written by :meth:`CaptionTokenizer.to_json`.
TOKENIZER_FORMAT_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer file or JSON text that cannot be used (the message says why, on one line)."""


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_rust_panic(error: BaseException) -> bool:
    # pyo3 turns a Rust panic inside `tokenizers` into PanicException, a BaseException.
    return type(error).__name__ == "PanicException"


def _pipeline(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = tokenizer_normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace(prepend_scheme="first")]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    return tokenizer


class CaptionTokenizer:
    """A caption tokenizer: ``tokenizers`` pipeline + pinned special-token ids.

    Args:
        tokenizer: the ``tokenizers.Tokenizer``.
        special: ids of the special tokens (default layout or :meth:`SpecialTokens.legacy`).
        special_strings: token string per field of ``special`` (defaults to ``[PAD]``, ...).
            Legacy vocabularies name their unknown token differently (e.g. ``<unk>``).

    Raises:
        ValueError: if a special id is outside the vocabulary or holds another string.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        special: SpecialTokens | None = None,
        special_strings: dict[str, str] | None = None,
        normalization_version: int = NORMALIZATION_VERSION,
    ) -> None:
        self._tokenizer = tokenizer
        self.special = special if special is not None else SpecialTokens()
        self.special_strings = dict(special_strings or self.special.strings())
        self.normalization_version = int(normalization_version)
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        for name, index in self.special.as_dict().items():
            if index >= size:
                raise ValueError(f"special token {name}={index} is outside the vocabulary ({size})")
            if self.special.is_legacy and name == "pad":
                continue  # pad shares its id with unk in the legacy layout
            found = tokenizer.id_to_token(index)
            if found != self.special_strings[name]:
                raise ValueError(
                    f"special token {name} should be {self.special_strings[name]!r} at id "
                    f"{index}, but the vocabulary has {found!r} there"
                )
        self._special_ids = frozenset(self.special.as_dict().values())

    # ----------------------------------------------------------------- construction
    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int,
        special: SpecialTokens | None = None,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> CaptionTokenizer:
        """Train a BPE vocabulary whose special tokens sit at the ids of ``special``.

        Args:
            captions: raw captions (normalised by the pipeline itself).
            vocab_size: exact size of the vocabulary, special tokens included (the trainer stops
                earlier only if the corpus has fewer distinct merges).
            special: id layout; ids must be ``0..k-1`` without gaps (legacy: pad = unk).
            min_frequency: minimum count of a merged pair.
            show_progress: let ``tokenizers`` print its progress bar.
        """
        special = special if special is not None else SpecialTokens()
        strings = special.strings()
        by_id: dict[int, str] = {}
        for name in ("unk", "pad", "sos", "eos", "mask"):  # legacy: id 0 is the unknown token
            index = getattr(special, name)
            by_id.setdefault(index, strings[name])
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"special ids must be 0..k-1 without gaps to train, got {by_id}")
        ordered = [by_id[i] for i in range(len(by_id))]
        tokenizer = _pipeline(models.BPE(unk_token=strings["unk"]))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=ordered,
            show_progress=show_progress,
        )
        tokenizer.train_from_iterator(captions, trainer=trainer)
        special_strings = dict(strings)
        if special.is_legacy:
            special_strings["pad"] = by_id[special.pad]
        return cls(tokenizer, special, special_strings)

    @classmethod
    def from_json(cls, text: str) -> CaptionTokenizer:
        """Load from :meth:`to_json` text or from a plain ``tokenizers`` JSON.

        Raises:
            TokenizerError: anything that is not a usable tokenizer (invalid JSON, a wrong
                structure, a vocabulary without the special tokens, ...), on one line.
        """
        try:
            return cls._from_json(text)
        except TokenizerError:
            raise
        except RecursionError:
            raise TokenizerError("not a usable tokenizer: JSON nested too deeply") from None
        except Exception as error:  # tokenizers raises bare Exception on malformed JSON
            raise TokenizerError(f"not a usable tokenizer: {_one_line(error)}") from error
        except BaseException as error:
            if not _is_rust_panic(error):
                raise
            raise TokenizerError(f"not a usable tokenizer: {_one_line(error)}") from None

    @classmethod
    def _from_json(cls, text: str) -> CaptionTokenizer:
        if not isinstance(text, str):
            raise TokenizerError(f"tokenizer JSON must be text, got {type(text).__name__}")
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TokenizerError(f"a tokenizer is a JSON object, got {type(data).__name__}")
        if data.get("format") == "virtex-tokenizer":
            version = data.get("format_version")
            if version != TOKENIZER_FORMAT_VERSION:
                raise TokenizerError(
                    f"tokenizer format_version {str(version)[:20]!r} is not supported "
                    f"(this version reads {TOKENIZER_FORMAT_VERSION})"
                )
            special_ids, strings = data.get("special"), data.get("special_strings")
            if not isinstance(data.get("tokenizer"), dict):
                raise TokenizerError("virtex tokenizer JSON: 'tokenizer' must be an object")
            if not isinstance(special_ids, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in special_ids.values()
            ):
                raise TokenizerError("virtex tokenizer JSON: 'special' must map names to ints")
            if strings is not None and (
                not isinstance(strings, dict)
                or not all(isinstance(v, str) for v in strings.values())
            ):
                raise TokenizerError(
                    "virtex tokenizer JSON: 'special_strings' must map names to strings"
                )
            version = data.get("normalization_version", NORMALIZATION_VERSION)
            if not isinstance(version, int) or isinstance(version, bool):
                raise TokenizerError("virtex tokenizer JSON: 'normalization_version' is not an int")
            inner = Tokenizer.from_str(json.dumps(data["tokenizer"]))
            special = SpecialTokens(**special_ids)
            return cls(inner, special, strings, version)
        inner = Tokenizer.from_str(text)
        ids = {name: inner.token_to_id(token) for name, token in SpecialTokens().strings().items()}
        missing = [SpecialTokens().strings()[k] for k, v in ids.items() if v is None]
        if missing:
            raise TokenizerError(f"plain tokenizers JSON lacks special tokens {missing}")
        return cls(inner, SpecialTokens(**{k: int(v) for k, v in ids.items() if v is not None}))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CaptionTokenizer:
        """Load a tokenizer file written by :meth:`save` (or a plain ``tokenizers`` JSON).

        Raises:
            TokenizerError: unreadable file or not a usable tokenizer, naming the file.
        """
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except TokenizerError as error:
            raise TokenizerError(f"cannot read tokenizer file {path}: {error}") from error
        except (OSError, UnicodeDecodeError) as error:
            raise TokenizerError(f"cannot read tokenizer file {path}: {_one_line(error)}") from None

    @classmethod
    def wrap_legacy(
        cls, tokenizer: Tokenizer, special_strings: dict[str, str] | None = None
    ) -> CaptionTokenizer:
        """Wrap a vocabulary in the original VirTex layout (pad = unk = 0, sos 1, eos 2, mask 3).

        ``special_strings`` gives the strings found at those ids (default ``[UNK]``, ``[SOS]``,
        ``[EOS]``, ``[MASK]``; the original SentencePiece vocabulary used ``<unk>`` for id 0).
        """
        strings = SpecialTokens().strings()
        strings.update(special_strings or {})
        strings["pad"] = strings["unk"]
        return cls(tokenizer, SpecialTokens.legacy(), strings)

    # ----------------------------------------------------------------- serialisation
    def to_json(self) -> str:
        """The tokenizer as one JSON text (the file format of the module docstring)."""
        return json.dumps(
            {
                "format": "virtex-tokenizer",
                "format_version": TOKENIZER_FORMAT_VERSION,
                "normalization_version": self.normalization_version,
                "special": self.special.as_dict(),
                "special_strings": self.special_strings,
                "tokenizer": json.loads(self._tokenizer.to_str()),
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically (temporary file, then rename)."""
        atomic_write_text(path, self.to_json())

    @property
    def sha256(self) -> str:
        """SHA-256 of :meth:`to_json` (recorded in LMDB manifests and checkpoints)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self.to_json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = CaptionTokenizer.from_json(state["json"])
        self.__dict__.update(other.__dict__)

    # ----------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of one caption, without special tokens (no ``[SOS]``/``[EOS]``)."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many captions at once (parallel, in Rust)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; every special id (pad, unk, sos, eos, mask) is dropped."""
        kept = [int(i) for i in ids if int(i) not in self._special_ids]
        return str(self._tokenizer.decode(kept, skip_special_tokens=False))

    def id_to_token(self, index: int) -> str | None:
        """The token string of one id."""
        return self._tokenizer.id_to_token(index)

    def __repr__(self) -> str:
        return f"CaptionTokenizer(vocab_size={self.vocab_size}, special={self.special})"
