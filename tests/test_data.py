import gzip
import os

import numpy as np
import pytest

from jaxopt_models import data


def _write_fake_mnist(tmp_path, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        data.write_idx(
            tmp_path / f"{split}-images-idx3-ubyte{ext}",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        data.write_idx(
            tmp_path / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n, dtype=np.uint8)
        )
    return tmp_path


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    data.write_idx(p, a)
    b = data.read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_reads_the_mnist_header_layout(tmp_path):
    # Hand-built MNIST label file: magic 0x00000801, count 3, labels 7 2 1.
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    (tmp_path / "labels").write_bytes(raw)
    (tmp_path / "labels.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels"), [7, 2, 1])
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels.gz"), [7, 2, 1])


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path="):
        data.read_idx(tmp_path / "nope")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="payload"):
        data.read_idx(tmp_path / "short")


def test_load_idx_dir_and_fashion_mnist_data_dir(tmp_path):
    _write_fake_mnist(tmp_path)
    ds = data.fashion_mnist(str(tmp_path))
    assert ds.x_train.shape == (50, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert abs(float(ds.x_train.mean())) < 1e-5
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    _write_fake_mnist(raw_dir, gz=False)
    assert data.mnist(str(raw_dir)).x_train.shape == (50, 28, 28, 1)


def test_missing_data_dir_says_how_to_get_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.fashion_mnist(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="lacks IDX files"):
        data.fashion_mnist(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="data_dir"):
        data.mnist(None)


def test_digits_and_mnist1d_sources():
    ds = data.digits()
    assert ds.x_train.shape[1:] == (8, 8, 1) and len(ds.x_train) + len(ds.x_test) == 1797
    assert set(np.unique(ds.y_test)) == set(range(10))
    m = data.mnist1d(num_samples=200)
    assert m.x_train.shape == (160, 40, 1) and m.x_test.shape == (40, 40, 1)


def test_get_dataset_errors_and_subsets():
    with pytest.raises(ValueError, match="allowed values.*fashion_mnist"):
        data.get_dataset("imagenet")
    ds = data.get_dataset("digits", num_train=100, num_test=30)
    assert len(ds.x_train) == 100 and len(ds.x_test) == 30
    with pytest.raises(ValueError, match="num_train"):
        data.get_dataset("digits", num_train=-1)


def test_train_batches_are_deterministic_full_and_cover_each_epoch():
    x = np.arange(103)[:, None].astype(np.float32)
    y = np.arange(103)
    a = list(data.train_batches(x, y, 10, seed=3, epoch=1))
    b = list(data.train_batches(x, y, 10, seed=3, epoch=1))
    c = list(data.train_batches(x, y, 10, seed=3, epoch=2))
    assert len(a) == 10 and all(len(batch["label"]) == 10 for batch in a)  # partial dropped
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u["label"], v["label"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])
    seen = np.concatenate([batch["label"] for batch in a])
    assert len(np.unique(seen)) == 100
    np.testing.assert_array_equal(seen, x[seen, 0])  # images stay with their labels
    resumed = list(data.train_batches(x, y, 10, seed=3, epoch=1, start_step=4))
    np.testing.assert_array_equal(resumed[0]["label"], a[4]["label"])


def test_eval_batches_count_each_example_once():
    x = np.arange(23)[:, None].astype(np.float32)
    y = np.arange(23)
    batches = list(data.eval_batches(x, y, 10))
    assert [b["image"].shape[0] for b in batches] == [10, 10, 10]
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("bad", [0, -4])
def test_non_positive_batch_size_is_rejected(bad):
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.train_batches(x, np.zeros(10), bad, seed=0, epoch=0))
    with pytest.raises(ValueError, match="batch_size"):
        list(data.eval_batches(x, np.zeros(10), bad))
    with pytest.raises(TypeError, match="batch_size"):
        list(data.eval_batches(x, np.zeros(10), 2.5))
