"""Size report: bytes per layer after each compression stage, as stored on disk.

Every number is the size of a real record of the compressed file format
(:mod:`jaxopt_models.compression.file_format`), not an estimate: ``float32`` is the raw
tensor, ``pruned`` the float record with relative indices (dense if that is smaller),
``shared`` / ``quantized`` the record with bit-packed codes, ``huffman`` the final
record with Huffman-coded streams. ``file`` adds names, header and checksum.
"""

from typing import Any

import numpy as np

from jaxopt_models.compression import file_format as _ff
from jaxopt_models.typing import PyTree

STAGES = ("float32", "pruned", "shared", "quantized", "huffman")


def size_report(
    params: PyTree,
    *,
    masks: PyTree | None = None,
    shared: PyTree | None = None,
    quantized: PyTree | None = None,
    huffman: bool = True,
) -> dict[str, Any]:
    """Bytes per layer before and after each compression stage.

    Stages are cumulative and appear only when used: ``float32`` (always), ``pruned``
    (when ``masks`` is given), ``shared`` (when ``shared`` holds a SharedTensor),
    ``quantized`` (when ``quantized`` holds a QTensor), ``huffman`` (when ``huffman``).
    Arguments as in ``save_compressed`` (records are checked the same way).

    Args:
      params: the params the compressed model predicts with.
      masks: optional boolean masks like ``params``.
      shared: optional tree from ``cluster_weights``.
      quantized: optional tree of QTensors (``None`` for float leaves).
      huffman: include the Huffman stage (what ``save_compressed`` writes by default).

    Returns:
      A dict with ``"stages"`` (column names), ``"layers"`` (``{leaf name: {"params",
      "nonzeros", <stage>: bytes}}``), ``"total"`` (the same summed, plus ``"file"``,
      the exact size of the saved file) and ``"ratio"`` (``{stage: float32 bytes /
      stage bytes}``, with ``"file"``). Print it with :func:`format_size_report`.

    Example:
      >>> report = size_report(shared_params(shared), masks=masks, shared=shared)
      >>> print(format_size_report(report))
    """
    leaves = _ff._leaf_records(params, masks, shared, quantized, check=True)
    stages = ["float32"]
    if masks is not None:
        stages.append("pruned")
    if any(leaf.kind == _ff.SHARED for leaf in leaves):
        stages.append("shared")
    if any(leaf.kind == _ff.QUANTIZED for leaf in leaves):
        stages.append("quantized")
    if huffman:
        stages.append("huffman")
    layers: dict[str, dict[str, int]] = {}
    for leaf in leaves:
        row = {
            "params": int(leaf.value.size),
            "nonzeros": int(np.count_nonzero(leaf.value)),
            "float32": 4 * int(leaf.value.size),
        }
        prev = row["float32"]
        for stage in stages[1:]:
            if stage == "pruned":
                size = len(_ff._float_record(leaf.value, huffman=False))
            elif stage == "huffman":
                size = len(leaf.build(True, None))
            elif (stage == "shared" and leaf.kind == _ff.SHARED) or (
                stage == "quantized" and leaf.kind == _ff.QUANTIZED
            ):
                size = len(leaf.build(False, None))
            else:
                size = prev
            row[stage] = prev = size
        layers[leaf.name] = row
    total = {
        key: sum(row[key] for row in layers.values()) for key in ["params", "nonzeros", *stages]
    }
    total["file"] = len(
        _ff.encode_compressed(
            params, masks=masks, shared=shared, quantized=quantized, huffman=huffman, check=False
        )
    )
    ratio = {key: total["float32"] / max(total[key], 1) for key in [*stages, "file"]}
    return {"stages": stages, "layers": layers, "total": total, "ratio": ratio}


def format_size_report(report: dict[str, Any]) -> str:
    """A printable table of a :func:`size_report`: one row per layer, bytes per stage.

    Example:
      >>> print(format_size_report(size_report(params, masks=masks)))
    """
    stages = report["stages"]
    cols = ["params", "nonzeros", *stages]
    names = list(report["layers"])
    width = max([len("layer"), len("total (file)")] + [len(n) for n in names])
    fmt = lambda v: f"{v:>12,}" if isinstance(v, int) else f"{v:>12}"
    lines = [f"{'layer':<{width}}" + "".join(f"{c:>12}" for c in cols)]
    lines.append("-" * len(lines[0]))
    for name in names:
        row = report["layers"][name]
        lines.append(f"{name:<{width}}" + "".join(fmt(row[c]) for c in cols))
    lines.append("-" * len(lines[0]))
    total = report["total"]
    lines.append(f"{'total':<{width}}" + "".join(fmt(total[c]) for c in cols))
    ratio = report["ratio"]
    lines.append(f"{'ratio':<{width}}" + " " * 24 + "".join(f"{ratio[c]:>11.1f}x" for c in stages))
    lines.append(
        f"file: {total['file']:,} bytes, {ratio['file']:.1f}x smaller than float32 "
        f"({total['float32']:,} bytes)"
    )
    return "\n".join(lines)
