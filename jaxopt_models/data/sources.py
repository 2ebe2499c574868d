"""Offline dataset sources: Fashion-MNIST / MNIST (IDX), scikit-learn digits, MNIST-1D.

Nothing here downloads: Fashion-MNIST comes from IDX files on disk (e.g. Debian's
``dataset-fashion-mnist`` package), digits ship with scikit-learn and MNIST-1D is generated
locally with ``mnist1d.data.make_dataset``.
"""

import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from jaxopt_models._optional import require
from jaxopt_models.checks import check_one_of
from jaxopt_models.data.idx import read_idx


class Dataset(NamedTuple):
    """An in-memory classification dataset with a fixed train/test split.

    Attributes:
      name: dataset name.
      x_train: ``float32`` inputs, shape ``(N_train, *input_shape)``.
      y_train: ``int32`` labels in ``[0, num_classes)``, shape ``(N_train,)``.
      x_test: ``float32`` inputs, shape ``(N_test, *input_shape)``.
      y_test: ``int32`` labels, shape ``(N_test,)``.
      num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x_train.shape[1:])

    def subset(self, num_train: int | None = None, num_test: int | None = None) -> "Dataset":
        """Returns the first ``num_train`` / ``num_test`` examples (``None`` keeps all)."""
        for arg, v in (("num_train", num_train), ("num_test", num_test)):
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"{arg}={v!r} must be a positive int or None")
        return self._replace(
            x_train=self.x_train[:num_train],
            y_train=self.y_train[:num_train],
            x_test=self.x_test[:num_test],
            y_test=self.y_test[:num_test],
        )


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(dtype=np.float64)
    std = x_train.std(dtype=np.float64) + 1e-8
    f = lambda x: ((x - mean) / std).astype(np.float32)
    return f(x_train), f(x_test)


FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_HINT = (
    "Install Debian's package with `apt-get install -y dataset-fashion-mnist`, or pass "
    "data_dir= (or set JAXOPT_MODELS_FASHION_MNIST) to a directory holding the four IDX files "
    f"{sorted(_IDX_NAMES.values())} (optionally .gz)."
)


def _find_idx(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        p = os.path.join(directory, candidate)
        if os.path.exists(p):
            return p
    return None


def load_idx_dir(data_dir: str, name: str = "idx", hint: str = "") -> Dataset:
    """Loads an MNIST-format directory (the four standard IDX files, raw or ``.gz``).

    Args:
      data_dir: directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-...``,
        ``t10k-images-...`` and ``t10k-labels-...``.
      name: dataset name to record.
      hint: text appended to the error when files are missing.

    Returns:
      A ``Dataset`` with standardised ``float32`` images of shape ``(N, 28, 28, 1)``.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir={data_dir!r} is not a directory. {hint}".strip())
    paths = {k: _find_idx(data_dir, stem) for k, stem in _IDX_NAMES.items()}
    missing = [_IDX_NAMES[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(f"data_dir={data_dir!r} lacks IDX files {missing}. {hint}".strip())
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise ValueError(f"{data_dir!r}: {split} has {nx} images but {ny} labels")
    x_train = arrays["x_train"].astype(np.float32)[..., None] / 255.0
    x_test = arrays["x_test"].astype(np.float32)[..., None] / 255.0
    x_train, x_test = _standardize(x_train, x_test)
    y_train = arrays["y_train"].astype(np.int32)
    y_test = arrays["y_test"].astype(np.int32)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def fashion_mnist(data_dir: str | None = None) -> Dataset:
    """Fashion-MNIST (60k train / 10k test, 28x28 grey images, 10 classes) from IDX files.

    Args:
      data_dir: directory with the IDX files. ``None`` tries ``$JAXOPT_MODELS_FASHION_MNIST``
        and then the Debian package's location.

    Returns:
      A ``Dataset`` with standardised images ``(N, 28, 28, 1)``.

    Raises:
      FileNotFoundError: no directory with the files was found; the message says how to
        get them.

    Example:
      >>> ds = fashion_mnist()
      >>> ds.x_train.shape
      (60000, 28, 28, 1)
    """
    if data_dir is not None:
        return load_idx_dir(data_dir, "fashion_mnist", FASHION_MNIST_HINT)
    candidates = [os.environ.get("JAXOPT_MODELS_FASHION_MNIST"), *FASHION_MNIST_DIRS]
    for d in candidates:
        if d and os.path.isdir(d):
            return load_idx_dir(d, "fashion_mnist", FASHION_MNIST_HINT)
    raise FileNotFoundError(
        f"Fashion-MNIST not found (looked in {[c for c in candidates if c]}). {FASHION_MNIST_HINT}"
    )


def mnist(data_dir: str | None = None) -> Dataset:
    """MNIST from IDX files a user already has (same layout as Fashion-MNIST).

    Args:
      data_dir: directory with the four MNIST IDX files; ``None`` reads
        ``$JAXOPT_MODELS_MNIST``.
    """
    data_dir = data_dir or os.environ.get("JAXOPT_MODELS_MNIST")
    hint = (
        "Pass data_dir= (or set JAXOPT_MODELS_MNIST) to a directory holding the four MNIST "
        f"IDX files {sorted(_IDX_NAMES.values())}; nothing is downloaded."
    )
    if not data_dir:
        raise FileNotFoundError(f"MNIST needs data_dir. {hint}")
    return load_idx_dir(data_dir, "mnist", hint)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


@functools.lru_cache(maxsize=4)
def _digits_cached(test_fraction: float, seed: int) -> Dataset:
    datasets = require("sklearn.datasets", "experiments", "the digits dataset")
    bunch = datasets.load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    tr, te = _stratified_split(y, test_fraction, seed)
    x_train, x_test = _standardize(x[tr], x[te])
    return Dataset("digits", x_train, y[tr], x_test, y[te], 10)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), split stratified into train/test.

    Args:
      test_fraction: fraction of each class held out for test, in (0, 1).
      seed: seed of the split.

    Returns:
      A ``Dataset`` with standardised images ``(N, 8, 8, 1)`` (about 1437 train / 360 test).

    Example:
      >>> ds = digits()
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    return _digits_cached(float(test_fraction), int(seed))


@functools.lru_cache(maxsize=4)
def _mnist1d_cached(num_samples: int, seed: int) -> Dataset:
    # make_dataset only: nothing is downloaded
    generator = require("mnist1d.data", "experiments", "the mnist1d dataset")

    args = generator.get_dataset_args()  # the package's default generation arguments
    args.num_samples = num_samples
    args.seed = seed
    data = generator.make_dataset(args)  # generated locally; never downloads
    x_train = np.asarray(data["x"], np.float32)
    x_test = np.asarray(data["x_test"], np.float32)
    x_train, x_test = _standardize(x_train, x_test)
    y_train = np.asarray(data["y"], np.int32)
    y_test = np.asarray(data["y_test"], np.int32)
    return Dataset("mnist1d", x_train[..., None], y_train, x_test[..., None], y_test, 10)


def mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D generated locally with ``mnist1d.data.make_dataset`` (default arguments).

    Args:
      num_samples: total examples; the package's 80/20 split gives 4000/1000 by default.
      seed: generator seed (the package default is 42).

    Returns:
      A ``Dataset`` with standardised signals of shape ``(N, 40, 1)``.
    """
    if not isinstance(num_samples, int) or num_samples < 10:
        raise ValueError(f"num_samples={num_samples!r} must be an int >= 10")
    return _mnist1d_cached(num_samples, int(seed))


_SOURCES: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "mnist1d": mnist1d,
}


def dataset_names() -> tuple[str, ...]:
    """Returns the registered dataset names, sorted."""
    return tuple(sorted(_SOURCES))


def get_dataset(
    name: str,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    **kwargs,
) -> Dataset:
    """Loads the dataset registered as ``name``.

    Args:
      name: one of ``dataset_names()``: ``"digits"``, ``"fashion_mnist"``, ``"mnist"``,
        ``"mnist1d"``.
      num_train: keep only the first ``num_train`` training examples (quick runs).
      num_test: keep only the first ``num_test`` test examples.
      **kwargs: passed to the source (e.g. ``data_dir=`` for the IDX datasets).

    Returns:
      A ``Dataset``.

    Example:
      >>> ds = get_dataset("digits")
    """
    check_one_of("dataset name", name, dataset_names())
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    ds = _SOURCES[name](**kwargs)
    if num_train is not None or num_test is not None:
        ds = ds.subset(num_train, num_test)
    return ds


def class_names(name: str) -> Sequence[str] | None:
    """Human-readable class names for a dataset, when known."""
    if name == "fashion_mnist":
        return (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        )
    return None
