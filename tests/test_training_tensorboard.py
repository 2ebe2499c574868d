"""Tests of the TensorBoard event writer (training/tensorboard.py).

The records are decoded here by an independent protocol-buffer wire-format reader; when the
``tensorboard`` package is installed its own reader loads the file as well.
"""

import struct

import numpy as np
import pytest

from jaxopt_models.training import EventWriter
from jaxopt_models.training.tensorboard import (
    crc32c,
    encode_event,
    frame_record,
    masked_crc,
    read_events,
)


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time (no table): the reference."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def decode_fields(data: bytes) -> list[tuple[int, int, object]]:
    """``[(field number, wire type, value)]`` of a serialized protocol buffer."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.append((number, wire, value))
    return fields


def decode_event(data: bytes) -> dict:
    """The fields of an ``Event`` that the writer uses, decoded by hand."""
    event = {"scalars": {}}
    for number, wire, value in decode_fields(data):
        if number == 1:
            assert wire == 1
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            assert wire == 0
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for vnum, _, raw in decode_fields(value):
                assert vnum == 1  # Summary.value
                parts = {n: (w, v) for n, w, v in decode_fields(raw)}
                assert parts[2][0] == 5  # simple_value: a 32-bit float
                event["scalars"][parts[1][1].decode()] = struct.unpack("<f", parts[2][1])[0]
        else:
            raise AssertionError(f"unexpected Event field {number}")
    return event


def test_crc32c_matches_the_standard_check_value_and_a_bitwise_reference():
    assert crc32c(b"123456789") == 0xE3069283
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == bitwise_crc32c(data)
        crc = bitwise_crc32c(data)
        assert masked_crc(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_a_record_is_length_crc_data_crc():
    data = encode_event(12.5, 3, scalars={"loss": 0.25})
    record = frame_record(data)
    (n,) = struct.unpack("<Q", record[:8])
    assert n == len(data) and record[12 : 12 + n] == data
    assert struct.unpack("<I", record[8:12])[0] == masked_crc(record[:8])
    assert struct.unpack("<I", record[-4:])[0] == masked_crc(data)
    assert decode_event(data) == {"wall_time": 12.5, "step": 3, "scalars": {"loss": 0.25}}


def test_writer_records_read_back_with_valid_crcs(tmp_path):
    writer = EventWriter(str(tmp_path / "tb"))
    writer.scalars(0, {"train_loss": 2.5, "name": "not a number", "flag": True})
    writer.write_record(
        {"epoch": 1, "step": 300, "train_loss": 0.5, "val_accuracy": np.float32(0.875)}
    )
    writer.scalars(2**40, {"big_step": np.float64(1e-3), "n": np.int64(7), "a0": np.array(2.0)})
    writer.scalars(5, {"skipped": "all"})  # nothing numeric: no record
    writer.close()
    events = [decode_event(r) for r in read_events(writer.path)]
    assert events[0]["file_version"] == "brain.Event:2" and events[0]["step"] == 0
    assert [e["step"] for e in events] == [0, 0, 300, 2**40]
    assert events[1]["scalars"] == {"train_loss": 2.5}
    assert events[2]["scalars"] == {"train_loss": 0.5, "val_accuracy": 0.875}
    assert events[3]["scalars"] == pytest.approx({"big_step": 1e-3, "n": 7.0, "a0": 2.0})
    assert all(abs(e["wall_time"] - events[0]["wall_time"]) < 600 for e in events)


def test_corrupt_or_truncated_files_are_value_errors(tmp_path):
    writer = EventWriter(str(tmp_path))
    writer.scalars(1, {"loss": 1.0})
    writer.close()
    with open(writer.path, "rb") as f:
        good = f.read()
    for name, data in {
        "flipped": good[:-6] + bytes([good[-6] ^ 1]) + good[-5:],
        "truncated": good[:-3],
        "cut_header": good + good[:5],
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"(corrupt|truncated) event record at byte"):
            read_events(str(path))


def test_negative_steps_are_refused():
    with pytest.raises(ValueError, match="step=-1 must be an int >= 0"):
        encode_event(0.0, -1)


def test_the_tensorboard_package_loads_the_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator  # noqa: PLC0415

    writer = EventWriter(str(tmp_path))
    for step in (10, 20):
        writer.write_record({"epoch": step // 10, "step": step, "train_loss": 1.0 / step})
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    loss = acc.Scalars("train_loss")
    assert [e.step for e in loss] == [10, 20]
    np.testing.assert_allclose([e.value for e in loss], [0.1, 0.05], rtol=1e-6)
