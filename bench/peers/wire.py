"""Length-prefixed messages between the benchmark and a worker in the other virtual environment.

The two sides run different numpy majors (ours 1.26, LeRobot's venv 2.x), so arrays never go
through pickle: a message is a JSON header (the dict with every array replaced by a
``{"__array__": i, "dtype", "shape"}`` stub) followed by the raw array bytes. Framing:
``<8-byte little-endian header length><header><8-byte payload length><payload>``.

Only the standard library and numpy: both interpreters import this file.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

_LEN = struct.Struct("<Q")


def _strip(obj: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        arrays.append(np.ascontiguousarray(obj))
        return {"__array__": len(arrays) - 1, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {str(k): _strip(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strip(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _fill(obj: Any, payload: memoryview, offsets: list[int]) -> Any:
    if isinstance(obj, dict):
        if "__array__" in obj:
            i = obj["__array__"]
            a = np.frombuffer(payload[offsets[i]:offsets[i + 1]], dtype=np.dtype(obj["dtype"]))
            return a.reshape(obj["shape"]).copy()
        return {k: _fill(v, payload, offsets) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, payload, offsets) for v in obj]
    return obj


def encode(msg: dict) -> bytes:
    """One message (a dict of JSON values and numpy arrays) as bytes."""
    arrays: list[np.ndarray] = []
    head = _strip(msg, arrays)
    sizes = [a.nbytes for a in arrays]
    header = json.dumps({"msg": head, "sizes": sizes}).encode()
    payload = b"".join(a.tobytes() for a in arrays)
    return _LEN.pack(len(header)) + header + _LEN.pack(len(payload)) + payload


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise EOFError(f"stream closed after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read(f: BinaryIO) -> dict:
    """Read one message from a binary stream (raises EOFError at the end of the stream)."""
    (n,) = _LEN.unpack(_read_exact(f, _LEN.size))
    header = json.loads(_read_exact(f, n))
    (m,) = _LEN.unpack(_read_exact(f, _LEN.size))
    payload = memoryview(_read_exact(f, m))
    offsets = [0]
    for s in header["sizes"]:
        offsets.append(offsets[-1] + s)
    return _fill(header["msg"], payload, offsets)


def write(f: BinaryIO, msg: dict) -> None:
    """Write one message to a binary stream and flush it."""
    f.write(encode(msg))
    f.flush()
