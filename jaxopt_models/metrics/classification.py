"""Classification metrics: accuracy, confusion matrix, precision / recall / F1."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxopt_models.checks import check_one_of

AVERAGES = ("macro", "micro", "weighted", None)


def _check(y_true, y_pred, num_classes: int | None):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true shape {y_true.shape} and y_pred shape {y_pred.shape} must be equal 1-D shapes"
        )
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    if num_classes <= 0:
        raise ValueError(f"num_classes={num_classes!r} must be positive")
    for arg, v in (("y_true", y_true), ("y_pred", y_pred)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{arg} has labels outside [0, {num_classes})")
    return y_true.astype(np.int64), y_pred.astype(np.int64), num_classes


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of examples whose arg-max logit equals the label (jit-able).

    Args:
      logits: ``(N, C)`` scores.
      labels: ``(N,)`` integer labels.
      mask: optional ``(N,)`` boolean weights; masked-out rows do not count.

    Returns:
      A scalar ``float32``.

    Example:
      >>> accuracy(jnp.array([[0., 1.], [1., 0.]]), jnp.array([1, 1]))  # 0.5
    """
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return correct.mean()
    m = mask.astype(jnp.float32)
    return (correct * m).sum() / jnp.maximum(m.sum(), 1.0)


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of examples with true class ``i`` predicted as ``j``.

    Args:
      y_true: ``(N,)`` integer labels.
      y_pred: ``(N,)`` integer predictions.
      num_classes: number of classes; inferred from the data when ``None``.

    Returns:
      ``(num_classes, num_classes)`` ``int64`` counts (rows: truth, columns: prediction).
    """
    y_true, y_pred, k = _check(y_true, y_pred, num_classes)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def precision_recall_f1(
    y_true, y_pred, num_classes: int | None = None, average: str | None = "macro"
) -> dict[str, Any]:
    """Precision, recall and F1, per class or averaged (as scikit-learn, zero_division=0).

    Args:
      y_true: ``(N,)`` integer labels.
      y_pred: ``(N,)`` integer predictions.
      num_classes: number of classes; inferred when ``None``.
      average: ``"macro"`` (unweighted mean over classes), ``"micro"`` (global counts),
        ``"weighted"`` (mean weighted by support) or ``None`` (per-class arrays).

    Returns:
      ``{"precision", "recall", "f1", "support"}``: floats for an average, arrays of shape
      ``(num_classes,)`` for ``average=None``.

    Example:
      >>> precision_recall_f1([0, 1, 1], [0, 1, 0])["f1"]
    """
    check_one_of("average", average, AVERAGES)
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    if average == "micro":
        total = cm.sum()
        p = r = f = float(tp.sum() / total) if total else 0.0
        return {"precision": p, "recall": r, "f1": f, "support": int(total)}
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    if average is None:
        return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(int)}
    if average == "weighted":
        w = support / max(support.sum(), 1.0)
        agg = lambda v: float((v * w).sum())
    else:
        agg = lambda v: float(v.mean())
    return {
        "precision": agg(precision),
        "recall": agg(recall),
        "f1": agg(f1),
        "support": int(support.sum()),
    }


def classification_report(y_true, y_pred, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy plus macro precision / recall / F1 as plain floats (for results files)."""
    y_true_a, y_pred_a, k = _check(y_true, y_pred, num_classes)
    macro = precision_recall_f1(y_true_a, y_pred_a, k, "macro")
    return {
        "accuracy": float((y_true_a == y_pred_a).mean()) if y_true_a.size else 0.0,
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
    }
