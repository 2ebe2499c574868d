"""Atomic writes of results and logs (nothing is half-written)."""

import json
import os
from typing import Any

import numpy as np

from jaxopt_models.fileio import atomic_write_bytes

__all__ = ["append_jsonl", "atomic_write_bytes", "atomic_write_json"]


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        a = np.asarray(obj)
        return a.item() if a.ndim == 0 else a.tolist()
    if hasattr(obj, "to_dict"):
        return _to_jsonable(obj.to_dict())
    return obj


def atomic_write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically (NumPy/JAX values converted)."""
    text = json.dumps(_to_jsonable(obj), indent=2, sort_keys=True, default=str)
    atomic_write_bytes(path, (text + "\n").encode())


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Appends one JSON line to ``path`` (one ``write`` call, flushed and synced)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(_to_jsonable(record), sort_keys=True, default=str) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
