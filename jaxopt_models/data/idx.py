"""Reader for the IDX file format of MNIST and Fashion-MNIST (raw or gzipped)."""

import gzip
import os
import struct

import numpy as np

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels), gzipped or raw.

    Args:
      path: file path; a ``.gz`` suffix or gzip magic bytes select decompression.

    Returns:
      A NumPy array with the file's shape, e.g. ``(60000, 28, 28)`` ``uint8`` images or
      ``(60000,)`` ``uint8`` labels, in native byte order.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the header is malformed or the payload size does not match it.

    Example:
      >>> images = read_idx("train-images-idx3-ubyte.gz")
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"IDX file path={path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"IDX file {path!r} is a corrupt gzip stream: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"IDX file {path!r} is too short ({len(raw)} bytes) for a header")
    zero, type_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"IDX file {path!r} has a bad magic number (type 0x{type_code:02x}, ndim {ndim}); "
            f"allowed type codes: {sorted(hex(c) for c in _IDX_DTYPES)}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path!r}: header shape {shape} needs {expected} payload bytes, "
            f"found {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``).

    Args:
      path: destination path.
      array: array of dtype uint8, int8, int16, int32, float32 or float64, ndim >= 1.
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    dt = array.dtype.newbyteorder("=")
    if dt not in codes or array.ndim == 0:
        raise ValueError(
            f"array dtype {array.dtype} / ndim {array.ndim} cannot be written as IDX; allowed "
            f"dtypes: uint8, int8, int16, int32, float32, float64 with ndim >= 1"
        )
    code = codes[dt]
    payload = struct.pack(">HBB", 0, code, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(_IDX_DTYPES[code], copy=False).tobytes()
    path = os.fspath(path)
    if path.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)
