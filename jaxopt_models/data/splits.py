"""Deterministic held-out splits: a validation split of the training set, and k folds."""

import numpy as np


def validation_split(
    num_examples: int, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)`` holding out ``fraction`` of ``num_examples``.

    The split is a seeded permutation, so a run and its resumption (or another recipe with
    the same seed) hold out the same examples. Both index arrays are sorted.

    Args:
      num_examples: size of the training split.
      fraction: held-out fraction in ``[0, 1)``; 0 gives an empty validation split.
      seed: permutation seed.

    Returns:
      ``(train_idx, val_idx)``, disjoint, covering ``range(num_examples)``.

    Raises:
      ValueError: ``fraction`` outside ``[0, 1)`` or leaving no training example.

    Example:
      >>> tr, va = validation_split(1000, 0.1)
      >>> len(tr), len(va)
      (900, 100)
    """
    ok = not isinstance(fraction, bool) and isinstance(fraction, (int, float))
    if not (ok and 0.0 <= fraction < 1.0):
        raise ValueError(f"validation fraction={fraction!r} must be a number in [0, 1)")
    n_val = int(round(num_examples * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if num_examples - n_val < 1:
        raise ValueError(
            f"validation fraction={fraction!r} of {num_examples} examples leaves none to train on"
        )
    perm = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def kfold_indices(num_examples: int, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold splits: ``k`` pairs ``(train_idx, val_idx)`` covering every example once.

    Args:
      num_examples: dataset size.
      k: number of folds, ``2 <= k <= num_examples``.
      seed: shuffling seed.

    Returns:
      A list of ``k`` index-array pairs; the validation folds partition ``range(num_examples)``.

    Example:
      >>> [len(va) for _, va in kfold_indices(10, 3)]
      [4, 3, 3]
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= num_examples:
        raise ValueError(f"k={k!r} must be an int with 2 <= k <= {num_examples} (num_examples)")
    perm = np.random.default_rng(seed).permutation(num_examples)
    folds = np.array_split(perm, k)
    return [
        (np.sort(np.concatenate([f for j, f in enumerate(folds) if j != i])), np.sort(folds[i]))
        for i in range(k)
    ]
