"""The tensor table of a .safetensors file, from its header alone (no tensor data is read).

Layout: 8 bytes little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the data. `read_header` returns
every tensor's dtype and shape after checking that the header is bounded and every tensor's
bytes lie inside the file and match its dtype and shape, so the numbers can be trusted to
say how much memory loading the file would take. ValueError for anything else.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors itself refuses headers above 100 MB; a header is ~100 bytes per tensor.
MAX_HEADER_BYTES = 100_000_000

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
               "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "I64": 8, "U64": 8, "F64": 8, "C64": 8}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict[str, TensorInfo]:
    """name -> TensorInfo of every tensor in the file (opened without following a symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("a .safetensors file is shorter than its header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise ValueError("a .safetensors header is larger than its file allows")
        try:
            table = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("a .safetensors header is not valid JSON") from None
    if not isinstance(table, dict):
        raise ValueError("a .safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    out: dict[str, TensorInfo] = {}
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor(entry, data_bytes)
    return out


def _tensor(entry: object, data_bytes: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise ValueError("a .safetensors header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise ValueError("a .safetensors tensor has an unknown dtype")
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise ValueError("a .safetensors tensor has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets)):
        raise ValueError("a .safetensors tensor has invalid data offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes \
            or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError("a .safetensors tensor's data does not match its shape or lies "
                         "outside the file")
    return TensorInfo(dtype, tuple(shape))
