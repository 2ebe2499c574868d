"""Reporting for the compression pipeline: the per-stage table, the Pareto front, PNG plots.

Example:
  >>> final, results = compress_and_evaluate(config, "runs/dc")
  >>> print(format_stage_table(results["stages"]))
  >>> write_plots(results, "runs/dc")   # accuracy_vs_{sparsity,bits,bytes}.png
"""

import io
import os
from collections.abc import Sequence
from typing import Any

from jaxopt_models._optional import require
from jaxopt_models.training.io import atomic_write_bytes

PLOTS = ("accuracy_vs_sparsity.png", "accuracy_vs_bits.png", "accuracy_vs_bytes.png")


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A markdown table: first column left-aligned, the others right-aligned.

    Example:
      >>> print(markdown_table(["stage", "bytes"], [["dense", "1,066,567"]]))
    """
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        out = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), sep, *(fmt(row) for row in lines)]) + "\n"


def format_stage_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of the pipeline's stages.

    Args:
      rows: dicts with ``stage``, ``accuracy``, ``macro_precision``, ``macro_recall``,
        ``macro_f1`` (fractions), ``params``, ``nonzeros``, ``bytes``, ``ratio`` and
        optionally ``latency_ms``.

    Returns:
      The table as text (header, separator, one line per stage).

    Example:
      >>> print(format_stage_table([{"stage": "dense", "accuracy": 0.9, ...}]))
    """
    header = [
        "stage",
        "accuracy %",
        "precision",
        "recall",
        "F1",
        "params",
        "nonzeros",
        "bytes",
        "ratio",
        "latency ms",
    ]
    lines = []
    for r in rows:
        lat = r.get("latency_ms")
        lines.append(
            [
                str(r["stage"]),
                f"{100 * r['accuracy']:.2f}",
                f"{r['macro_precision']:.4f}",
                f"{r['macro_recall']:.4f}",
                f"{r['macro_f1']:.4f}",
                f"{r['params']:,}",
                f"{r['nonzeros']:,}",
                f"{r['bytes']:,}",
                f"{r['ratio']:.1f}x",
                "-" if lat is None else f"{lat:.3f}",
            ]
        )
    return markdown_table(header, lines)


def pareto_front(points: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the points no other point beats on both size and accuracy.

    A point is on the front when every point at most as large (``bytes``) is less
    accurate (``accuracy``); ties in size keep the most accurate point only.

    Args:
      points: dicts with ``bytes`` and ``accuracy``.

    Returns:
      Indices into ``points``, sorted by increasing ``bytes`` (and accuracy).

    Example:
      >>> pareto_front([{"bytes": 10, "accuracy": 0.8}, {"bytes": 20, "accuracy": 0.7},
      ...               {"bytes": 30, "accuracy": 0.9}])
      [0, 2]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i]["bytes"], -points[i]["accuracy"]))
    front, best = [], float("-inf")
    for i in order:
        if points[i]["accuracy"] > best:
            front.append(i)
            best = points[i]["accuracy"]
    return front


def _pyplot():
    """matplotlib's pyplot on the Agg backend (ImportError naming the extra when missing)."""
    matplotlib = require("matplotlib", "experiments", "plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: str) -> str:
    """Draws a training run's loss and accuracy per epoch (train and validation) as a PNG.

    Args:
      history: ``fit``'s per-epoch records (``train_loss``, ``train_accuracy`` and, where
        evaluated, ``val_loss`` / ``val_accuracy``).
      path: where to write the PNG (atomically).

    Returns:
      ``path``.

    Example:
      >>> plot_curves(results["history"], "runs/digits/curves.png")
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        for split, style in (("train", "o-"), ("val", "s--")):
            points = [(r["epoch"], r[f"{split}_{key}"]) for r in history if f"{split}_{key}" in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label="validation" if split == "val" else split, ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save_png(fig, path)
    plt.close(fig)
    return path


def _save_png(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _label_axes(ax, xlabel: str, title: str) -> None:
    """The styling every accuracy plot shares: labels, light grid, small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _write_and_close(fig, path: str, paths: list[str]) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415  (loaded by write_plots already)

    paths.append(path)
    _save_png(fig, path)
    plt.close(fig)


def write_plots(results: dict[str, Any], directory: str) -> list[str]:
    """Writes the three PNG plots of a ``compress_and_evaluate`` result (Agg backend).

    - ``accuracy_vs_sparsity.png``: one-shot magnitude pruning of the dense model (no
      retraining), the gradual-pruning trajectory (test accuracy after each epoch) and
      the pruned stage.
    - ``accuracy_vs_bits.png``: k-means weight sharing and uniform symmetric
      quantization of the pruned model at each width (no fine-tuning), with the
      dense and the fine-tuned shared accuracies as lines.
    - ``accuracy_vs_bytes.png``: every stage and sweep point by file size (log scale)
      with the Pareto front.

    Args:
      results: the results dict (``stages``, ``curves``, ``points``).
      directory: output directory.

    Returns:
      The paths written.

    Example:
      >>> write_plots(results, "runs/dc")
    """
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    stages = {r["stage"]: r for r in results["stages"]}
    curves = results.get("curves", {})
    dense_acc = 100 * stages["dense"]["accuracy"] if "dense" in stages else None
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    one = curves.get("one_shot_pruning", [])
    if one:
        ax.plot(
            [100 * p["sparsity"] for p in one],
            [100 * p["accuracy"] for p in one],
            "o-",
            label="one-shot magnitude pruning (no retraining)",
        )
    grad = curves.get("gradual_pruning", [])
    if grad:
        ax.plot(
            [100 * p["sparsity"] for p in grad],
            [100 * p["accuracy"] for p in grad],
            "s--",
            label="gradual pruning (after each epoch)",
        )
    for name, marker in (("dense", "k*"), ("pruned", "r*")):
        if name in stages:
            r = stages[name]
            ax.plot(100 * r["kernel_sparsity"], 100 * r["accuracy"], marker, ms=12, label=name)
    _label_axes(ax, "kernel sparsity (%)", "Accuracy vs sparsity")
    _write_and_close(fig, os.path.join(directory, PLOTS[0]), paths)

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (
        ("sharing_bits", "k-means weight sharing (no fine-tuning)", "o-"),
        ("uniform_bits", "uniform symmetric quantization, per channel", "s-"),
    ):
        pts = curves.get(key, [])
        if pts:
            ax.plot(
                [p["bits"] for p in pts], [100 * p["accuracy"] for p in pts], style, label=label
            )
    if dense_acc is not None:
        ax.axhline(dense_acc, color="k", ls=":", label="dense float32")
    if "shared" in stages:
        ax.axhline(
            100 * stages["shared"]["accuracy"], color="r", ls="--", label="shared + fine-tuned"
        )
    _label_axes(ax, "bits per weight (kernels)", "Accuracy vs bits (pruned model)")
    _write_and_close(fig, os.path.join(directory, PLOTS[1]), paths)

    points = results.get("points", [])
    front = [points[i] for i in pareto_front(points)]
    kinds = []
    for p in points:
        if p["kind"] not in kinds:
            kinds.append(p["kind"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for kind in kinds:
            pts = [p for p in points if p["kind"] == kind]
            ax.plot(
                [p["bytes"] for p in pts],
                [100 * p["accuracy"] for p in pts],
                "*" if kind == "stage" else "o",
                ms=10 if kind == "stage" else 5,
                label=kind,
                alpha=0.85,
            )
        if front:
            ax.step(
                [p["bytes"] for p in front],
                [100 * p["accuracy"] for p in front],
                "k-",
                where="post",
                lw=1,
                label="Pareto front",
            )
        stage_pts = sorted((p for p in points if p["kind"] == "stage"), key=lambda p: p["bytes"])
        for i, p in enumerate(stage_pts):  # staggered labels: neighbouring stages overlap
            ax.annotate(
                p["label"],
                (p["bytes"], 100 * p["accuracy"]),
                fontsize=7,
                xytext=(3, 4 + 9 * (i % 3)),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("bytes on disk (log scale)")
        ax.grid(alpha=0.3, which="both")
        if zoom and dense_acc is not None:  # the region within 5 points of the dense model
            near = [100 * p["accuracy"] for p in points if 100 * p["accuracy"] >= dense_acc - 5]
            ax.set_ylim(min(near) - 0.5, max(near) + 1.0)
            near_bytes = [p["bytes"] for p in points if 100 * p["accuracy"] >= dense_acc - 5]
            ax.set_xlim(min(near_bytes) / 1.3, max(near_bytes) * 1.3)
            ax.set_title("zoom: within 5 points of the dense model")
        else:
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("Accuracy vs size")
            ax.legend(fontsize=8)
    _write_and_close(fig, os.path.join(directory, PLOTS[2]), paths)
    return paths
