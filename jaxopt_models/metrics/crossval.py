"""k-fold cross-validation of an experiment config."""

import os
from typing import Any

import numpy as np


def kfold_indices(num_examples: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold splits: ``k`` pairs ``(train_idx, val_idx)`` covering every example once.

    Args:
      num_examples: dataset size.
      k: number of folds, ``2 <= k <= num_examples``.
      seed: shuffling seed.

    Returns:
      A list of ``k`` index-array pairs; the validation folds partition ``range(num_examples)``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= num_examples:
        raise ValueError(f"k={k!r} must be an int with 2 <= k <= {num_examples} (num_examples)")
    perm = np.random.default_rng(seed).permutation(num_examples)
    folds = np.array_split(perm, k)
    return [
        (np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), np.sort(folds[i]))
        for i in range(k)
    ]


def kfold_cross_validate(config, k: int = 5, workdir: str | None = None) -> dict[str, Any]:
    """Trains ``config`` on k-1 folds of its training set and evaluates on the held-out fold.

    The test split is not used. Each fold runs ``training.train_and_evaluate`` with the
    same config (same seed) on a different train/validation partition.

    Args:
      config: an experiment ``ConfigDict`` (see ``training.default_config``).
      k: number of folds (>= 2).
      workdir: where per-fold outputs go (``<workdir>/fold_<i>``); ``None`` writes nothing.

    Returns:
      ``{"folds": [per-fold metrics], "mean": {...}, "std": {...}, "k": k}`` over the keys
      ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``.

    Example:
      >>> cv = kfold_cross_validate(get_config(), k=5)
      >>> cv["mean"]["accuracy"], cv["std"]["accuracy"]
    """
    from jaxopt_models.data import get_dataset  # noqa: PLC0415  (floor above metrics)
    from jaxopt_models.training import dataset_kwargs, train_and_evaluate  # noqa: PLC0415

    ds = get_dataset(config.dataset.name, **dataset_kwargs(config))
    folds = []
    for i, (tr, va) in enumerate(kfold_indices(len(ds.x_train), k, seed=int(config.seed))):
        fold_ds = ds._replace(
            x_train=ds.x_train[tr],
            y_train=ds.y_train[tr],
            x_test=ds.x_train[va],
            y_test=ds.y_train[va],
        )
        fold_dir = None if workdir is None else os.path.join(workdir, f"fold_{i}")
        _, results = train_and_evaluate(config, fold_dir, dataset=fold_ds)
        folds.append(
            {
                "accuracy": results["test_accuracy"],
                "macro_precision": results["test_macro_precision"],
                "macro_recall": results["test_macro_recall"],
                "macro_f1": results["test_macro_f1"],
            }
        )
    keys = folds[0].keys()
    mean = {key: float(np.mean([f[key] for f in folds])) for key in keys}
    std = {key: float(np.std([f[key] for f in folds], ddof=1)) for key in keys}
    return {"k": k, "folds": folds, "mean": mean, "std": std}
