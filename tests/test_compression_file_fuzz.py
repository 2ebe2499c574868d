"""Structure-aware fuzzing of the compressed-file reader (``compression.file_format``).

A small parser written here (independent of the reader) splits valid files into their
fields: varints, bytes, record kinds, shapes, streams. One field is mutated, the body is
re-serialised with a recomputed body length and CRC32, and the reader must either raise
its own ``FormatError`` or return exactly the structure the mutated file declares.
Deterministic mutations that make a file structurally impossible must raise.
"""

import contextlib
import errno
import math
import os
import re
import signal
import zlib
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxopt_models.compression import file_format as ff
from jaxopt_models.compression.bitpack import packed_size, unpack_stream
from jaxopt_models.compression.huffman import code_lengths, decode_prefix, unpack_lengths

# --------------------------------------------------------------------------- valid samples


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _zigzag(v: int) -> bytes:
    return _varint(2 * v if v >= 0 else -2 * v - 1)


def _file(body: bytes) -> bytes:
    head = ff.MAGIC + bytes([ff.VERSION]) + _varint(len(body)) + body
    return head + zlib.crc32(head).to_bytes(4, "big")


def _body(records: list[tuple[tuple, bytes]]) -> bytes:
    w = ff._Writer()
    w.varint(len(records))
    prev: tuple = ()
    for path, record in records:
        ff._write_path(w, path, prev)
        w.raw(record)
        prev = path
    return bytes(w.buf)


def _d(*keys):
    return tuple((ff._TAG_DICT, k) for k in keys)


def _samples() -> list[bytes]:
    """Bodies of valid files covering every record type, layout and stream mode."""
    rng = np.random.default_rng(0)
    sparse = np.where(rng.random((12, 10)) < 0.15, rng.standard_normal((12, 10)), 0.0)
    cols = np.zeros(11 * 9, np.float32)
    cols[::3] = 3 + rng.standard_normal(33)  # every 3rd in column-major order: F order wins
    cols = cols.reshape((11, 9), order="F")
    far = np.zeros((1, 300), np.float32)
    far[0, [3, 150, 299]] = 1.5  # long gaps: filler entries
    head = np.zeros((4, 5), np.float32)
    head[0, :3] = 1.0, 2.0, 3.0  # gaps all 0: a stream of width 0
    floats = _body(
        [
            (_d("a", "dense"), ff._float_record(rng.standard_normal((6, 5)), huffman=False)),
            (_d("a", "far"), ff._float_record(far, huffman=True, sparse=True)),
            (_d("a", "head"), ff._float_record(head, huffman=True, sparse=True)),
            (_d("b", "cols"), ff._float_record(cols, huffman=True, sparse=True)),
            (_d("b", "sparse"), ff._float_record(sparse, huffman=False, sparse=True)),
            (_d("c") + ((ff._TAG_LIST, 0),), ff._float_record(np.float32(2.5), huffman=False)),
            (
                _d("c") + ((ff._TAG_LIST, 1), (ff._TAG_TUPLE, 0)),
                ff._float_record(np.zeros((0, 3)), huffman=False),
            ),
        ]
    )
    codebook = rng.standard_normal(8).astype(np.float32)
    uniform = rng.integers(0, 8, (10, 9))
    skewed = np.minimum(rng.geometric(0.5, (8, 8)) - 1, 7)
    skewed[0, :8] = np.arange(8)
    mostly = np.where(rng.random((16, 12)) < 0.2, rng.integers(1, 8, (16, 12)), 0)
    shared = _body(
        [
            (_d("packed"), ff._shared_record(codebook, uniform, huffman=False, sparse=False)),
            (_d("skewed"), ff._shared_record(codebook, skewed, huffman=True, sparse=False)),
            (_d("sparse"), ff._shared_record(codebook, mostly, huffman=True, sparse=True)),
        ]
    )
    values = rng.integers(-8, 8, (8, 6))
    q_dense = ff._Quant(values, np.full((1, 6), 0.125, np.float32), np.arange(6)[None] - 3)
    zp = np.full((1, 1), 2, np.int64)
    q_vals = np.where(rng.random((20, 6)) < 0.2, rng.integers(-8, 8, (20, 6)), 2)
    q_sparse = ff._Quant(q_vals, np.full((20, 1), 0.5, np.float32), zp)
    # group-wise values (2 groups of 4 inputs, 6 outputs) with a per-input multiplier (AWQ)
    q_mult = ff._Quant(
        values.reshape(2, 4, 6),
        np.full((2, 1, 6), 0.25, np.float32),
        np.full((2, 1, 6), -1, np.int64),
        np.linspace(0.5, 2.0, 8, dtype=np.float32).reshape(2, 4, 1),
    )
    quant = _body(
        [
            (_d("qd"), ff._quantized_record(q_dense, (8, 6), huffman=False, sparse=False)),
            (_d("qm"), ff._quantized_record(q_mult, (8, 2, 3), huffman=True)),
            (_d("qs"), ff._quantized_record(q_sparse, (120,), huffman=True, sparse=True)),
        ]
    )
    tree = {
        "k": np.where(rng.random((7, 8)) < 0.3, rng.standard_normal((7, 8)), 0.0),
        "v": [np.ones(4, np.float32)],
    }
    public = ff.encode_compressed(jax.tree.map(lambda x: np.asarray(x, np.float32), tree))
    return [floats, shared, quant, _split(public)[1]]


def _split(data: bytes) -> tuple[bytes, bytes]:
    """``(header, body)`` of a file."""
    n, shift, pos = 0, 0, len(ff.MAGIC) + 1
    while True:
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return data[:pos], data[pos : pos + n]


# --------------------------------------------------------------------------- test-side parser


class Field(NamedTuple):
    role: str
    kind: str  # "u8", "varint", "zigzag" or "bytes"
    value: Any  # int, or bytes for "bytes"


class Parsed(NamedTuple):
    fields: list[Field]
    streams: list[tuple[int, int, np.ndarray]]  # field range [start, end) and its symbols
    records: list[tuple[int, int]]  # field range of every record (path included)
    leaves: list[tuple[tuple, tuple]]  # (path keys, declared shape)


class _Parser:
    """Splits a body into fields; lenient (checks nothing the reader must check)."""

    def __init__(self, body: bytes):
        self.b, self.pos = body, 0
        self.fields: list[Field] = []
        self.streams: list[tuple[int, int, np.ndarray]] = []

    def _add(self, role, kind, value, end):
        if end > len(self.b):
            raise EOFError
        self.fields.append(Field(role, kind, value))
        self.pos = end
        return value

    def u8(self, role):
        return self._add(
            role, "u8", self.b[self.pos] if self.pos < len(self.b) else 0, self.pos + 1
        )

    def varint(self, role, kind="varint"):
        v, shift, pos = 0, 0, self.pos
        while True:
            if pos >= len(self.b) or shift > 70:
                raise EOFError
            b = self.b[pos]
            v |= (b & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not b & 0x80:
                break
        if kind == "zigzag":
            v = v >> 1 if not v & 1 else -((v + 1) >> 1)
        return self._add(role, kind, v, pos)

    def raw(self, role, n):
        return self._add(role, "bytes", self.b[self.pos : self.pos + n], self.pos + n)

    def shape(self, role):
        ndim = self.varint(role + ".ndim")
        if ndim > 32:
            raise EOFError
        return tuple(self.varint(role + ".dim") for _ in range(ndim))

    def stream(self, role, n):
        start = len(self.fields)
        mode = self.u8(role + ".mode")
        if mode <= 32:
            data = self.raw(role + ".packed", packed_size(n, mode))
            symbols = unpack_stream(data, mode, n).astype(np.int64)
        else:
            alphabet = self.varint(role + ".alphabet")
            lengths = unpack_lengths(self.raw(role + ".lengths", (alphabet + 1) // 2), alphabet)
            view = np.frombuffer(self.b, np.uint8, offset=self.pos)
            symbols, end = decode_prefix(view, lengths, n)
            self.raw(role + ".coded", (end + 7) // 8)
        self.streams.append((start, len(self.fields), symbols))
        return symbols

    def record(self):
        kind = self.u8("kind")
        rtype, sparse = kind & 3, bool(kind & ff._SPARSE)
        shape = self.shape("shape")
        numel = math.prod(shape)
        if numel > FUZZ_MAX_ELEMENTS:
            raise EOFError

        def positions():
            n = self.varint("n_entries")
            if n > numel:
                raise EOFError
            return self.stream("gaps", n).size

        if rtype == ff.FLOAT:
            self.raw("f32", 4 * (positions() if sparse else numel))
        elif rtype == ff.SHARED:
            n_codes = self.varint("n_codes")
            self.raw("codebook", 4 * n_codes)
            if sparse:
                self.varint("default")
            self.stream("codes", positions() if sparse else numel)
        else:
            self.shape("vshape")
            self.raw("scale", 4 * math.prod(self.shape("sshape")))
            if kind & ff._MULTIPLIER:
                self.raw("multiplier", 4 * math.prod(self.shape("mshape")))
            for _ in range(math.prod(self.shape("zshape"))):
                self.varint("zp", "zigzag")
            self.varint("qmin", "zigzag")
            self.stream("values", positions() if sparse else numel)
        return shape

    def parse(self) -> Parsed:
        records, leaves, prev = [], [], ()
        for _ in range(self.varint("count")):
            start = len(self.fields)
            common = self.varint("path.common")
            path = list(prev[:common])
            for _ in range(self.varint("path.new")):
                tag = self.u8("path.tag")
                if tag == ff._TAG_DICT:
                    key = self.raw("path.key", self.varint("path.key_len"))
                    path.append(key.decode("utf-8", "replace"))
                else:
                    path.append(self.varint("path.index"))
            leaves.append((tuple(path), self.record()))
            records.append((start, len(self.fields)))
            prev = tuple(path)
        return Parsed(self.fields, self.streams, records, leaves)


def _encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        if f.kind == "u8":
            out.append(f.value & 0xFF)
        elif f.kind == "varint":
            out += _varint(f.value)
        elif f.kind == "zigzag":
            out += _zigzag(f.value)
        else:
            out += f.value
    return bytes(out)


FUZZ_MAX_ELEMENTS = 1 << 22  # the reader's cap in the fuzz loads: small, fast allocations
SAMPLES = _samples()
PARSED = [_Parser(b).parse() for b in SAMPLES]


def test_parser_round_trips_and_samples_cover_every_layout():
    kinds, modes = set(), set()
    for body, parsed in zip(SAMPLES, PARSED, strict=True):
        assert _encode(parsed.fields) == body
        kinds |= {f.value for f in parsed.fields if f.role == "kind"}
        modes |= {f.value for f in parsed.fields if f.role.endswith(".mode")}
        tree = ff.decode_compressed(_file(body))
        got = sorted(tuple(ff_key(k) for k in p) for p, _ in _flat(tree))
        assert got == sorted(p for p, _ in parsed.leaves)
    for rtype in (ff.FLOAT, ff.SHARED, ff.QUANTIZED):
        assert {rtype, rtype | ff._SPARSE} <= {k & ~ff._ORDER_F for k in kinds}
    assert any(k & ff._ORDER_F for k in kinds)
    assert any(k & ff._MULTIPLIER and k & 3 == ff.QUANTIZED for k in kinds)
    assert {0, 128} <= modes and any(0 < m <= 32 for m in modes)


def ff_key(k) -> Any:
    return getattr(k, "key", getattr(k, "idx", k))


def _flat(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


# --------------------------------------------------------------------------- mutations

OPS = (
    "varint",
    "overlong",
    "u8",
    "bitflip",
    "byte_set",
    "byte_delete",
    "byte_insert",
    "symbol",
    "nibble",
    "truncate",
    "extend",
    "field_delete",
    "field_dup",
    "record_dup",
    "record_swap",
)


def _new_int(v: int, arg: int, signed: bool) -> int:
    family = arg % 7
    a = arg // 7
    if family == 0:
        out = a % 80
    elif family == 1:
        out = v + a % 5 - 2
    elif family == 2:
        out = (1 << (a % 71)) - a // 71 % 2
    elif family == 3:
        out = v << (1 + a % 40)
    elif family == 4:
        out = (1 << 63) + a % 3 - 1
    elif family == 5:
        out = a % (1 << 64)
    else:
        out = v + 1
    if signed and a % 2:
        out = -out
    return out if signed else max(out, 0)


def mutate(i_sample: int, op: str, target: int, arg: int, arg2: int) -> tuple[str, bytes]:
    """One structure-aware mutation of a sample's body; returns (description, file bytes)."""
    parsed = PARSED[i_sample % len(PARSED)]
    fields = list(parsed.fields)

    def pick(pred):
        idx = [i for i, f in enumerate(fields) if pred(f)]
        return idx[target % len(idx)] if idx else None

    desc = op
    if op in ("varint", "overlong"):
        i = pick(lambda f: f.kind in ("varint", "zigzag"))
        f = fields[i]
        if op == "varint":
            new = _new_int(f.value, arg, f.kind == "zigzag")
            fields[i] = f._replace(value=new)
        else:
            enc = bytearray(_encode([f]))
            enc[-1] |= 0x80
            enc += bytes(arg % 3) + b"\x00" if arg % 4 else b"\x80\x00"
            fields[i] = Field(f.role, "bytes", bytes(enc))
            new = enc.hex()
        desc = f"{op} {f.role}[{i}] {f.value} -> {new}"
    elif op == "u8":
        i = pick(lambda f: f.kind == "u8")
        fields[i] = fields[i]._replace(value=arg % 256)
        desc = f"u8 {fields[i].role}[{i}] -> {arg % 256}"
    elif op.startswith("byte") or op == "bitflip":
        i = pick(lambda f: f.kind == "bytes" and (len(f.value) or op == "byte_insert"))
        if i is None:
            return "noop", _file(SAMPLES[i_sample % len(SAMPLES)])
        b = bytearray(fields[i].value)
        j = arg % max(len(b), 1)
        if op == "bitflip":
            b[j] ^= 1 << (arg2 % 8)
        elif op == "byte_set":
            b[j] = arg2 % 256
        elif op == "byte_delete":
            del b[j]
        else:
            b.insert(arg % (len(b) + 1), arg2 % 256)
        desc = f"{op} {fields[i].role}[{i}] at {j}"
        fields[i] = fields[i]._replace(value=bytes(b))
    elif op == "symbol":
        start, end, symbols = parsed.streams[target % len(parsed.streams)]
        if symbols.size == 0:
            return "noop", _file(SAMPLES[i_sample % len(SAMPLES)])
        symbols = symbols.copy()
        j = arg % symbols.size
        s = int(symbols[j])
        choices = (s + 1, max(s - 1, 0), 0, int(symbols.max()) + 1, (1 << (arg2 % 33)) - 1)
        symbols[j] = choices[arg2 % len(choices)]
        w = ff._Writer()
        ff._write_stream(w, symbols, huffman=bool(arg // 7 % 2))
        fields[start:end] = [Field(fields[start].role, "bytes", bytes(w.buf))]
        desc = f"symbol {fields[start].role} [{j}] {s} -> {symbols[j]}"
    elif op == "nibble":
        i = pick(lambda f: f.role.endswith(".lengths") and len(f.value))
        if i is None:
            return "noop", _file(SAMPLES[i_sample % len(SAMPLES)])
        b = bytearray(fields[i].value)
        j = arg % (2 * len(b))
        shift = 4 if j % 2 == 0 else 0
        b[j // 2] = (b[j // 2] & ~(0xF << shift) & 0xFF) | ((arg2 % 16) << shift)
        fields[i] = fields[i]._replace(value=bytes(b))
        desc = f"nibble {j} -> {arg2 % 16}"
    elif op == "truncate":
        data = _encode(fields)
        cut = arg % max(len(data), 1)
        return f"truncate body at {cut}", _file(data[:cut])
    elif op == "extend":
        extra = bytes((arg2 >> (8 * k)) & 0xFF for k in range(1 + arg % 8))
        return f"extend by {extra.hex()}", _file(_encode(fields) + extra)
    elif op in ("field_delete", "field_dup"):
        i = target % len(fields)
        desc = f"{op} {fields[i].role}[{i}]"
        if op == "field_delete":
            del fields[i]
        else:
            fields.insert(i, fields[i])
    elif op in ("record_dup", "record_swap"):
        k = target % len(parsed.records)
        start, end = parsed.records[k]
        count = fields[0]
        if op == "record_dup":
            fields[end:end] = fields[start:end]
            fields[0] = count._replace(value=count.value + 1)
        elif k + 1 < len(parsed.records):
            nxt = parsed.records[k + 1]
            fields[start : nxt[1]] = fields[nxt[0] : nxt[1]] + fields[start:end]
        desc = f"{op} record {k}"
    body = _encode(fields)
    return ("noop " if body == SAMPLES[i_sample % len(SAMPLES)] else "") + desc, _file(body)


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int):
    def handler(signum, frame):
        raise _Timeout(f"load took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _declared_leaves(data: bytes):
    """(path keys, shape) of every record of a file the reader accepted, by our parser."""
    header, body = _split(data)
    assert len(header) + len(body) + 4 == len(data)
    parser = _Parser(body)
    parsed = parser.parse()
    assert parser.pos == len(body)
    return parsed.leaves


def check_load(data: bytes, desc: str) -> bool:
    """Loads ``data``; True if it loaded (and has the declared structure), False if refused."""
    try:
        with _time_limit(20):
            tree = ff.decode_compressed(data, "fuzz.jxc", max_elements=FUZZ_MAX_ELEMENTS)
    except ff.FormatError as e:
        msg = str(e)
        assert msg.startswith("fuzz.jxc: "), msg
        assert "unexpected" not in msg, f"{desc}: refused by the safety net, not a check: {msg}"
        return False
    declared = _declared_leaves(data)
    got = [(tuple(ff_key(k) for k in p), leaf) for p, leaf in _flat(tree)]
    assert sorted(p for p, _ in got) == sorted(p for p, _ in declared), desc
    shapes = dict(declared)
    for p, leaf in got:
        leaf = np.asarray(leaf)
        assert leaf.dtype == np.float32 and leaf.shape == shapes[p], desc
    return True


@settings(
    max_examples=400,
    deadline=10_000,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.integers(0, len(SAMPLES) - 1),
    st.sampled_from(OPS),
    st.integers(0, 1 << 16),
    st.integers(0, 1 << 70),
    st.integers(0, 1 << 64),
)
def test_structure_aware_mutations_raise_format_error_or_load_the_declared_shapes(
    i_sample, op, target, arg, arg2
):
    desc, data = mutate(i_sample, op, target, arg, arg2)
    check_load(data, desc)


# --------------------------------------------------------------------------- deterministic


def _with(i_sample: int, role: str, value, nth: int = 0) -> bytes:
    """Sample ``i_sample`` with the ``nth`` field of ``role`` set to ``value``."""
    fields = list(PARSED[i_sample].fields)
    idx = [i for i, f in enumerate(fields) if f.role == role][nth]
    if callable(value):
        value = value(fields[idx].value)
    fields[idx] = fields[idx]._replace(value=value)
    return _file(_encode(fields))


def _stream_of(i_sample: int, role: str, nth: int = 0):
    parsed = PARSED[i_sample]
    found = [s for s in parsed.streams if parsed.fields[s[0]].role == role + ".mode"]
    return found[nth]


def _with_stream(i_sample: int, role: str, raw: bytes, nth: int = 0) -> bytes:
    start, end, _ = _stream_of(i_sample, role, nth)
    fields = list(PARSED[i_sample].fields)
    fields[start:end] = [Field(role, "bytes", raw)]
    return _file(_encode(fields))


def _packed(symbols, width: int) -> bytes:
    from jaxopt_models.compression.bitpack import pack_stream

    return bytes([width]) + pack_stream(np.asarray(symbols), width)


def _huffman(symbols, lengths, coded_with=None) -> bytes:
    """A Huffman stream: mode, alphabet, the ``lengths`` table (not checked) and the bits."""
    from jaxopt_models.compression.bitpack import pack_stream
    from jaxopt_models.compression.huffman import encode_symbols

    lengths = np.asarray(lengths)
    coded = encode_symbols(np.asarray(symbols), np.asarray(coded_with or lengths))[0]
    return bytes([128]) + _varint(lengths.size) + pack_stream(lengths, 4) + coded


FLOATS, SHARED, QUANT = 0, 1, 2


def _overlong_count() -> bytes:
    fields = list(PARSED[FLOATS].fields)
    fields[0] = Field("count", "bytes", bytes([fields[0].value | 0x80, 0]))
    return _file(_encode(fields))


def _unused_codebook_entry() -> bytes:
    fields = list(PARSED[SHARED].fields)
    i = [k for k, f in enumerate(fields) if f.role == "n_codes"][0]
    fields[i] = fields[i]._replace(value=9)
    fields[i + 1] = fields[i + 1]._replace(value=fields[i + 1].value + b"\0\0\x80\x3f")
    return _file(_encode(fields))


def _one_record(record: bytes) -> bytes:
    return _file(_body([(_d("w"), record)]))


def _quant_head(n: int, qmin: int, sparse: bool = False) -> bytes:
    """A quantized record of shape (n,) up to its stream: scale 1, zero point 0."""
    kind = ff.QUANTIZED | (ff._SPARSE if sparse else 0)
    head = bytes([kind, 1, n, 1, n, 1, 1]) + np.ones(1, "<f4").tobytes() + bytes([1, 1, 0])
    return head + _zigzag(qmin)


def _gap_past_the_end() -> bytes:
    gaps = _stream_of(FLOATS, "gaps")[2].copy()
    gaps[-1] += 1000
    return _with_stream(FLOATS, "gaps", _packed(gaps, 11))


def _code_out_of_range() -> bytes:
    codes = _stream_of(SHARED, "codes")[2].copy()
    codes[0] = 8
    return _with_stream(SHARED, "codes", _packed(codes, 4))


def _nonzero_padding() -> bytes:
    padded = bytearray(_packed(_stream_of(SHARED, "codes")[2], 3))
    padded[-1] |= 1  # 90 values of 3 bits: 6 padding bits in the last byte
    return _with_stream(SHARED, "codes", bytes(padded))


def _skewed_huffman(lengths, pad: bool = False, coded_with=None) -> bytes:
    raw = bytearray(_huffman(_stream_of(SHARED, "codes", 1)[2], lengths, coded_with))
    if pad:
        raw[-1] |= 1
    return _with_stream(SHARED, "codes", bytes(raw), nth=1)


_UNIFORM = _stream_of(SHARED, "codes")[2]
_COMPLETE = code_lengths(np.bincount(_stream_of(SHARED, "codes", 1)[2])).tolist()
_LONGEST = int(np.argmax(_COMPLETE))


def _lengths_with(i: int, length: int, extra: tuple = ()) -> list[int]:
    out = list(_COMPLETE)
    out[i] = length
    return out + list(extra)


IMPOSSIBLE = [
    # name, file bytes, expected message (regex)
    ("count+1", _with(FLOATS, "count", lambda v: v + 1), "needs .* bytes"),
    ("count-1", _with(FLOATS, "count", lambda v: v - 1), "left after the last record"),
    ("count huge", _with(FLOATS, "count", 1 << 40), "records cannot fit"),
    ("overlong varint", _overlong_count(), "overlong varint"),
    ("varint 2**64", _with(FLOATS, "count", 1 << 64), "not below 2\\*\\*64"),
    ("ndim 33", _with(FLOATS, "shape.ndim", 33), "33 dimensions"),
    ("dim 2**40 sparse", _with(FLOATS, "shape.dim", 1 << 40, nth=2), "max_elements"),
    ("dim 2**62 dense", _with(FLOATS, "shape.dim", 1 << 62), "max_elements"),
    (
        "2**39 zeros in 8 bytes",  # a sparse record with no entries: 2 TB to allocate
        _one_record(
            bytes([ff.FLOAT | ff._SPARSE, 2]) + _varint(1 << 20) + _varint(1 << 19) + bytes(2)
        ),
        "max_elements",
    ),
    ("entries > numel", _with(FLOATS, "n_entries", 301), "301 sparse entries"),
    ("gap past the end", _gap_past_the_end(), "outside a tensor of 300"),
    ("kind 3", _with(FLOATS, "kind", 3), "unknown record kind"),
    ("kind 16", _with(FLOATS, "kind", 16), "unknown record kind"),
    ("order F dense", _with(FLOATS, "kind", ff._ORDER_F), "only stored for sparse"),
    ("path common > prev", _with(FLOATS, "path.common", 5), "shares 5 components"),
    ("path tag 7", _with(FLOATS, "path.tag", 7), "unknown path tag"),
    ("key not utf-8", _with(FLOATS, "path.key", b"\xff"), "UTF-8"),
    ("path too deep", _with(FLOATS, "path.new", ff.MAX_DEPTH + 1), "at most 64"),
    ("list index gap", _with(FLOATS, "path.index", 2, nth=1), "not contiguous"),
    ("code out of range", _code_out_of_range(), "code 8 out of range for 8 codes"),
    ("unused codebook entry", _unused_codebook_entry(), "entry 8 of 9 is never used"),
    (
        "default not most frequent",  # codes [1, 1, 1, 1, 0, 0]: default 0 with 4 entries
        _one_record(bytes([ff.SHARED | ff._SPARSE, 1, 6, 2]) + bytes(8) + b"\0\4\0\1\xf0"),
        "default code 0 is not the most frequent code 1",
    ),
    ("default out of range", _with(SHARED, "default", 8), "default code 8 out of range"),
    (
        "more codes than weights",
        _one_record(bytes([ff.SHARED, 1, 2, 3]) + bytes(12) + _packed([0, 2], 2)),
        "codebook of 3 entries for 2 weights",
    ),
    ("values shape", _with(QUANT, "vshape.dim", 7), "does not have the 48 elements"),
    ("scale shape", _with(QUANT, "sshape.dim", 5, nth=1), "scale shape .* does not broadcast"),
    ("zp shape", _with(QUANT, "zshape.dim", 4, nth=1), "zero point shape .* not broadcast"),
    (
        "dense minimum below every value",  # values 1, 2, 3 stored as 1, 2, 3 above 0
        _one_record(_quant_head(3, 0) + _packed([1, 2, 3], 2)),
        "stored minimum 0 is not the smallest value 1",
    ),
    (
        "sparse minimum below every value",  # zero point 0, one entry -4, minimum -5
        _one_record(_quant_head(4, -5, sparse=True) + b"\1\0" + _packed([1], 1)),
        "stored minimum -5 is not the smallest value -4",
    ),
    ("multiplier shape", _with(QUANT, "mshape.dim", 3, nth=1), "multiplier shape .* broadcast"),
    ("multiplier on shared", _with(SHARED, "kind", ff.SHARED | ff._MULTIPLIER), "unknown record"),
    *[
        (f"multiplier {v}", _with(QUANT, "multiplier", np.full(8, v, "<f4").tobytes()), "finite")
        for v in (np.nan, -np.inf, 0.0, -2.0)
    ],
    ("zp 2**63", _with(QUANT, "zp", 1 << 63), "not below 2\\*\\*64"),
    (
        "minimum + value past int64",
        _one_record(_quant_head(2, (1 << 63) - 1) + _packed([0, 1], 1)),
        "value 9223372036854775808 does not fit in int64",
    ),
    *[
        (f"scale {v}", _with(QUANT, "scale", np.full(6, v, "<f4").tobytes()), "not finite")
        for v in (np.nan, np.inf, 0.0, -0.5)
    ],
    ("mode 33", _with(FLOATS, "gaps.mode", 33), "unknown stream mode 33"),
    ("mode 255", _with(SHARED, "codes.mode", 255), "unknown stream mode 255"),
    ("width not minimal", _with_stream(SHARED, "codes", _packed(_UNIFORM, 4)), "smallest width"),
    ("nonzero padding bits", _nonzero_padding(), "2 padding bits after 90 values"),
    (
        "empty stream with a width",
        _one_record(bytes([ff.FLOAT | ff._SPARSE, 1, 4, 0, 3])),
        "empty stream packed at 3 bits",
    ),
    (
        "huffman empty stream",
        _one_record(bytes([ff.FLOAT | ff._SPARSE, 1, 4, 0, 128, 1, 0x10])),
        "empty stream cannot be Huffman",
    ),
    ("huffman alphabet 0", _with_stream(SHARED, "codes", bytes([128, 0]), nth=1), "alphabet of 0"),
    (
        "huffman incomplete",
        _skewed_huffman(_lengths_with(_LONGEST, _COMPLETE[_LONGEST] + 1)),
        "incomplete prefix code",
    ),
    (
        "huffman kraft > 1",
        _skewed_huffman(_lengths_with(_LONGEST, 1), coded_with=_COMPLETE),
        "Kraft inequality",
    ),
    (
        "huffman code never used",  # the longest code split in two; symbol 8 never occurs
        _skewed_huffman(
            _lengths_with(_LONGEST, _COMPLETE[_LONGEST] + 1, (_COMPLETE[_LONGEST] + 1,))
        ),
        "symbol 8 has a code but does not occur",
    ),
    ("huffman table ends unused", _skewed_huffman(_COMPLETE + [0]), "last of 9 symbols"),
    ("huffman padding", _skewed_huffman(_COMPLETE, pad=True), "padding bits after the Huffman"),
]


def test_deterministic_cases_start_from_loadable_pieces():
    assert len({name for name, _, _ in IMPOSSIBLE}) == len(IMPOSSIBLE)
    ff.decode_compressed(_skewed_huffman(_COMPLETE))  # the variants above differ only as named
    ff.decode_compressed(_with_stream(SHARED, "codes", _packed(_UNIFORM, 3)))


@pytest.mark.parametrize("name,data,match", IMPOSSIBLE, ids=[c[0] for c in IMPOSSIBLE])
def test_structurally_impossible_files_are_refused(name, data, match):
    assert data is not None, name
    with _time_limit(20), pytest.raises(ff.FormatError, match="^bad.jxc: ") as info:
        ff.decode_compressed(data, source="bad.jxc")
    assert re.search(match, str(info.value)), str(info.value)
    assert "unexpected" not in str(info.value)


def _records_body(paths: list[tuple]) -> bytes:
    rec = ff._float_record(np.ones(2, np.float32), huffman=False)
    return _body([(p, rec) for p in paths])


@pytest.mark.parametrize(
    "paths,match",
    [
        ([_d("a"), _d("a")], "duplicate path 'a'"),
        ([_d("b"), _d("a")], "comes after 'b'"),
        ([_d("a"), _d("a", "b")], "one leaf is inside the other"),
        ([_d("a", "b"), _d("a")], "one leaf is inside the other"),
        ([(), _d("a")], "one leaf is inside the other"),
        ([_d("a"), ((ff._TAG_LIST, 0),)], "disagree on the container type"),
        ([((ff._TAG_LIST, 1),), ((ff._TAG_LIST, 0),)], "comes after"),
        ([((ff._TAG_LIST, 0),), ((ff._TAG_LIST, 2),)], "not contiguous"),
    ],
)
def test_paths_must_be_unique_sorted_and_form_a_tree(paths, match):
    with pytest.raises(ff.FormatError, match=match):
        ff.decode_compressed(_file(_records_body(paths)))


def test_every_truncation_and_extension_at_a_field_boundary_is_refused():
    for body, parsed in zip(SAMPLES, PARSED, strict=True):
        for k in range(len(parsed.fields)):
            cut = _encode(parsed.fields[:k])
            if cut == body:  # only empty fields dropped (the (0, 3) record's values)
                continue
            with pytest.raises(ff.FormatError):
                ff.decode_compressed(_file(cut))
        for extra in (b"\x00", b"\x01\x02", bytes(7)):
            with pytest.raises(ff.FormatError, match="left after the last record"):
                ff.decode_compressed(_file(body + extra))


def test_duplicated_records_are_refused():
    for i, parsed in enumerate(PARSED):
        for k in range(len(parsed.records)):
            with pytest.raises(ff.FormatError, match="duplicate path"):
                ff.decode_compressed(mutate(i, "record_dup", k, 0, 0)[1])


def test_max_elements_is_checked_before_allocating():
    # 2**29 zeros in 8 bytes: a sparse float record with no entries.
    huge = bytes([ff.FLOAT | ff._SPARSE, 2]) + _varint(1 << 15) + _varint(1 << 14) + b"\0\0"
    with _time_limit(5), pytest.raises(ff.FormatError, match="max_elements=268435456"):
        ff.decode_compressed(_file(_body([(_d("w"), huge)])))
    small = bytes([ff.FLOAT | ff._SPARSE, 2, 100, 100, 0, 0])
    data = _file(_body([(_d("w"), small), (_d("x"), small)]))
    with pytest.raises(ff.FormatError, match="max_elements=19999"):
        ff.decode_compressed(data, max_elements=19_999)
    tree = ff.decode_compressed(data, max_elements=20_000)
    np.testing.assert_array_equal(tree["w"], np.zeros((100, 100), np.float32))
    with pytest.raises(ValueError, match="max_elements must be >= 0, got -1"):
        ff.decode_compressed(data, max_elements=-1)
    with pytest.raises(TypeError, match="max_elements must be an int"):
        ff.load_compressed("x.jxc", max_elements=1.5)


def test_load_refuses_directories_missing_and_special_files(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"got a directory: '{tmp_path}'") as info:
        ff.load_compressed(tmp_path)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)
    missing = tmp_path / "missing.jxc"
    with pytest.raises(FileNotFoundError, match="missing.jxc") as info:
        ff.load_compressed(missing)
    assert info.value.errno == errno.ENOENT
    fifo = tmp_path / "pipe.jxc"
    os.mkfifo(fifo)
    with _time_limit(5), pytest.raises(ff.FormatError, match="pipe.jxc: not a regular file"):
        ff.load_compressed(fifo)


def test_writer_refuses_scales_the_reader_refuses():
    q = ff._Quant(np.zeros((2, 3), np.int64), np.array([[0.5, 0.0, 1.0]], np.float32), None)

    class Q(NamedTuple):
        values: Any
        scale: Any
        zero_point: Any

    params = {"w": np.zeros((2, 3), np.float32)}
    with pytest.raises(ValueError, match="scale for 'w' must be finite and > 0"):
        ff.encode_compressed(params, quantized={"w": Q(q.values, q.scale, None)}, check=False)
    bad = Q(q.values, np.ones((2, 1, 3), np.float32), None)
    with pytest.raises(ValueError, match="does not broadcast"):
        ff.encode_compressed(params, quantized={"w": bad}, check=False)

    class Kernel(NamedTuple):  # a quantized matrix with a per-input multiplier
        qweight: Any
        input_scale: Any

    good = Q(q.values, np.ones((1, 3), np.float32), None)
    for scale, match in (([1.0, 0.0], "input_scale for 'w' must be finite and > 0"),
                         ([1.0, 1.0, 1.0], "input_scale for 'w' has 3 entries")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            kernel = Kernel(good, np.array(scale, np.float32))
            ff.encode_compressed(params, quantized={"w": kernel}, check=False)
    with pytest.raises(ValueError, match="nested deeper than MAX_DEPTH"):
        deep: Any = np.zeros(1, np.float32)
        for _ in range(ff.MAX_DEPTH + 1):
            deep = [deep]
        ff.encode_compressed(deep)
