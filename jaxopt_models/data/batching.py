"""Deterministic shuffling and batching from a seed.

Training batches are full (the last partial batch is dropped); evaluation batches are
padded to the batch size with a ``mask`` so that every example counts exactly once.
"""

from collections.abc import Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size={batch_size!r} must be a positive int")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int (> 0)")


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full training batches per epoch (the last partial batch is dropped)."""
    _check_batch_size(batch_size)
    if num_examples < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_examples} training examples; "
            f"allowed: 1..{num_examples}"
        )
    return num_examples // batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of ``epoch``: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


def train_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_step: int = 0,
) -> Iterator[Batch]:
    """Yields the shuffled full batches of one epoch, ``{"image": x, "label": y}``.

    The order depends only on ``(seed, epoch)``, so a run can resume at any step.

    Args:
      x: inputs, shape ``(N, ...)``.
      y: labels, shape ``(N,)``.
      batch_size: examples per batch, > 0 and <= N; the last partial batch is dropped.
      seed: shuffling seed.
      epoch: epoch index (changes the permutation).
      start_step: skip the first ``start_step`` batches of the epoch (resuming).

    Yields:
      Dicts of NumPy arrays with leading dimension ``batch_size``.

    Example:
      >>> for batch in train_batches(x, y, 128, seed=0, epoch=0): ...
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    n_steps = steps_per_epoch(len(x), batch_size)
    perm = epoch_permutation(len(x), seed, epoch)
    for i in range(start_step, n_steps):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        yield {"image": x[idx], "label": y[idx]}


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Yields in-order batches padded to ``batch_size`` with a boolean ``mask``.

    Every example appears exactly once with ``mask=True``; padding rows repeat the first
    example and carry ``mask=False``, so all batches have one shape (one compilation).

    Args:
      x: inputs, shape ``(N, ...)``.
      y: labels, shape ``(N,)``.
      batch_size: examples per batch, > 0.

    Yields:
      Dicts with ``"image"``, ``"label"`` and ``"mask"`` (``bool``, shape ``(batch_size,)``).
    """
    _check_batch_size(batch_size)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    n = len(x)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        k = len(xb)
        mask = np.zeros(batch_size, bool)
        mask[:k] = True
        if k < batch_size:
            pad = batch_size - k
            xb = np.concatenate([xb, np.repeat(x[:1], pad, axis=0)])
            yb = np.concatenate([yb, np.repeat(y[:1], pad, axis=0)])
        yield {"image": xb, "label": yb, "mask": mask}
