import json
import os
import sys

import numpy as np
import pytest
import tokenizers  # noqa: F401  (the `text` extra; CI installs it: a missing one must fail)

from jaxopt_models import data
from jaxopt_models.data import tokenizers as tok_mod

SAMPLES = [
    "",
    "hello world",
    "héllo wörld — naïve café",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and combining e\u0301",
    "tabs\tand\nnewlines\r\n  indented\x00nul",
]


def _training_texts() -> list[str]:
    """About 60 kB of real text: leading standard-library modules (deterministic)."""
    docs = data.python_stdlib_documents()
    picked = [d.text for d in docs if d.name in ("abc.py", "bisect.py", "colorsys.py", "copy.py")]
    assert len(picked) == 4
    return picked + ["naïve café — 日本語 🙂\n" * 20]


@pytest.fixture(scope="module")
def bpe() -> data.BPETokenizer:
    return data.BPETokenizer.train(_training_texts(), vocab_size=400, seed=0)


# ----------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text):
    tok = data.ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    np.testing.assert_array_equal(ids, np.frombuffer(text.encode("utf-8"), np.uint8))
    assert tok.decode(ids) == text
    assert tok.num_bytes(ids) == len(text.encode("utf-8"))


def test_byte_facts_and_invalid_utf8():
    tok = data.ByteTokenizer()
    assert tok.vocab_size == 256 and tok.separator_id == 0 and tok.name == "byte"
    assert tok.decode(np.array([104, 0xFF, 105])) == "h\ufffdi"  # errors="replace"
    assert tok.decode(np.array([[104, 105]])) == "hi"  # any shape, flattened
    np.testing.assert_array_equal(tok.token_num_bytes(), np.ones(256))
    assert isinstance(tok, data.Tokenizer)


def test_byte_errors():
    tok = data.ByteTokenizer()
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 256\); got values in \[0, 256\]"):
        tok.decode([0, 256])
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="ids must hold integers"):
        tok.decode(np.array([1.5]))
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"abc")


def test_byte_save_load(tmp_path):
    tok = data.ByteTokenizer()
    d = tok.save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / tok_mod.CONFIG_FILE).read_text())["kind"] == "byte"
    assert data.ByteTokenizer.load(d) == tok
    assert data.load_tokenizer(d) == tok
    with pytest.raises(ValueError, match="holds a 'byte' tokenizer"):
        data.BPETokenizer.load(d)


# ----------------------------------------------------------------------------- BPE


def test_bpe_facts(bpe):
    assert 257 < bpe.vocab_size <= 400
    assert bpe.separator_id == 0 and bpe.name == "bpe"
    assert isinstance(bpe, data.Tokenizer)
    table = bpe.token_num_bytes()
    assert table.shape == (bpe.vocab_size,) and table.dtype == np.int32
    assert table[bpe.separator_id] == 1 and table.min() == 1 and table.max() > 3  # merges
    text = _training_texts()[0]
    ids = bpe.encode(text)
    assert ids.dtype == np.int32 and ids.max() < bpe.vocab_size
    assert len(ids) < 0.6 * len(text.encode("utf-8"))  # it compresses its own training text


@pytest.mark.parametrize("text", SAMPLES + ["def unseen_function(argument):\n    return 42\n"])
def test_bpe_round_trip_and_bytes(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.num_bytes(ids) == len(text.encode("utf-8"))
    np.testing.assert_array_equal(bpe.encode_batch([text, "x"])[0], ids)


def test_bpe_separator_counts_one_byte(bpe):
    ids = np.concatenate([[bpe.separator_id], bpe.encode("ab"), [bpe.separator_id]])
    assert bpe.num_bytes(ids) == 4
    assert bpe.decode(ids) == f"{tok_mod.BPE_SEPARATOR}ab{tok_mod.BPE_SEPARATOR}"


def test_bpe_training_is_deterministic(bpe):
    again = data.BPETokenizer.train(_training_texts(), vocab_size=400, seed=0)
    assert again.fingerprint() == bpe.fingerprint() and again == bpe
    text = "class Foo(object):\n    pass\n"
    np.testing.assert_array_equal(again.encode(text), bpe.encode(text))
    other = data.BPETokenizer.train(_training_texts(), vocab_size=300, seed=0)
    assert other != bpe and other.vocab_size <= 300


def test_bpe_max_train_bytes_sample_depends_on_seed():
    texts = [f"document {i} " + "abcdefgh"[i % 8] * 50 + "\n" for i in range(40)]
    a = data.BPETokenizer.train(texts, 300, seed=0, max_train_bytes=400)
    b = data.BPETokenizer.train(texts, 300, seed=0, max_train_bytes=400)
    c = data.BPETokenizer.train(texts, 300, seed=1, max_train_bytes=400)
    assert a == b and a != c


def test_bpe_save_load_round_trip(bpe, tmp_path):
    d = bpe.save(tmp_path / "run" / "tokenizer")
    assert sorted(os.listdir(d)) == sorted([tok_mod.BPE_FILE, tok_mod.CONFIG_FILE])
    loaded = data.BPETokenizer.load(d)
    assert loaded == bpe and loaded.vocab_size == bpe.vocab_size
    for text in SAMPLES:
        np.testing.assert_array_equal(loaded.encode(text), bpe.encode(text))
        assert loaded.decode(bpe.encode(text)) == text
    np.testing.assert_array_equal(loaded.token_num_bytes(), bpe.token_num_bytes())
    assert data.load_tokenizer(d) == bpe
    assert data.get_tokenizer("bpe", directory=d) == bpe
    with pytest.raises(ValueError, match="holds a 'bpe' tokenizer"):
        data.ByteTokenizer.load(d)


def test_bpe_errors(tmp_path, bpe):
    with pytest.raises(ValueError, match=r"vocab_size=256 must be >= 257"):
        data.BPETokenizer.train(["abc"], 256)
    with pytest.raises(TypeError, match="vocab_size="):
        data.BPETokenizer.train(["abc"], 300.0)
    with pytest.raises(ValueError, match="texts is empty"):
        data.BPETokenizer.train([], 300)
    with pytest.raises(TypeError, match="texts must be a sequence of str, got str"):
        data.BPETokenizer.train("abc", 300)
    with pytest.raises(ValueError, match="min_frequency=0"):
        data.BPETokenizer.train(["abc"], 300, min_frequency=0)
    with pytest.raises(ValueError, match="max_train_bytes=0"):
        data.BPETokenizer.train(["abc"], 300, max_train_bytes=0)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer_config.json"):
        data.BPETokenizer.load(tmp_path)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, "):
        bpe.decode([bpe.vocab_size])


def test_bpe_without_the_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r"pip install 'jaxopt_models\[text\]'"):
        data.BPETokenizer.train(["abc"], 300)


# ----------------------------------------------------------------------------- registry


def test_get_tokenizer():
    assert data.get_tokenizer("byte") == data.ByteTokenizer()
    tok = data.get_tokenizer("bpe", texts=_training_texts(), vocab_size=300, seed=0)
    assert isinstance(tok, data.BPETokenizer) and tok.vocab_size <= 300
    assert data.TOKENIZER_NAMES == ("bpe", "byte")


@pytest.mark.parametrize(
    "name, kwargs, error, match",
    [
        ("sentencepiece", {}, ValueError, r"tokenizer name='sentencepiece' is not known; allowed"),
        ("byte", {"vocab_size": 3}, TypeError, "tokenizer 'byte' takes no arguments"),
        ("bpe", {"texts": ["a"]}, TypeError, r"missing \['vocab_size'\]"),
        ("bpe", {"texts": ["a"], "vocab_size": 300, "dropout": 0.1}, TypeError, "unknown"),
        ("bpe", {"directory": "x", "seed": 0}, TypeError, "takes no other arguments"),
    ],
)
def test_get_tokenizer_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        data.get_tokenizer(name, **kwargs)
