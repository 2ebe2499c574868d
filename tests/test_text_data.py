import os
import shutil

import numpy as np
import pytest

from jaxopt_models import data
from jaxopt_models.data import text

# ----------------------------------------------------------------------------- corpora


def test_python_stdlib_corpus_loads():
    docs = data.load_corpus("python_stdlib")
    names = [d.name for d in docs]
    assert len(docs) > 300 and names == sorted(names) and len(set(names)) == len(names)
    assert {"os.py", "json/__init__.py", "collections/__init__.py"} <= set(names)
    assert all(n.endswith(".py") for n in names)
    parts = {p for n in names for p in n.split("/")[:-1]}
    assert not parts & {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    os_doc = docs[names.index("os.py")]
    assert "def makedirs(" in os_doc.text
    assert data.load_corpus("python_stdlib") == docs  # deterministic (and cached)


def _write(path, content: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def test_python_stdlib_data_dir_and_env(tmp_path, monkeypatch):
    for rel in ("b.py", "a.py", "pkg/__init__.py", "pkg/test/test_x.py", "tests/t.py",
                "site-packages/x.py", "notes.txt"):  # fmt: skip
        _write(tmp_path / rel, f"# {rel}\n")
    expected = ["a.py", "b.py", "pkg/__init__.py"]
    assert [d.name for d in data.python_stdlib_documents(str(tmp_path))] == expected
    assert data.load_corpus("python_stdlib", str(tmp_path))[0] == data.Document("a.py", "# a.py\n")
    monkeypatch.setenv("JAXOPT_MODELS_PYTHON_STDLIB", str(tmp_path))
    assert [d.name for d in data.load_corpus("python_stdlib")] == expected
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no python here\n")
    with pytest.raises(FileNotFoundError, match="holds no .py files"):
        data.python_stdlib_documents(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="for python_stdlib is not a directory"):
        data.python_stdlib_documents(str(tmp_path / "missing"))


def test_bible_kjv_corpus_loads():
    # No skip: CI installs bible-kjv-text; without it this fails with the install hint.
    docs = data.load_corpus("bible_kjv")
    assert [d.name for d in docs] == list(text.BIBLE_BOOKS)
    first = docs[0].text.splitlines()
    assert first[0] == "1:1 In the beginning God created the heaven and the earth."
    assert docs[-1].text.splitlines()[-1] == (
        "22:21 The grace of our Lord Jesus Christ be with you all. Amen."
    )
    assert sum(len(d.text.splitlines()) for d in docs) == 31102  # verses of the KJV
    assert docs[docs.index(next(d for d in docs if d.name == "Psalms"))].text.count("\n") == 2461


def test_bible_kjv_data_dir_override(tmp_path, monkeypatch):
    source = next(d for d in text.BIBLE_KJV_DIRS if os.path.isdir(d))
    for name in text.BIBLE_KJV_FILES:  # the text and its concordance
        shutil.copy(os.path.join(source, name), tmp_path / name)
    docs = data.bible_kjv_documents(str(tmp_path))
    assert len(docs) == 66 and docs == data.load_corpus("bible_kjv")
    monkeypatch.setenv("JAXOPT_MODELS_BIBLE_KJV", str(tmp_path))
    assert data.load_corpus("bible_kjv") == docs


@pytest.mark.parametrize("how", ["data_dir", "env"])
def test_bible_kjv_missing_names_the_package(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("JAXOPT_MODELS_BIBLE_KJV", str(tmp_path))
        monkeypatch.setattr(text, "BIBLE_KJV_DIRS", (str(tmp_path / "nowhere"),))
        kwargs = {}
    else:
        kwargs = {"data_dir": str(tmp_path)}
    with pytest.raises(FileNotFoundError) as err:
        data.load_corpus("bible_kjv", **kwargs)
    msg = str(err.value)
    assert "bible_kjv corpus not found" in msg and str(tmp_path) in msg
    assert "apt-get install -y bible-kjv-text" in msg and "JAXOPT_MODELS_BIBLE_KJV" in msg


def test_bible_reader_missing_names_the_package(tmp_path, monkeypatch):
    for name in text.BIBLE_KJV_FILES:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv("JAXOPT_MODELS_BIBLE_PROGRAM", str(tmp_path / "no-such-program"))
    monkeypatch.setattr(text.shutil, "which", lambda _: None)
    monkeypatch.setattr(text, "BIBLE_PROGRAM_PATHS", (str(tmp_path / "not-here"),))
    with pytest.raises(FileNotFoundError, match="apt-get install -y bible-kjv bible-kjv-text"):
        data.bible_kjv_documents(str(tmp_path))


def test_parse_bible_verses():
    dump = "Ge1:1 In the beginning.\nGe1:2 And.\n\n1Sm2:3 Talk no more.\nRev22:21 Amen.\n"
    docs = data.parse_bible_verses(dump)
    assert docs == (
        data.Document("Ge", "1:1 In the beginning.\n1:2 And.\n"),
        data.Document("1Sm", "2:3 Talk no more.\n"),
        data.Document("Rev", "22:21 Amen.\n"),
    )
    with pytest.raises(ValueError, match="not a verse line"):
        data.parse_bible_verses("Hit '?' for help.\n")


def test_python_docs_corpus_loads():
    docs = data.load_corpus("python_docs")
    names = [d.name for d in docs]
    assert len(docs) > 400 and names == sorted(names)
    assert "library/os.rst.txt" in names and "tutorial/index.rst.txt" in names
    os_doc = docs[names.index("library/os.rst.txt")]
    assert ":mod:`os`" in os_doc.text and "Miscellaneous operating system interfaces" in os_doc.text


def test_python_docs_data_dir_rst_and_html(tmp_path, monkeypatch):
    _write(tmp_path / "rst" / "_sources" / "b.rst.txt", "B\n=\n")
    _write(tmp_path / "rst" / "_sources" / "a" / "x.rst.txt", "X\n")
    _write(tmp_path / "rst" / "_static" / "ignored.txt", "ignored\n")
    assert [d.name for d in data.python_docs_documents(str(tmp_path / "rst"))] == [
        "a/x.rst.txt",
        "b.rst.txt",
    ]
    page = (
        "<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav>"
        "<h1>Title</h1><p>Some <b>bold</b> &amp; text.</p><script>var x;</script></body></html>"
    )
    _write(tmp_path / "html" / "page.html", page)
    docs = data.python_docs_documents(str(tmp_path / "html"))
    assert docs == (data.Document("page.html", "Title\n\nSome bold & text.\n"),)
    monkeypatch.setenv("JAXOPT_MODELS_PYTHON_DOCS", str(tmp_path / "html"))
    assert data.load_corpus("python_docs") == docs


def test_html_to_text():
    assert data.html_to_text("<p>a &amp; <b>b</b></p>") == "a & b\n"
    assert data.html_to_text("<div>x</div>\n\n\n\n<div>y</div>") == "x\n\ny\n"
    assert data.html_to_text("<script>only code</script>") == ""


def test_python_docs_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y python3.11-doc"):
        data.load_corpus("python_docs", data_dir=str(tmp_path))


def test_unknown_corpus_lists_allowed_values():
    with pytest.raises(ValueError, match=r"corpus name='wiki' is not known; allowed values: "):
        data.load_corpus("wiki")
    with pytest.raises(ValueError, match="python_stdlib"):
        data.get_text_dataset("wiki")
    assert data.corpus_names() == ("bible_kjv", "python_docs", "python_stdlib")


# ----------------------------------------------------------------------------- splits


def _docs(n: int) -> list[data.Document]:
    return [data.Document(f"doc{i:03d}", f"text {i}\n") for i in range(n)]


@pytest.mark.parametrize("n, val, test", [(100, 0.1, 0.2), (66, 0.05, 0.05), (3, 0.01, 0.01)])
def test_split_is_deterministic_and_disjoint(n, val, test):
    docs = _docs(n)
    train, va, te = data.split_documents(docs, val_fraction=val, test_fraction=test, seed=0)
    assert (len(va), len(te)) == (max(1, round(n * val)), max(1, round(n * test)))
    names = [{d.name for d in s} for s in (train, va, te)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert names[0] | names[1] | names[2] == {d.name for d in docs}
    # Same seed: same split, whatever order the documents come in.
    again = data.split_documents(docs[::-1], val_fraction=val, test_fraction=test, seed=0)
    assert again == (train, va, te)
    if n >= 50:
        other = data.split_documents(docs, val_fraction=val, test_fraction=test, seed=1)
        assert other[1] != va


def test_split_membership_depends_on_the_name_only():
    docs = _docs(100)
    _, va, _ = data.split_documents(docs, val_fraction=0.1, test_fraction=0.0, seed=3)
    ranks = sorted(data.document_rank(d.name, 3) for d in docs)
    assert {data.document_rank(d.name, 3) for d in va} == set(ranks[:10])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 1.0}, r"val_fraction=1.0 must be a number in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"test_fraction=-0.1 must be"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
    ],
)
def test_split_fraction_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.split_documents(_docs(10), **kwargs)


def test_split_too_few_or_duplicate_documents():
    with pytest.raises(ValueError, match="2 documents cannot fill a train split"):
        data.split_documents(_docs(2), val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(ValueError, match="unique names"):
        data.split_documents(_docs(3) + _docs(1))


# ----------------------------------------------------------------------------- datasets


def test_encode_documents():
    docs = [data.Document("a", "hé"), data.Document("b", "xy")]
    tokens, num_bytes = data.encode_documents(docs, data.ByteTokenizer())
    np.testing.assert_array_equal(tokens, [0, 104, 195, 169, 0, 120, 121])
    assert tokens.dtype == np.int32 and num_bytes == 6


@pytest.fixture(scope="module")
def small_byte_dataset() -> data.TextDataset:
    return data.get_text_dataset("python_stdlib", tokenizer="byte", max_bytes=200_000, seed=0)


def test_text_dataset_streams(small_byte_dataset):
    ds = small_byte_dataset
    tok = ds.tokenizer
    assert ds.name == "python_stdlib" and ds.vocab_size == 256
    train_docs, val_docs, test_docs = data.split_documents(
        data.load_corpus("python_stdlib"), val_fraction=0.05, test_fraction=0.05, seed=0
    )
    for split, docs, budget in (("val", val_docs, 10_000), ("test", test_docs, 10_000)):
        stream = ds.split(split)
        assert stream.dtype == np.int32 and stream[0] == tok.separator_id
        assert (stream == tok.separator_id).sum() == ds.num_documents[split]
        assert ds.num_bytes[split] == len(stream) - 1  # one byte per byte token
        assert ds.num_bytes[split] - (ds.num_documents[split] - 1) <= budget  # max_bytes share
        kept = docs[: ds.num_documents[split]]  # leading documents of the split, last one cut
        decoded = tok.decode(stream[1:]).split("\x00")
        assert [t for t in decoded[:-1]] == [d.text for d in kept[:-1]]
        assert kept[-1].text.startswith(decoded[-1])
    assert 150_000 < ds.num_bytes["train"] <= 180_000 + ds.num_documents["train"]
    train_names = {d.name for d in train_docs}
    assert not train_names & {d.name for d in val_docs}


def test_text_dataset_is_deterministic(small_byte_dataset):
    again = data.get_text_dataset("python_stdlib", max_bytes=200_000, seed=0)
    for split in data.SPLITS:
        np.testing.assert_array_equal(again.split(split), small_byte_dataset.split(split))
    other = data.get_text_dataset("python_stdlib", max_bytes=200_000, seed=1)
    assert not np.array_equal(other.val, small_byte_dataset.val)


def test_bpe_dataset_counts_the_same_bytes(small_byte_dataset, tmp_path):
    ds = data.get_text_dataset("python_stdlib", tokenizer="bpe", vocab_size=320, max_bytes=200_000)
    assert isinstance(ds.tokenizer, data.BPETokenizer) and ds.vocab_size <= 320
    assert ds.num_bytes == small_byte_dataset.num_bytes  # bits per byte divides by the same
    assert ds.num_documents == small_byte_dataset.num_documents
    assert len(ds.val) < len(small_byte_dataset.val)
    sep = "\x00"
    want = small_byte_dataset.tokenizer.decode(small_byte_dataset.val)
    assert ds.tokenizer.decode(ds.val).replace("<|sep|>", sep) == want
    # A saved tokenizer gives the same streams when passed back in.
    loaded = data.load_tokenizer(ds.tokenizer.save(tmp_path / "tok"))
    again = data.get_text_dataset("python_stdlib", tokenizer=loaded, max_bytes=200_000)
    np.testing.assert_array_equal(again.train, ds.train)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tokenizer": "words"}, ValueError, "tokenizer='words' is not known"),
        ({"tokenizer": 3}, TypeError, "tokenizer must be 'byte', 'bpe' or a tokenizer"),
        ({"max_bytes": 0}, ValueError, "max_bytes=0 must be a positive int"),
        ({"val_fraction": 0.7, "test_fraction": 0.3}, ValueError, "must be < 1"),
    ],
)
def test_text_dataset_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.get_text_dataset("python_stdlib", **kwargs)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("n, batch_size, context", [(100, 4, 8), (9, 3, 8), (1000, 16, 1)])
def test_train_windows_are_in_range_and_shifted(n, batch_size, context):
    tokens = np.arange(n, dtype=np.int32)  # a token's value is its position
    starts = []
    for step in range(20):
        b = data.lm_train_batch(tokens, batch_size, context, seed=0, step=step)
        assert b["tokens"].shape == b["targets"].shape == (batch_size, context)
        assert b["tokens"].dtype == b["targets"].dtype == np.int32
        s = b["tokens"][:, 0]
        np.testing.assert_array_equal(b["tokens"], s[:, None] + np.arange(context))
        np.testing.assert_array_equal(b["targets"], b["tokens"] + 1)
        starts.append(s)
    starts = np.concatenate(starts)
    assert starts.min() >= 0 and starts.max() <= n - context - 1
    if n - context <= 10:
        assert set(starts) == set(range(n - context))  # every position can be drawn


def test_train_batches_depend_on_seed_and_step_only():
    tokens = np.arange(10_000, dtype=np.int32) % 97
    a = data.lm_train_batch(tokens, 4, 16, seed=5, step=7)
    b = data.lm_train_batch(tokens, 4, 16, seed=5, step=7)
    c = data.lm_train_batch(tokens, 4, 16, seed=5, step=8)
    d = data.lm_train_batch(tokens, 4, 16, seed=6, step=7)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert not np.array_equal(a["tokens"], c["tokens"])
    assert not np.array_equal(a["tokens"], d["tokens"])
    stream = list(data.lm_train_batches(tokens, 4, 16, seed=5, start_step=5, num_steps=3))
    assert len(stream) == 3
    np.testing.assert_array_equal(stream[2]["targets"], a["targets"])  # resumes at step 7
    endless = data.lm_train_batches(tokens, 4, 16, seed=5)
    assert all(next(endless)["tokens"].shape == (4, 16) for _ in range(5))


@pytest.mark.parametrize(
    "n, batch_size, context",
    [(2, 1, 1), (2, 4, 8), (17, 2, 4), (33, 2, 4), (100, 3, 7), (1000, 8, 32)],
)
def test_eval_batches_score_every_token_once(n, batch_size, context):
    tokens = np.arange(n, dtype=np.int32) + 1  # nonzero, so padding (0) is visible
    batches = list(data.lm_eval_batches(tokens, batch_size, context))
    assert len(batches) == data.lm_eval_num_batches(n, batch_size, context)
    for b in batches:
        assert b["tokens"].shape == b["targets"].shape == b["mask"].shape
        assert b["tokens"].shape == (batch_size, context) and b["mask"].dtype == bool
        assert (b["targets"][~b["mask"]] == 0).all()
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    targets = np.concatenate([b["targets"].reshape(-1) for b in batches])[mask]
    inputs = np.concatenate([b["tokens"].reshape(-1) for b in batches])[mask]
    assert mask.sum() == n - 1
    np.testing.assert_array_equal(targets, tokens[1:])  # in order, each exactly once
    np.testing.assert_array_equal(inputs, tokens[:-1])
    assert not mask[: n - 1].all() or mask[n - 1 :].sum() == 0  # padding only at the tail


def test_eval_windows_do_not_overlap():
    tokens = np.arange(1, 22, dtype=np.int32)
    (b,) = list(data.lm_eval_batches(tokens, 4, 5))
    np.testing.assert_array_equal(b["tokens"][:, 0], [1, 6, 11, 16])
    np.testing.assert_array_equal(b["mask"].sum(1), [5, 5, 5, 5])


@pytest.mark.parametrize(
    "fn, kwargs, error, match",
    [
        ("train", {"context": 0}, ValueError, r"context=0 must be a positive int \(>= 1\)"),
        ("train", {"batch_size": 0}, ValueError, r"batch_size=0 must be a positive int"),
        ("train", {"batch_size": True}, TypeError, r"batch_size=True must be a positive int"),
        ("train", {"context": 10}, ValueError, r"context=10 needs a token stream of at least 11"),
        ("eval", {"context": -1}, ValueError, r"context=-1 must be a positive int"),
        ("eval", {"batch_size": 0}, ValueError, r"batch_size=0 must be a positive int"),
        ("eval", {"tokens": np.array([3])}, ValueError, "tokens has 1 tokens; evaluation needs"),
        ("eval", {"tokens": np.zeros((2, 3), int)}, ValueError, "1-D integer array"),
    ],
)
def test_batching_errors(fn, kwargs, error, match):
    args = {"tokens": np.arange(10), "batch_size": 2, "context": 4, **kwargs}
    with pytest.raises(error, match=match):
        if fn == "train":
            data.lm_train_batches(**args, seed=0)
        else:
            data.lm_eval_batches(**args)
