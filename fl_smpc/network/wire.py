"""The messages of owner-side training on the wire: a small JSON header and raw arrays, read strictly.

syft's messages carry commands, pointers and ``torch.load`` pickles, and its deserializer acts while it
reads. Owner-side training needs none of that: a message is a kind, a few JSON fields and a few flat
numeric arrays. One websocket binary frame holds one message::

    4-byte big-endian header length | UTF-8 JSON header | the arrays' raw little-endian bytes

    header = {"kind": str, "fields": {...}, "arrays": [{"name": str, "dtype": "<f4", "shape": [n, ...]}, ...]}

:func:`decode` checks every byte before anything is built: the frame size, the header size, the header's
exact keys and types, each array's dtype (from a short allow-list) and shape, and that the shapes account
for exactly the bytes that follow; each array is then copied out of the frame. So no pickle runs, no
storage can be larger than its bytes (nothing uninitialised is ever built), and nothing is compressed.
"""

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..errors import FlSmpcError

# dtypes an array may have on the wire: float32 parameters, float64/int64 values, bytes
DTYPES = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8"), "<i8": np.dtype("<i8"), "|u1": np.dtype("u1")}
HEADER_PREFIX = struct.Struct(">I")
MAX_HEADER = 64 * 1024  # bytes of JSON: fields are names, numbers and short lists
MAX_ARRAYS = 8
MAX_DIMS = 4
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz_0123456789")


class WireError(FlSmpcError, ValueError):
    """A frame that is not a well-formed message (the text says what, never what the arrays hold)."""


@dataclass
class Message:
    """One protocol message: its ``kind``, JSON ``fields`` and named numeric ``arrays``."""

    kind: str
    fields: Dict[str, Any] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)


def encode(message: Message) -> bytes:
    """The frame of ``message``; arrays are written little-endian in C order."""
    specs, blobs = [], []
    for name, array in message.arrays.items():
        array = np.asarray(array)
        dtype = next((code for code, dt in DTYPES.items() if dt == array.dtype.newbyteorder("<")), None)
        if dtype is None:
            raise WireError(f"array {name!r}: dtype {array.dtype} cannot be sent")
        specs.append({"name": name, "dtype": dtype, "shape": list(array.shape)})
        blobs.append(np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes())
    header = json.dumps(
        {"kind": message.kind, "fields": message.fields, "arrays": specs}, allow_nan=False, separators=(",", ":")
    ).encode()
    return b"".join([HEADER_PREFIX.pack(len(header)), header, *blobs])


def decode(frame: bytes, max_size: int) -> Message:
    """Read one frame of at most ``max_size`` bytes; WireError (a one-line reason) for anything malformed."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise WireError("a message is one binary frame")
    frame = memoryview(frame)
    if len(frame) > max_size:
        raise WireError(f"message of {len(frame)} bytes exceeds the limit of {max_size}")
    if len(frame) < HEADER_PREFIX.size:
        raise WireError("message too short for its header length")
    (header_size,) = HEADER_PREFIX.unpack(frame[: HEADER_PREFIX.size])
    if header_size > MAX_HEADER or HEADER_PREFIX.size + header_size > len(frame):
        raise WireError("header length out of range")
    start = HEADER_PREFIX.size + header_size
    try:
        header = json.loads(bytes(frame[HEADER_PREFIX.size : start]).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WireError("header is not JSON") from None
    if not isinstance(header, dict) or set(header) != {"kind", "fields", "arrays"}:
        raise WireError("header must hold exactly kind, fields and arrays")
    kind, fields, specs = header["kind"], header["fields"], header["arrays"]
    if not isinstance(kind, str) or not 0 < len(kind) <= 32 or not set(kind) <= NAME_CHARS:
        raise WireError("kind must be a short lower-case name")
    if not isinstance(fields, dict) or not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise WireError("fields must be an object and arrays a short list")
    arrays, offset = {}, start
    for spec in specs:
        name, dtype, shape = _array_spec(spec)
        if name in arrays:
            raise WireError(f"array {name!r} given twice")
        count = math.prod(shape)  # exact Python ints: no overflow
        size = count * dtype.itemsize
        if size > len(frame) - offset:
            raise WireError(f"array {name!r} needs {size} bytes, {len(frame) - offset} left")
        if math.prod(n for n in shape if n) * dtype.itemsize > len(frame):  # [0, 2**39, 2**39]: numpy refuses
            raise WireError(f"array {name!r}: shape {list(shape)} is too large")  # such shapes with ValueError
        arrays[name] = np.frombuffer(frame[offset : offset + size], dtype=dtype, count=count).reshape(shape).copy()
        offset += size
    if offset != len(frame):
        raise WireError(f"{len(frame) - offset} bytes after the last array")
    return Message(kind, fields, arrays)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _array_spec(spec) -> tuple:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
        raise WireError("an array spec holds exactly name, dtype and shape")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not 0 < len(name) <= 32 or not set(name) <= NAME_CHARS:
        raise WireError("an array name must be a short lower-case name")
    if dtype not in DTYPES:
        raise WireError(f"array {name!r}: dtype must be one of {', '.join(DTYPES)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40 for n in shape)
    ):
        raise WireError(f"array {name!r}: shape must be a list of at most {MAX_DIMS} sizes")
    return name, DTYPES[dtype], tuple(shape)


# --- reading fields: each returns the value or raises WireError naming the field -------------------------


def field_int(fields: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = fields.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise WireError(f"field {name!r} must be an integer from {low} to {high}")
    return value


def field_float(fields: Mapping[str, Any], name: str, low: float, high: float) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise WireError(f"field {name!r} must be a number from {low:g} to {high:g}")
    return float(value)


def field_str(fields: Mapping[str, Any], name: str, max_len: int = 128, choices: Optional[tuple] = None) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_len or (choices is not None and value not in choices):
        allowed = f" (one of {', '.join(choices)})" if choices else ""
        raise WireError(f"field {name!r} must be a string{allowed}")
    return value


def field_names(fields: Mapping[str, Any], name: str, max_count: int) -> tuple:
    from ..config import NAME_PATTERN

    value = fields.get(name)
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= max_count
        or not all(isinstance(v, str) and NAME_PATTERN.fullmatch(v) for v in value)
        or len(set(value)) != len(value)
    ):
        raise WireError(f"field {name!r} must be a list of at most {max_count} distinct owner ids")
    return tuple(value)
