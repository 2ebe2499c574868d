"""Offline text corpora, document-level splits and language-model batching.

Corpora are read from files already on the machine; nothing downloads:

* ``"python_stdlib"``: the running Python's standard-library ``.py`` files (always present);
* ``"bible_kjv"``: the King James Bible from Debian's ``bible-kjv-text`` (decoded with the
  ``bible`` reader program of ``bible-kjv``), one document per book;
* ``"python_docs"``: the reStructuredText sources shipped by Debian's ``python3.11-doc``
  (or, when only HTML is there, the HTML pages stripped to text).

A corpus is split into train / validation / test BY DOCUMENT, so no document is seen in two
splits; each split is one token stream in which every document is preceded by the tokenizer's
separator. Training takes random contiguous windows; evaluation scores every token of a
held-out stream exactly once.
"""

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from html.parser import HTMLParser
from typing import NamedTuple

import numpy as np

from jaxopt_models.checks import check_one_of
from jaxopt_models.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer

Batch = dict[str, np.ndarray]
SPLITS = ("train", "val", "test")


class Document(NamedTuple):
    """One document of a corpus.

    Attributes:
      name: a name unique within the corpus (a relative path, a book name).
      text: the document's text.
    """

    name: str
    text: str


# --------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------

STDLIB_EXCLUDED_DIRS = ("test", "tests", "idle_test", "site-packages", "dist-packages")
"""Directory names skipped in the standard library (besides ``__pycache__`` and ``config-*``)."""

BIBLE_DATA_FILE = "bible.data"
BIBLE_KJV_FILES = (BIBLE_DATA_FILE, BIBLE_DATA_FILE + ".conc")
"""The package's files: the compressed text and its concordance (the reader needs both)."""
BIBLE_KJV_DIRS = ("/usr/lib",)
"""Where Debian's ``bible-kjv-text`` installs ``bible.data``."""
BIBLE_KJV_HINT = (
    "Install Debian's package with `apt-get install -y bible-kjv-text` (its reader program "
    "`bible` comes with `bible-kjv`, which apt installs alongside), or pass data_dir= (or set "
    f"JAXOPT_MODELS_BIBLE_KJV) to a directory holding {' and '.join(BIBLE_KJV_FILES)}."
)
BIBLE_PROGRAM_PATHS = ("/usr/bin/bible", "/usr/games/bible")
"""Where Debian's ``bible-kjv`` installs the reader program, when it is not on ``PATH``."""
BIBLE_READER_HINT = (
    "The `bible` program decodes bible.data: install it with `apt-get install -y bible-kjv "
    "bible-kjv-text`, or set JAXOPT_MODELS_BIBLE_PROGRAM to its path."
)
BIBLE_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)  # fmt: skip
"""The 66 books in the order of the King James Bible (the document names of ``bible_kjv``)."""

PYTHON_DOCS_DIRS = ("/usr/share/doc/python3.11/html",)
"""Where Debian's ``python3.11-doc`` installs the documentation (``_sources/`` inside)."""
PYTHON_DOCS_HINT = (
    "Install Debian's package with `apt-get install -y python3.11-doc`, or pass data_dir= (or "
    "set JAXOPT_MODELS_PYTHON_DOCS) to its html directory or to a directory of .rst/.txt files."
)


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def _walk_files(root: str, keep: Callable[[str], bool], skip_dir: Callable[[str], bool]):
    """Relative paths of the files under ``root`` that ``keep``, sorted (deterministic)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not skip_dir(d))
        for f in filenames:
            if keep(f):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(p.replace(os.sep, "/") for p in found)


def python_stdlib_documents(data_dir: str | None = None) -> tuple[Document, ...]:
    """The standard library's ``.py`` files, one document each, in sorted path order.

    Test directories (``test``, ``tests``, ``idle_test``), ``site-packages``,
    ``dist-packages``, ``__pycache__`` and ``config-*`` are skipped.

    Args:
      data_dir: the library directory; ``None`` tries ``$JAXOPT_MODELS_PYTHON_STDLIB``, then
        ``sysconfig.get_paths()["stdlib"]`` of the running Python.

    Returns:
      A tuple of ``Document(relative_path, source_text)``.

    Raises:
      FileNotFoundError: the directory is missing or holds no ``.py`` file.

    Example:
      >>> docs = python_stdlib_documents()
      >>> docs[0].name
      '__future__.py'
    """
    root = data_dir or os.environ.get("JAXOPT_MODELS_PYTHON_STDLIB") or _stdlib_dir()
    return _stdlib_cached(os.path.abspath(root))


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


def _skip_stdlib_dir(d: str) -> bool:
    return d in STDLIB_EXCLUDED_DIRS or d == "__pycache__" or d.startswith("config-")


@functools.lru_cache(maxsize=4)
def _stdlib_cached(root: str) -> tuple[Document, ...]:
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"data_dir={root!r} for python_stdlib is not a directory; pass the directory of "
            "the standard library's .py files"
        )
    paths = _walk_files(root, lambda f: f.endswith(".py"), _skip_stdlib_dir)
    docs = tuple(Document(p, _read_text(os.path.join(root, p))) for p in paths)
    if not docs:
        raise FileNotFoundError(f"data_dir={root!r} holds no .py files for python_stdlib")
    return docs


_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def parse_bible_verses(dump: str) -> tuple[Document, ...]:
    """Groups the ``bible`` program's one-verse-a-line output into one document per book.

    Args:
      dump: lines like ``"Ge1:1 In the beginning ..."``, books in canonical order.

    Returns:
      ``Document(book_name, text)`` per book, each verse on its own line as
      ``"chapter:verse text"``. Books are named from ``BIBLE_BOOKS`` when there are 66,
      otherwise by the program's abbreviation.

    Raises:
      ValueError: a non-empty line is not a verse.
    """
    books: list[tuple[str, list[str]]] = []
    for line in dump.splitlines():
        if not line.strip():
            continue
        m = _VERSE.match(line)
        if m is None:
            raise ValueError(f"not a verse line of the bible program: {line[:80]!r}")
        abbrev, chapter, verse, text = m.groups()
        if not books or books[-1][0] != abbrev:
            books.append((abbrev, []))
        books[-1][1].append(f"{chapter}:{verse} {text}")
    names = BIBLE_BOOKS if len(books) == len(BIBLE_BOOKS) else [b for b, _ in books]
    return tuple(Document(n, "\n".join(v) + "\n") for n, (_, v) in zip(names, books, strict=True))


def _bible_program() -> str:
    prog = os.environ.get("JAXOPT_MODELS_BIBLE_PROGRAM") or shutil.which("bible")
    if not prog or not os.path.isfile(prog):
        for candidate in BIBLE_PROGRAM_PATHS:
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"bible_kjv: the `bible` reader program was not found. {BIBLE_READER_HINT}"
        )
    return prog


def bible_kjv_documents(data_dir: str | None = None) -> tuple[Document, ...]:
    """The King James Bible from Debian's ``bible-kjv-text``, one document per book (66).

    ``bible.data`` is stored in the package's own compressed format; it is decoded by running
    the package's reader program ``bible`` (``bible-kjv``) once, with no network.

    Args:
      data_dir: directory holding ``bible.data`` and ``bible.data.conc``; ``None`` tries
        ``$JAXOPT_MODELS_BIBLE_KJV`` and then the package's location.

    Returns:
      A tuple of ``Document(book_name, text)`` in canonical order.

    Raises:
      FileNotFoundError: no ``bible.data`` / ``bible.data.conc`` (or no reader program); the
        message says what to install.

    Example:
      >>> [d.name for d in bible_kjv_documents()[:2]]
      ['Genesis', 'Exodus']
    """
    candidates = (
        [data_dir] if data_dir else [os.environ.get("JAXOPT_MODELS_BIBLE_KJV"), *BIBLE_KJV_DIRS]
    )
    for d in candidates:
        if d and all(os.path.isfile(os.path.join(d, f)) for f in BIBLE_KJV_FILES):
            return _bible_cached(os.path.abspath(d), _bible_program())
    looked = [c for c in candidates if c]
    raise FileNotFoundError(
        f"bible_kjv corpus not found: no {' and '.join(BIBLE_KJV_FILES)} in {looked}. "
        f"{BIBLE_KJV_HINT}"
    )


@functools.lru_cache(maxsize=2)
def _bible_cached(directory: str, program: str) -> tuple[Document, ...]:
    # -f turns pretty-printing off (one verse a line with its reference); -p is the list of
    # directories searched for bible.data (space-separated, hence cwd and ".").
    cmd = [program, "-f", "-p", ".", "Gen1:1-Rev22:21"]
    try:
        out = subprocess.run(
            cmd,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )
    except subprocess.CalledProcessError as e:
        err = e.stderr.decode("utf-8", errors="replace").strip()
        raise RuntimeError(
            f"`{' '.join(cmd)}` in {directory!r} failed ({e.returncode}): {err}"
        ) from e
    docs = parse_bible_verses(out.stdout.decode("utf-8", errors="replace"))
    if not docs:
        raise RuntimeError(f"`{' '.join(cmd)}` printed no verses. {BIBLE_READER_HINT}")
    return docs


class _TextOfHTML(HTMLParser):
    """Collects the text of an HTML page, skipping scripts, styles and navigation."""

    _SKIP = {"script", "style", "head", "nav", "footer"}
    _BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Strips tags from an HTML page with the standard library's ``html.parser``.

    Args:
      html: the page.

    Returns:
      Its visible text, blocks on their own lines, runs of blank lines collapsed.

    Example:
      >>> html_to_text("<p>a &amp; <b>b</b></p>")
      'a & b\\n'
    """
    parser = _TextOfHTML()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    lines = [ln.rstrip() for ln in text.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""


def python_docs_documents(data_dir: str | None = None) -> tuple[Document, ...]:
    """The Python documentation from Debian's ``python3.11-doc``, one document per page.

    Reads the reStructuredText sources (``html/_sources/**/*.rst.txt``); a directory without
    them is read as ``.rst``/``.txt`` files, and failing that as ``.html`` pages stripped to
    text.

    Args:
      data_dir: the ``html`` directory, or any directory of ``.rst``/``.txt``/``.html``
        files; ``None`` tries ``$JAXOPT_MODELS_PYTHON_DOCS`` and then the package's location.

    Returns:
      A tuple of ``Document(relative_path, text)`` in sorted path order.

    Raises:
      FileNotFoundError: nothing found; the message says what to install.

    Example:
      >>> docs = python_docs_documents()
    """
    candidates = (
        [data_dir] if data_dir else [os.environ.get("JAXOPT_MODELS_PYTHON_DOCS"), *PYTHON_DOCS_DIRS]
    )
    for d in candidates:
        if d and os.path.isdir(d):
            docs = _python_docs_cached(os.path.abspath(d))
            if docs:
                return docs
    looked = [c for c in candidates if c]
    raise FileNotFoundError(
        f"python_docs corpus not found: no .rst/.txt/.html files in {looked}. {PYTHON_DOCS_HINT}"
    )


@functools.lru_cache(maxsize=2)
def _python_docs_cached(directory: str) -> tuple[Document, ...]:
    sources = os.path.join(directory, "_sources")
    root = sources if os.path.isdir(sources) else directory
    skip = lambda d: d.startswith((".", "_"))
    text_files = _walk_files(root, lambda f: f.endswith((".rst", ".txt")), skip)
    if text_files:
        docs = [Document(p, _read_text(os.path.join(root, p))) for p in text_files]
    else:
        html_files = _walk_files(root, lambda f: f.endswith((".html", ".htm")), skip)
        docs = [Document(p, html_to_text(_read_text(os.path.join(root, p)))) for p in html_files]
    return tuple(d for d in docs if d.text.strip())


_CORPORA: dict[str, Callable[..., tuple[Document, ...]]] = {
    "bible_kjv": bible_kjv_documents,
    "python_docs": python_docs_documents,
    "python_stdlib": python_stdlib_documents,
}


def corpus_names() -> tuple[str, ...]:
    """Returns the registered corpus names, sorted."""
    return tuple(sorted(_CORPORA))


def load_corpus(name: str = "python_stdlib", data_dir: str | None = None) -> tuple[Document, ...]:
    """Loads the corpus registered as ``name`` as a tuple of documents.

    Args:
      name: one of ``corpus_names()``: ``"bible_kjv"``, ``"python_docs"``, ``"python_stdlib"``.
      data_dir: where its files are (see each loader); ``None`` uses the environment
        variable, then the Debian package's location (the running Python for the stdlib).

    Returns:
      A tuple of ``Document(name, text)`` in a deterministic order.

    Raises:
      ValueError: unknown name. FileNotFoundError: the corpus is not on this machine (the
        message says which package to install).

    Example:
      >>> docs = load_corpus("python_stdlib")
    """
    check_one_of("corpus name", name, corpus_names())
    return _CORPORA[name](data_dir)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for arg, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"{arg}={v!r} must be a number in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction!r} must be < 1 "
            "so that documents are left for training"
        )


def document_rank(name: str, seed: int) -> int:
    """A seeded pseudo-random rank of a document from its name alone (stable across runs).

    Example:
      >>> document_rank("os.py", 0) == document_rank("os.py", 0)
      True
    """
    digest = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def split_documents(
    documents: Sequence[Document],
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> tuple[tuple[Document, ...], tuple[Document, ...], tuple[Document, ...]]:
    """Splits documents into train / validation / test by document, deterministically.

    Documents are ordered by a seeded hash of their name (``document_rank``); the first
    ``round(n * val_fraction)`` go to validation, the next ``round(n * test_fraction)`` to test
    (each at least one document when its fraction is > 0) and the rest to training. A
    document's place depends only on its name and the seed, so each split keeps this order.

    Args:
      documents: documents with unique names.
      val_fraction: fraction of documents for validation, in ``[0, 1)``.
      test_fraction: fraction of documents for test, in ``[0, 1)``; the two sum to < 1.
      seed: seed of the hash.

    Returns:
      ``(train, val, test)``, tuples of documents that share no document.

    Raises:
      ValueError: bad fractions, duplicate names, or too few documents to fill every split.

    Example:
      >>> train, val, test = split_documents(load_corpus("bible_kjv"), seed=0)
    """
    _check_fractions(val_fraction, test_fraction)
    docs = list(documents)
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        raise ValueError("documents must have unique names to be split by document")
    n = len(docs)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} documents cannot fill a train split with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} ({n_val} val + {n_test} test documents)"
        )
    order = sorted(docs, key=lambda d: (document_rank(d.name, seed), d.name))
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    return tuple(train), tuple(val), tuple(test)


def _truncate(documents: Sequence[Document], max_bytes: int) -> tuple[Document, ...]:
    """The leading documents holding at most ``max_bytes`` UTF-8 bytes (the last one cut)."""
    kept, total = [], 0
    for d in documents:
        raw = d.text.encode("utf-8")
        if total + len(raw) > max_bytes:
            cut = raw[: max_bytes - total].decode("utf-8", errors="ignore")
            if cut:
                kept.append(Document(d.name, cut))
            break
        kept.append(d)
        total += len(raw)
    return tuple(kept)


def encode_documents(documents: Sequence[Document], tokenizer: Tokenizer) -> tuple[np.ndarray, int]:
    """Encodes documents into one stream, each document preceded by the separator.

    Args:
      documents: the documents, in order.
      tokenizer: a ``ByteTokenizer`` or ``BPETokenizer``.

    Returns:
      ``(tokens, num_bytes)``: ``int32`` tokens of shape ``(N,)`` starting with the separator,
      and the UTF-8 bytes that ``tokens[1:]`` (the tokens a model predicts) stand for, each
      separator counted as one byte.

    Example:
      >>> tokens, num_bytes = encode_documents(docs, ByteTokenizer())
    """
    sep = np.array([tokenizer.separator_id], np.int32)
    pieces = []
    for ids in tokenizer.encode_batch([d.text for d in documents]):
        pieces += [sep, ids.astype(np.int32, copy=False)]
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return tokens, tokenizer.num_bytes(tokens[1:])


class TextDataset(NamedTuple):
    """A tokenized corpus split by document into train / validation / test streams.

    Attributes:
      name: corpus name.
      train: ``int32`` tokens of the training split, shape ``(N_train,)``.
      val: ``int32`` tokens of the validation split, shape ``(N_val,)``.
      test: ``int32`` tokens of the test split, shape ``(N_test,)``.
      tokenizer: the tokenizer that produced them.
      num_bytes: ``{"train", "val", "test"} -> int``: UTF-8 bytes that each stream's predicted
        tokens (all but the first) stand for, the divisor of bits per byte when
        ``lm_eval_batches`` scores the whole split.
      num_documents: ``{"train", "val", "test"} -> int``: documents in each split.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    tokenizer: Tokenizer
    num_bytes: dict[str, int]
    num_documents: dict[str, int]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size."""
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        """The tokens of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        check_one_of("split", name, SPLITS)
        return getattr(self, name)


def get_text_dataset(
    name: str = "python_stdlib",
    *,
    tokenizer: str | Tokenizer = "byte",
    vocab_size: int = 1024,
    seed: int = 0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_bytes: int | None = None,
    data_dir: str | None = None,
) -> TextDataset:
    """Loads a corpus, splits it by document and tokenizes each split into one stream.

    Args:
      name: one of ``corpus_names()``; ``"python_stdlib"`` is always present.
      tokenizer: ``"byte"``, ``"bpe"`` (trained here on the training split only, with
        ``vocab_size`` and ``seed``), or a tokenizer instance (e.g. one loaded from a run).
      vocab_size: most BPE ids when ``tokenizer="bpe"`` (ignored otherwise).
      seed: seed of the document split (and of the BPE training sample).
      val_fraction: fraction of documents for validation, in ``[0, 1)``.
      test_fraction: fraction of documents for test, in ``[0, 1)``.
      max_bytes: keep about this many UTF-8 bytes of text in all (quick runs): each split
        keeps its leading documents up to ``max_bytes`` times its fraction (at least one
        byte), cutting the last one. ``None`` keeps everything.
      data_dir: where the corpus files are (see ``load_corpus``).

    Returns:
      A ``TextDataset``.

    Raises:
      ValueError: unknown corpus or tokenizer name, bad fractions or ``max_bytes``.
      FileNotFoundError: the corpus is not on this machine (the message says what to install).

    Example:
      >>> ds = get_text_dataset("python_stdlib", tokenizer="byte", max_bytes=1_000_000)
      >>> batch = next(lm_train_batches(ds.train, 8, 128, seed=0))
    """
    check_one_of("corpus name", name, corpus_names())
    if isinstance(tokenizer, str):
        check_one_of("tokenizer", tokenizer, ("bpe", "byte"))
    elif not isinstance(tokenizer, Tokenizer):
        raise TypeError(
            f"tokenizer must be 'byte', 'bpe' or a tokenizer instance, got {type(tokenizer)}"
        )
    _check_fractions(val_fraction, test_fraction)
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ValueError(f"max_bytes={max_bytes!r} must be a positive int or None")

    docs = load_corpus(name, data_dir)
    splits = split_documents(
        docs, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )
    if max_bytes is not None:
        fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        budgets = [max(1, int(max_bytes * f)) for f in fractions]
        splits = tuple(_truncate(s, b) for s, b in zip(splits, budgets, strict=True))
    if isinstance(tokenizer, str):  # "byte", or "bpe" trained on the training split only
        if tokenizer == "byte":
            tokenizer = ByteTokenizer()
        else:
            tokenizer = BPETokenizer.train([d.text for d in splits[0]], vocab_size, seed)
    streams, num_bytes, num_docs = {}, {}, {}
    for split, split_docs in zip(SPLITS, splits, strict=True):
        streams[split], num_bytes[split] = encode_documents(split_docs, tokenizer)
        num_docs[split] = len(split_docs)
    return TextDataset(
        name, streams["train"], streams["val"], streams["test"], tokenizer, num_bytes, num_docs
    )


# --------------------------------------------------------------------------------------------
# Language-model batching
# --------------------------------------------------------------------------------------------


def _check_positive_int(arg: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{arg}={v!r} must be a positive int")
    if v < 1:
        raise ValueError(f"{arg}={v!r} must be a positive int (>= 1)")


def _check_tokens(tokens) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens must be a 1-D integer array, got shape {tokens.shape} dtype {tokens.dtype}"
        )
    return tokens


def lm_train_batch(
    tokens: np.ndarray, batch_size: int, context: int, *, seed: int, step: int
) -> Batch:
    """The training batch of ``step``: random contiguous windows that depend only on (seed, step).

    Args:
      tokens: ``(N,)`` integer token stream, ``N >= context + 1``.
      batch_size: windows per batch, >= 1.
      context: tokens per window, >= 1.
      seed: seed of the window positions.
      step: training step (a run can resume at any step).

    Returns:
      ``{"tokens": (batch_size, context) int32, "targets": (batch_size, context) int32}`` with
      ``targets[:, t] == tokens[:, t + 1]`` inside each window of the stream.

    Raises:
      ValueError: bad sizes, or a stream too short for one window.

    Example:
      >>> b = lm_train_batch(ds.train, 8, 128, seed=0, step=0)
      >>> b["tokens"].shape
      (8, 128)
    """
    tokens = _check_tokens(tokens)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("context", context)
    n = len(tokens)
    if n < context + 1:
        raise ValueError(
            f"context={context} needs a token stream of at least {context + 1} tokens, but "
            f"the split has {n}; use a smaller context or a larger split"
        )
    rng = np.random.default_rng([int(seed), int(step)])
    starts = rng.integers(0, n - context, size=batch_size)  # window [s, s + context] inclusive
    windows = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int32)
    return {"tokens": windows[:, :-1], "targets": windows[:, 1:]}


def lm_train_batches(
    tokens: np.ndarray,
    batch_size: int,
    context: int,
    *,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[Batch]:
    """Yields ``lm_train_batch`` for steps ``start_step, start_step + 1, ...``.

    Args:
      tokens: ``(N,)`` integer token stream, ``N >= context + 1``.
      batch_size: windows per batch, >= 1.
      context: tokens per window, >= 1.
      seed: seed of the window positions.
      start_step: first step (resuming).
      num_steps: how many batches; ``None`` yields forever.

    Yields:
      ``{"tokens", "targets"}`` of shape ``(batch_size, context)``, ``int32``.

    Example:
      >>> for batch in lm_train_batches(ds.train, 8, 128, seed=0, num_steps=100): ...
    """
    lm_train_batch(tokens, batch_size, context, seed=seed, step=start_step)  # validate eagerly
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 0):
        raise ValueError(f"num_steps={num_steps!r} must be a non-negative int or None")

    def generate():
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield lm_train_batch(tokens, batch_size, context, seed=seed, step=step)
            step += 1

    return generate()


def lm_eval_num_batches(num_tokens: int, batch_size: int, context: int) -> int:
    """Number of batches ``lm_eval_batches`` yields for a stream of ``num_tokens`` tokens."""
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("context", context)
    windows = -(-(num_tokens - 1) // context)
    return -(-windows // batch_size)


def lm_eval_batches(tokens: np.ndarray, batch_size: int, context: int) -> Iterator[Batch]:
    """Yields the whole stream in order, as non-overlapping windows with a mask.

    Window ``i`` reads ``tokens[i*context : (i+1)*context]`` and predicts the next token of
    each, so every token but the first is a target exactly once. The last window is padded
    with zeros and the last batch with empty windows; padding has ``mask=False``, so all
    batches have one shape (one compilation).

    Args:
      tokens: ``(N,)`` integer token stream, ``N >= 2``.
      batch_size: windows per batch, >= 1.
      context: tokens per window, >= 1.

    Yields:
      ``{"tokens": (B, T) int32, "targets": (B, T) int32, "mask": (B, T) bool}``, with ``B =
      batch_size`` and ``T = context``; ``mask.sum()`` over all batches is ``N - 1``.

    Example:
      >>> total = sum(float(lm_loss(apply(p, b["tokens"]), b["targets"], b["mask"]).total_nats)
      ...             for b in lm_eval_batches(ds.val, 16, 128))
      >>> bits_per_byte(total, ds.num_bytes["val"])
    """
    tokens = _check_tokens(tokens)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("context", context)
    n = len(tokens)
    if n < 2:
        raise ValueError(f"tokens has {n} tokens; evaluation needs at least 2 (one prediction)")

    def generate():
        num_pred = n - 1
        num_windows = -(-num_pred // context)
        padded = np.zeros(num_windows * context + 1, np.int32)
        padded[:n] = tokens
        valid = np.zeros(num_windows * context, bool)
        valid[:num_pred] = True
        inputs = padded[:-1].reshape(num_windows, context)
        targets = padded[1:].reshape(num_windows, context)
        valid = valid.reshape(num_windows, context)
        for start in range(0, num_windows, batch_size):
            x, y, m = (a[start : start + batch_size] for a in (inputs, targets, valid))
            pad = batch_size - len(x)
            if pad:
                x, y = (np.concatenate([a, np.zeros((pad, context), np.int32)]) for a in (x, y))
                m = np.concatenate([m, np.zeros((pad, context), bool)])
            yield {"tokens": x, "targets": y, "mask": m}

    return generate()
