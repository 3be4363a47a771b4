"""Weights on disk for the wire: a streaming safetensors writer, a strict reader, chunk digests.

The server never holds a whole update in memory. Uploaded chunks go straight to a spool file; the
file is checked here (header, dtypes, shapes, offsets that tile the data exactly) and exposed as
``DiskWeights``, a ``Weights`` whose tensors are read from disk one at a time when asked for. The
global model is written tensor by tensor, so sending it costs no second copy either.

The format is plain safetensors (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length, a JSON header, then the raw little-endian tensor bytes. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedblend.errors import FedblendError
from fedblend.weights import Weights

__all__ = [
    "write_weights",
    "read_header",
    "DiskWeights",
    "file_digests",
    "FileDigests",
    "MAX_HEADER_BYTES",
]

MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}
_CODES = {np.dtype(v).newbyteorder("=").str if v not in ("i1", "u1", "?") else np.dtype(v).str: k for k, v in _DTYPES.items()}


def _code(dtype: np.dtype) -> str:
    d = np.dtype(dtype)
    code = _CODES.get(d.newbyteorder("=").str if d.itemsize > 1 else d.str)
    if code is None:
        raise FedblendError(f"cannot send a tensor of dtype {d} over the wire; supported: {sorted(_DTYPES)}")
    return code


def write_weights(weights: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None) -> int:
    """Write ``weights`` as safetensors, one tensor at a time; returns the file size."""
    arrays = list(weights.items())
    header: dict[str, Any] = {}
    meta = dict(metadata or {})
    meta["__order__"] = ",".join(k for k, _ in arrays)
    header["__metadata__"] = meta
    offset = 0
    for name, v in arrays:
        nbytes = int(np.asarray(v).nbytes)
        header[name] = {"dtype": _code(np.asarray(v).dtype), "shape": list(np.shape(v)), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, v in arrays:
            a = np.ascontiguousarray(v)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            f.write(memoryview(a.reshape(-1)).cast("B") if a.size else b"")
    os.replace(tmp, p)
    return 8 + len(raw) + offset


@dataclass(frozen=True)
class TensorEntry:
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    entries: dict[str, TensorEntry]  # in the writer's order
    metadata: dict[str, str]
    data_start: int

    def spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (e.shape, str(e.dtype)) for k, e in self.entries.items()}


def read_header(f: BinaryIO, size: int) -> Header:
    """Parse and check a safetensors header; raises FedblendError saying what is wrong."""
    if size < 8:
        raise FedblendError(f"weights file truncated: {size} bytes, a safetensors file needs at least 8")
    f.seek(0)
    (hlen,) = struct.unpack("<Q", f.read(8))
    if hlen > MAX_HEADER_BYTES:
        raise FedblendError(f"weights header claims {hlen} bytes, more than the limit {MAX_HEADER_BYTES}")
    if hlen > size - 8:
        raise FedblendError(f"weights file truncated: header of {hlen} bytes but only {size - 8} bytes follow")
    try:
        header = json.loads(f.read(hlen))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FedblendError(f"weights header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FedblendError("weights header must be a JSON object of tensor name -> {dtype, shape, data_offsets}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise FedblendError("weights header __metadata__ must map strings to strings")
    data_len = size - 8 - hlen
    entries: dict[str, TensorEntry] = {}
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise FedblendError(f"tensor {name!r}: header entry must have exactly dtype, shape, data_offsets (got {e!r})"[:300])
        if e["dtype"] not in _DTYPES:
            raise FedblendError(f"tensor {name!r}: dtype {e['dtype']!r} is not supported; expected one of {sorted(_DTYPES)}")
        shape, offs = e["shape"], e["data_offsets"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FedblendError(f"tensor {name!r}: shape must be a list of non-negative integers (got {shape!r})"[:300])
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data_len):
            raise FedblendError(f"tensor {name!r}: data_offsets {offs!r} fall outside the {data_len} data bytes"[:300])
        dt = np.dtype(_DTYPES[e["dtype"]])
        if offs[1] - offs[0] != math.prod(shape) * dt.itemsize:
            raise FedblendError(
                f"tensor {name!r}: shape {shape} of {e['dtype']} needs {math.prod(shape) * dt.itemsize} bytes "
                f"but data_offsets span {offs[1] - offs[0]}")
        entries[name] = TensorEntry(dt, tuple(shape), offs[0], offs[1])
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if e.begin != pos:
            raise FedblendError(f"tensor {name!r}: data starts at byte {e.begin}, expected {pos} (tensors must tile the data, no gaps or overlaps)")
        pos = e.end
    if pos != data_len:
        raise FedblendError(f"weights file has {data_len - pos} trailing bytes after the last tensor (truncated header or corrupt file)")
    order = [k for k in meta.get("__order__", "").split(",") if k]
    if sorted(order) == sorted(entries):
        entries = {k: entries[k] for k in order}
    else:
        entries = dict(sorted(entries.items()))
    meta = {k: v for k, v in meta.items() if k != "__order__"}
    return Header(entries, meta, 8 + hlen)


class _DiskArrays(Mapping[str, np.ndarray]):
    """Tensor name -> array read from the file on every access (nothing is cached)."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path, self.header = path, header

    def __getitem__(self, key: str) -> np.ndarray:
        e = self.header.entries[key]
        count = math.prod(e.shape)
        with open(self.path, "rb") as f:
            a = np.fromfile(f, dtype=e.dtype, count=count, offset=self.header.data_start + e.begin) if count else np.zeros(0, e.dtype)
        if a.size != count:
            raise FedblendError(f"{self.path}: tensor {key!r} is truncated on disk")
        if a.dtype.byteorder == "<" and a.dtype.newbyteorder("=") != a.dtype:
            a = a.astype(a.dtype.newbyteorder("="))
        return a.reshape(e.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.entries)

    def __len__(self) -> int:
        return len(self.header.entries)


class DiskWeights(Weights):
    """``Weights`` backed by a checked safetensors file; tensors load one at a time on access.

    Arithmetic (``-``, ``*``, ``map``) returns ordinary in-memory Weights, as for any Weights.
    """

    __slots__ = ("path", "header")

    def __init__(self, path: str | Path) -> None:  # noqa: D107 - no call to Weights.__init__ on purpose
        p = Path(path)
        size = p.stat().st_size
        with open(p, "rb") as f:
            header = read_header(f, size)
        self.path = p
        self.header = header
        self._arrays = _DiskArrays(p, header)  # type: ignore[assignment]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.header.metadata)

    def spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self.header.spec()

    @property
    def nbytes(self) -> int:
        return int(sum(e.end - e.begin for e in self.header.entries.values()))

    @property
    def num_parameters(self) -> int:
        return int(sum(math.prod(e.shape) for e in self.header.entries.values()))

    def materialize(self) -> Weights:
        return Weights(self.items())

    def __repr__(self) -> str:
        return f"DiskWeights({self.path.name}, {len(self)} tensors, {self.nbytes} bytes)"


@dataclass(frozen=True)
class FileDigests:
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[str, ...]


def file_digests(path: str | Path, chunk_size: int) -> FileDigests:
    """sha256 of the whole file and of each ``chunk_size`` piece."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            size += len(block)
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
    return FileDigests(size, whole.hexdigest(), chunk_size, tuple(chunks))
