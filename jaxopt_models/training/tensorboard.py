"""TensorBoard event files without TensorFlow: scalar summaries in the TFRecord framing.

An event file is a sequence of records ``len (u64 LE) | masked crc32c(len) | data |
masked crc32c(data)`` where ``data`` is a serialized ``Event`` protocol buffer. Only the
fields TensorBoard needs for scalars are written: ``wall_time`` (1, double), ``step`` (2,
int64), ``file_version`` (3, string) and ``summary`` (5) holding ``Value``s with ``tag``
(1, string) and ``simple_value`` (2, float).
"""

import numbers
import os
import socket
import struct
import time
from collections.abc import Mapping

import numpy as np

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial ``0x82F63B78``) of ``data``.

    Example:
      >>> hex(crc32c(b"123456789"))
      '0xe3069283'
    """
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """The TFRecord checksum: crc32c rotated right by 15 bits plus ``0xA282EAD8`` (mod 2**32).

    Example:
      >>> masked_crc(b"") == (0xA282EAD8 + 0) & 0xFFFFFFFF
      True
    """
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint((number << 3) | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, *, scalars=None, file_version=None) -> bytes:
    """A serialized ``Event`` with scalar summaries (see the module docstring).

    Args:
      wall_time: seconds since the epoch.
      step: the global step (an int >= 0).
      scalars: ``{tag: value}`` written as ``simple_value`` (float32).
      file_version: e.g. ``"brain.Event:2"`` for a file's first event.

    Returns:
      The protocol buffer's bytes.

    Example:
      >>> data = encode_event(0.0, 3, scalars={"loss": 0.5})
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step={step!r} must be an int >= 0")
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", v)))
            for tag, v in scalars.items()
        )
        out += _bytes_field(5, summary)
    return out


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length (u64 LE), its masked CRC, the data, the data's masked CRC.

    Example:
      >>> len(frame_record(b"abc"))
      19
    """
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc(header))
        + data
        + struct.pack("<I", masked_crc(data))
    )


def _is_real_scalar(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, numbers.Real):
        return True
    return isinstance(v, (np.ndarray, np.generic)) and v.ndim == 0 and v.dtype.kind in "iuf"


class EventWriter:
    """Appends scalar summaries to ``<directory>/events.out.tfevents.<time>.<host>``.

    Example:
      >>> writer = EventWriter("runs/digits/tensorboard")
      >>> writer.scalars(10, {"train_loss": 0.3, "val_accuracy": 0.95})
      >>> writer.close()
    """

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self.path = os.path.join(directory, name)
        self._f = open(self.path, "ab")  # noqa: SIM115  (closed by close())
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        self._f.write(frame_record(data))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes the real numbers of ``values`` as scalar summaries at ``step``.

        Python and NumPy scalars and 0-d arrays are written; other values (strings,
        lists, booleans) are left out.
        """
        clean = {k: float(v) for k, v in values.items() if _is_real_scalar(v)}
        if clean:
            self._write(encode_event(time.time(), step, scalars=clean))

    def write_record(self, record: Mapping[str, float]) -> None:
        """Writes one ``fit`` epoch record at its ``step`` (``fit``'s ``on_epoch``)."""
        values = {k: v for k, v in record.items() if k not in ("epoch", "step")}
        self.scalars(int(record["step"]), values)

    def close(self) -> None:
        """Closes the file."""
        self._f.close()


def read_events(path: str) -> list[bytes]:
    """The records of an event file, each checked against both CRCs.

    Args:
      path: an event file (e.g. ``EventWriter(...).path``).

    Returns:
      The serialized ``Event`` of every record, in order.

    Raises:
      ValueError: a record whose length or data does not match its CRC, or a truncated one.

    Example:
      >>> records = read_events(writer.path)
    """
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"truncated event record at byte {pos} of {path}")
        header = data[pos : pos + 8]
        (n,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        if hcrc != masked_crc(header):
            raise ValueError(f"corrupt event record at byte {pos} of {path}")
        if len(data) - pos - 16 < n:
            raise ValueError(f"truncated event record at byte {pos} of {path}")
        body = data[pos + 12 : pos + 12 + n]
        (bcrc,) = struct.unpack("<I", data[pos + 12 + n : pos + 16 + n])
        if bcrc != masked_crc(body):
            raise ValueError(f"corrupt event record at byte {pos} of {path}")
        out.append(body)
        pos += 16 + n
    return out
