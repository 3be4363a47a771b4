"""Weights: an ordered name -> numpy array map with the arithmetic aggregation needs.

Weights are what travels between sites and the server and what rests in checkpoints; the only
codec is safetensors (no pickle anywhere).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fedblend.errors import FedblendError

__all__ = ["Weights", "weighted_sum"]


class Weights(Mapping[str, np.ndarray]):
    """Immutable-by-convention ordered map of parameter name to array."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        items = arrays.items() if isinstance(arrays, Mapping) else arrays
        self._arrays: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in items}

    # Mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._arrays.items())
        return f"Weights({shapes})"

    # Structure --------------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self._arrays.values()))

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self._arrays.values()))

    def spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype string); two Weights are compatible when their specs are equal."""
        return {k: (tuple(v.shape), str(v.dtype)) for k, v in self._arrays.items()}

    def check_compatible(self, other: Weights, what: str = "weights") -> None:
        mine, theirs = self.spec(), other.spec()
        if mine == theirs:
            return
        missing = sorted(set(mine) - set(theirs))
        extra = sorted(set(theirs) - set(mine))
        if missing or extra:
            raise FedblendError(
                f"{what} do not match the model: missing keys {missing}, unexpected keys {extra}"
            )
        for k in mine:
            if mine[k] != theirs[k]:
                raise FedblendError(
                    f"{what}: tensor {k!r} must have shape/dtype {mine[k]} (got {theirs[k]})"
                )

    # Arithmetic -------------------------------------------------------------------------------
    def map(self, fn: Any) -> Weights:
        return Weights({k: fn(v) for k, v in self._arrays.items()})

    def zip_map(self, other: Mapping[str, np.ndarray], fn: Any) -> Weights:
        return Weights({k: fn(v, other[k]) for k, v in self._arrays.items()})

    def __add__(self, other: Mapping[str, np.ndarray]) -> Weights:
        return self.zip_map(other, np.add)

    def __sub__(self, other: Mapping[str, np.ndarray]) -> Weights:
        return self.zip_map(other, np.subtract)

    def __mul__(self, scalar: float) -> Weights:
        return self.map(lambda v: (v * scalar).astype(v.dtype, copy=False))

    __rmul__ = __mul__

    def zeros_like(self) -> Weights:
        return self.map(np.zeros_like)

    def copy(self) -> Weights:
        return self.map(np.array)

    def astype(self, dtype: Any) -> Weights:
        return self.map(lambda v: v.astype(dtype))

    def l2_norm(self) -> float:
        return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in self._arrays.values())))

    def is_finite(self) -> bool:
        return all(bool(np.all(np.isfinite(v))) for v in self._arrays.values() if v.dtype.kind == "f")

    def allclose(self, other: Mapping[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-7) -> bool:
        return set(self) == set(other) and all(
            np.allclose(v, other[k], rtol=rtol, atol=atol) for k, v in self._arrays.items()
        )

    def equal(self, other: Mapping[str, np.ndarray]) -> bool:
        """Bit-identical comparison."""
        return list(self) == list(other) and all(
            v.dtype == other[k].dtype and np.array_equal(v, other[k]) for k, v in self._arrays.items()
        )

    def flatten(self) -> np.ndarray:
        return np.concatenate([v.ravel().astype(np.float64) for v in self._arrays.values()]) if self._arrays else np.zeros(0)

    # Codec ------------------------------------------------------------------------------------
    def to_bytes(self, metadata: Mapping[str, str] | None = None) -> bytes:
        from safetensors.numpy import save

        return save(self._contiguous(), metadata=self._header_metadata(metadata))

    def save_file(self, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
        """Write the safetensors encoding straight to ``path`` (no second copy of the model in memory)."""
        from safetensors.numpy import save_file

        save_file(self._contiguous(), os.fspath(path), metadata=self._header_metadata(metadata))

    @classmethod
    def load_file_with_metadata(cls, path: str | os.PathLike[str]) -> tuple[Weights, dict[str, str]]:
        """Read a file written by ``save_file``; raises FedblendError on a malformed file."""
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="np") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise FedblendError(f"{path}: not a valid safetensors file: {exc}") from None
        return cls._ordered(arrays, meta), meta

    def _contiguous(self) -> dict[str, np.ndarray]:
        # ascontiguousarray makes 0-d arrays 1-d: reshape keeps scalars scalars
        return {k: np.ascontiguousarray(v).reshape(v.shape) for k, v in self._arrays.items()}

    def _header_metadata(self, metadata: Mapping[str, str] | None) -> dict[str, str]:
        meta = dict(metadata or {})
        meta["__order__"] = ",".join(self._arrays)
        return meta

    @classmethod
    def from_bytes(cls, data: bytes) -> Weights:
        return cls.from_bytes_with_metadata(data)[0]

    @classmethod
    def from_bytes_with_metadata(cls, data: bytes) -> tuple[Weights, dict[str, str]]:
        """Decode safetensors bytes; raises FedblendError (never anything else) on malformed input."""
        import json
        import struct

        from safetensors.numpy import load

        if len(data) < 8:
            raise FedblendError(f"weights payload truncated: {len(data)} bytes, need at least 8")
        try:
            (hlen,) = struct.unpack("<Q", data[:8])
            if hlen > len(data) - 8:
                raise FedblendError("weights payload truncated: header longer than payload")
            header = json.loads(data[8 : 8 + hlen])
            meta = dict(header.get("__metadata__", {}) or {})
            arrays = load(data)
        except FedblendError:
            raise
        except Exception as exc:  # safetensors raises several types for corrupt input
            raise FedblendError(f"weights payload is not valid safetensors: {exc}") from None
        return cls._ordered(arrays, meta), meta

    @classmethod
    def _ordered(cls, arrays: Mapping[str, np.ndarray], meta: dict[str, str]) -> Weights:
        """The arrays in the order recorded at save time (``__order__`` is removed from ``meta``)."""
        order = [k for k in meta.pop("__order__", "").split(",") if k]
        if sorted(order) != sorted(arrays):
            order = sorted(arrays)
        return cls((k, arrays[k]) for k in order)

    def digest(self) -> str:
        h = hashlib.sha256()
        for k, v in self._arrays.items():
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(str(v.shape).encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    # Torch bridge (lazy import) ---------------------------------------------------------------
    @classmethod
    def from_torch(cls, module: Any) -> Weights:
        return cls((k, v.detach().cpu().numpy().copy()) for k, v in module.state_dict().items())

    def load_into(self, module: Any) -> None:
        import torch

        sd = module.state_dict()
        self.check_compatible(Weights.from_torch(module), "weights")
        module.load_state_dict({k: torch.from_numpy(np.array(v)).to(sd[k].device) for k, v in self._arrays.items()})


def weighted_sum(items: Sequence[Mapping[str, np.ndarray]], coeffs: Sequence[float]) -> Weights:
    """sum_k coeffs[k] * items[k], computed in float64 and cast back to each tensor's dtype."""
    if not items:
        raise FedblendError("weighted_sum needs at least one set of weights")
    if len(items) != len(coeffs):
        raise FedblendError(f"weighted_sum: {len(items)} weights but {len(coeffs)} coefficients")
    first = items[0]
    out: dict[str, np.ndarray] = {}
    for k, v in first.items():
        acc = np.zeros(v.shape, dtype=np.float64)
        for item, c in zip(items, coeffs, strict=False):
            acc += float(c) * item[k]
        out[k] = acc.astype(v.dtype) if v.dtype.kind == "f" else np.asarray(first[k]).copy()
    return Weights(out)
