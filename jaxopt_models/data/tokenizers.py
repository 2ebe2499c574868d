"""Offline tokenizers: UTF-8 bytes, and byte-level BPE trained locally.

Both turn a string into an ``int32`` NumPy array and back, save themselves to a directory (so a
run can keep the exact tokenizer it trained with) and say how many UTF-8 bytes a token stream
stands for, which is what bits per byte divides by. Nothing here downloads: the BPE tokenizer
is trained on the caller's texts with the optional ``tokenizers`` package
(``pip install 'jaxopt_models[text]'``).

Each tokenizer has a document separator (``separator_id``): the byte tokenizer uses the NUL
byte and the BPE tokenizer a special token. Either separator counts as one byte, so bits per
byte measured through different tokenizers on the same documents divide by the same number.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxopt_models._optional import require
from jaxopt_models.checks import check_one_of

TOKENIZER_NAMES = ("bpe", "byte")
CONFIG_FILE = "tokenizer_config.json"
"""File, inside a saved tokenizer's directory, that records which kind of tokenizer it is."""
BPE_FILE = "tokenizer.json"
"""File, inside a saved BPE tokenizer's directory, in the ``tokenizers`` package's format."""
BPE_SEPARATOR = "<|sep|>"
"""The BPE tokenizer's document separator (a special token, id 0)."""


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer here provides (``ByteTokenizer``, ``BPETokenizer``)."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def separator_id(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids) -> str: ...

    def num_bytes(self, ids) -> int: ...

    def save(self, directory: str | os.PathLike) -> str: ...


def _check_text(text: Any, arg: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{arg} must be a str, got {type(text).__name__}")
    return text


def _check_ids(ids: Any, vocab_size: int) -> np.ndarray:
    a = np.asarray(ids)
    if a.size == 0:
        return a.reshape(-1).astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"ids must hold integers, got dtype {a.dtype}")
    a = a.reshape(-1).astype(np.int64)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"ids must lie in [0, {vocab_size}); got values in [{lo}, {hi}]")
    return a


def _write_config(directory: str | os.PathLike, config: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return os.fspath(directory)


def _read_config(directory: str | os.PathLike) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"directory={os.fspath(directory)!r} holds no {CONFIG_FILE}; save a tokenizer "
            "there first with tokenizer.save(directory)"
        )
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    check_one_of(f"{CONFIG_FILE} kind", config.get("kind"), TOKENIZER_NAMES)
    return config


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no files, no training.

    The separator between documents is the NUL byte (id 0), which text files do not contain.

    Example:
      >>> tok = ByteTokenizer()
      >>> tok.encode("hé")
      array([104, 195, 169], dtype=int32)
      >>> tok.decode([104, 195, 169])
      'hé'
    """

    name = "byte"

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256."""
        return 256

    @property
    def separator_id(self) -> int:
        """Token id placed between documents: 0 (the NUL byte)."""
        return 0

    def encode(self, text: str) -> np.ndarray:
        """Encodes ``text`` to its UTF-8 bytes.

        Args:
          text: any string.

        Returns:
          ``int32`` array of shape ``(len(text.encode("utf-8")),)`` with values in ``[0, 256)``.
        """
        raw = _check_text(text).encode("utf-8")
        return np.frombuffer(raw, np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encodes each text of ``texts``; returns one ``int32`` array per text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        """Decodes byte ids to a string; invalid UTF-8 becomes U+FFFD (``errors="replace"``).

        Args:
          ids: integer ids in ``[0, 256)``, any shape (flattened).

        Returns:
          The decoded string.
        """
        a = _check_ids(ids, 256)
        return a.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def num_bytes(self, ids) -> int:
        """Number of UTF-8 bytes the ids stand for: one per id (the separator included)."""
        return int(np.asarray(ids).size)

    def token_num_bytes(self) -> np.ndarray:
        """Bytes per token id: an ``int32`` array of ones, shape ``(256,)``."""
        return np.ones(256, np.int32)

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``tokenizer_config.json`` into ``directory`` (created); returns the directory."""
        return _write_config(directory, {"kind": "byte", "vocab_size": 256})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ByteTokenizer":
        """Reads a directory written by ``ByteTokenizer.save``.

        Raises:
          ValueError: the directory holds another kind of tokenizer.
        """
        kind = _read_config(directory)["kind"]
        if kind != "byte":
            raise ValueError(f"directory={os.fspath(directory)!r} holds a {kind!r} tokenizer")
        return cls()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("ByteTokenizer")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _require_tokenizers():
    return require("tokenizers", "text", "BPETokenizer")


def _sample_texts(texts: list[str], max_train_bytes: int | None, seed: int) -> list[str]:
    """A seeded sample of whole texts holding at most ``max_train_bytes`` UTF-8 bytes."""
    if max_train_bytes is None:
        return texts
    order = np.random.default_rng(int(seed)).permutation(len(texts))
    kept, total = [], 0
    for i in order:
        n = len(texts[i].encode("utf-8"))
        if total + n > max_train_bytes:
            if not kept:  # always train on something: the first text, cut to the budget
                raw = texts[i].encode("utf-8")[:max_train_bytes]
                kept.append(raw.decode("utf-8", errors="ignore"))
            continue
        kept.append(texts[i])
        total += n
    return kept


class BPETokenizer:
    """Byte-level BPE trained locally with the ``tokenizers`` package.

    Every string encodes (the 256 byte symbols are always in the vocabulary) and decodes back
    exactly. Build one with ``BPETokenizer.train`` or ``BPETokenizer.load``.

    Example:
      >>> tok = BPETokenizer.train(["def f(x):\\n    return x\\n"] * 10, vocab_size=300)
      >>> tok.decode(tok.encode("def g(y):"))
      'def g(y):'
    """

    name = "bpe"

    def __init__(self, backend: Any):
        """Wraps a ``tokenizers.Tokenizer`` built by ``train`` or ``load``."""
        tokenizers = _require_tokenizers()
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        sep = backend.token_to_id(BPE_SEPARATOR)
        if sep is None:
            raise ValueError(f"backend has no separator token {BPE_SEPARATOR!r}")
        self._backend = backend
        self._separator_id = int(sep)
        self._vocab_size = int(backend.get_vocab_size(with_added_tokens=True))
        # A byte-level token is a string over a 256-symbol alphabet, one symbol per byte.
        table = np.zeros(self._vocab_size, np.int32)
        for token, i in backend.get_vocab(with_added_tokens=True).items():
            table[i] = len(token)
        table[self._separator_id] = 1
        self._token_num_bytes = table

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        vocab_size: int,
        seed: int = 0,
        *,
        min_frequency: int = 2,
        max_train_bytes: int | None = None,
    ) -> "BPETokenizer":
        """Trains a byte-level BPE tokenizer on ``texts``; the same arguments give the same one.

        Args:
          texts: training documents (non-empty sequence of str).
          vocab_size: the most token ids, >= 257 (256 bytes + the separator); training stops
            earlier when no pair occurs ``min_frequency`` times, so ``tok.vocab_size`` may be
            smaller.
          seed: picks the sample of texts when ``max_train_bytes`` limits them (BPE training
            itself has no randomness).
          min_frequency: the least count of a pair to be merged, >= 1.
          max_train_bytes: train on a seeded sample of whole texts of at most this many UTF-8
            bytes (quicker); ``None`` uses all.

        Returns:
          A ``BPETokenizer``.

        Example:
          >>> tok = BPETokenizer.train(corpus_texts, vocab_size=1024, seed=0)
        """
        tokenizers = _require_tokenizers()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}")
        texts = [_check_text(t, "texts[i]") for t in texts]
        if not texts:
            raise ValueError("texts is empty; BPE needs at least one training text")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size={vocab_size!r} must be an int >= 257")
        if vocab_size < 257:
            raise ValueError(f"vocab_size={vocab_size!r} must be >= 257 (256 bytes + separator)")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int):
            raise TypeError(f"min_frequency={min_frequency!r} must be an int >= 1")
        if min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency!r} must be >= 1")
        if max_train_bytes is not None and (
            not isinstance(max_train_bytes, int) or max_train_bytes < 1
        ):
            raise ValueError(f"max_train_bytes={max_train_bytes!r} must be a positive int or None")
        texts = _sample_texts(texts, max_train_bytes, seed)

        pre, dec = tokenizers.pre_tokenizers, tokenizers.decoders
        backend = tokenizers.Tokenizer(tokenizers.models.BPE())
        backend.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = dec.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=min_frequency,
            special_tokens=[BPE_SEPARATOR],
            initial_alphabet=pre.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BPETokenizer":
        """Reads a directory written by ``BPETokenizer.save``.

        Raises:
          FileNotFoundError: the directory lacks the files.
          ValueError: the directory holds another kind of tokenizer.
        """
        tokenizers = _require_tokenizers()
        kind = _read_config(directory)["kind"]
        if kind != "bpe":
            raise ValueError(f"directory={os.fspath(directory)!r} holds a {kind!r} tokenizer")
        path = os.path.join(directory, BPE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"directory={os.fspath(directory)!r} lacks {BPE_FILE}")
        return cls(tokenizers.Tokenizer.from_file(path))

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``.

        Returns:
          The directory, for ``BPETokenizer.load`` / ``load_tokenizer``.
        """
        os.makedirs(directory, exist_ok=True)
        self._backend.save(os.path.join(directory, BPE_FILE))
        return _write_config(
            directory,
            {"kind": "bpe", "vocab_size": self._vocab_size, "separator": BPE_SEPARATOR},
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the separator included)."""
        return self._vocab_size

    @property
    def separator_id(self) -> int:
        """Token id of the document separator ``<|sep|>``."""
        return self._separator_id

    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._backend

    def fingerprint(self) -> str:
        """A short hash of the tokenizer's full definition (equal for equal tokenizers)."""
        return hashlib.sha256(self._backend.to_str().encode("utf-8")).hexdigest()[:16]

    def encode(self, text: str) -> np.ndarray:
        """Encodes ``text`` to token ids.

        Args:
          text: any string.

        Returns:
          ``int32`` array of shape ``(num_tokens,)``.
        """
        ids = self._backend.encode(_check_text(text), add_special_tokens=False).ids
        return np.asarray(ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encodes each text (in parallel in the backend); returns one ``int32`` array each."""
        texts = [_check_text(t, "texts[i]") for t in texts]
        out = self._backend.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in out]

    def decode(self, ids) -> str:
        """Decodes ids to a string (the separator shows as ``<|sep|>``).

        Args:
          ids: integer ids in ``[0, vocab_size)``, any shape (flattened).

        Returns:
          The decoded string; invalid UTF-8 becomes U+FFFD.
        """
        a = _check_ids(ids, self._vocab_size)
        return self._backend.decode(a.tolist(), skip_special_tokens=False)

    def token_num_bytes(self) -> np.ndarray:
        """UTF-8 bytes per token id, ``int32`` of shape ``(vocab_size,)``; the separator is 1."""
        return self._token_num_bytes.copy()

    def num_bytes(self, ids) -> int:
        """Number of UTF-8 bytes the ids stand for (each separator counts as one byte).

        Example:
          >>> tok.num_bytes(tok.encode("héllo")) == len("héllo".encode())
          True
        """
        a = _check_ids(ids, self._vocab_size)
        return int(self._token_num_bytes[a].sum(dtype=np.int64))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self._vocab_size})"


def load_tokenizer(directory: str | os.PathLike) -> ByteTokenizer | BPETokenizer:
    """Loads whichever tokenizer ``save(directory)`` wrote there.

    Args:
      directory: a directory holding ``tokenizer_config.json`` (and, for BPE, ``tokenizer.json``).

    Returns:
      A ``ByteTokenizer`` or ``BPETokenizer``.

    Example:
      >>> tok.save(workdir + "/tokenizer"); load_tokenizer(workdir + "/tokenizer")
    """
    kind = _read_config(directory)["kind"]
    return ByteTokenizer.load(directory) if kind == "byte" else BPETokenizer.load(directory)


def get_tokenizer(name: str, **kwargs) -> ByteTokenizer | BPETokenizer:
    """Builds the tokenizer registered as ``name``.

    Args:
      name: ``"byte"`` (no arguments) or ``"bpe"``.
      **kwargs: for ``"bpe"``, either ``directory=`` (load a saved one) or ``texts=`` and
        ``vocab_size=`` plus optional ``seed=``, ``min_frequency=``, ``max_train_bytes=``
        (train one, see ``BPETokenizer.train``).

    Returns:
      A ``ByteTokenizer`` or ``BPETokenizer``.

    Raises:
      ValueError: unknown name. TypeError: arguments the tokenizer does not take.

    Example:
      >>> get_tokenizer("byte").vocab_size
      256
      >>> get_tokenizer("bpe", texts=docs, vocab_size=512, seed=0)
    """
    check_one_of("tokenizer name", name, TOKENIZER_NAMES)
    if name == "byte":
        if kwargs:
            raise TypeError(f"tokenizer 'byte' takes no arguments, got {sorted(kwargs)}")
        return ByteTokenizer()
    if "directory" in kwargs:
        extra = sorted(set(kwargs) - {"directory"})
        if extra:
            raise TypeError(f"tokenizer 'bpe' with directory= takes no other arguments: {extra}")
        return BPETokenizer.load(kwargs["directory"])
    allowed = {"texts", "vocab_size", "seed", "min_frequency", "max_train_bytes"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"tokenizer 'bpe' got unknown arguments {unknown}; allowed: {sorted(allowed)}"
        )
    missing = sorted({"texts", "vocab_size"} - set(kwargs))
    if missing:
        raise TypeError(
            f"tokenizer 'bpe' needs directory= (load) or texts= and vocab_size= (train); "
            f"missing {missing}"
        )
    return BPETokenizer.train(**kwargs)
