"""MNIST and Fashion-MNIST: an idx (``.gz``) reader and the pooled train/test arrays.

LeCun et al. (1998), MNIST; Xiao et al. (2017), Fashion-MNIST, arXiv:1708.07747. Neither has
natural clients: ``fedblend.data.registry.load_dataset`` partitions the pooled arrays returned here.

Images come back as float32 ``(N, 1, 28, 28)`` in [0, 1] (0 = background), labels as int64. The
decoded arrays are cached per file in this process and returned read-only; index them (which
copies) rather than writing to them.

Run: ``PYTHONPATH=src python -c "from fedblend.data.idx import load_idx_pair as f; print(f('mnist'))"``
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit
from fedblend.data.datadir import data_file, resolve_data_dir
from fedblend.errors import DataError

__all__ = ["IDX_DATASETS", "read_idx", "load_idx_pair", "FASHION_CLASSES"]

IDX_DATASETS: dict[str, str] = {"mnist": "mnist", "fashion_mnist": "fashion_mnist"}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one idx file (gzip-compressed when its name ends in ``.gz``) into a numpy array."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file {str(p)!r}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{str(p)!r} is not an idx file (bad magic number {raw[:4].hex()!r})")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{str(p)!r}: header says shape {shape} ({expected} bytes of data) but the file has "
            f"{len(raw) - header}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@functools.lru_cache(maxsize=8)
def _decoded(images: str, labels: str) -> ArraySplit:
    img = read_idx(images)
    lab = read_idx(labels)
    if img.ndim != 3 or lab.ndim != 1 or len(img) != len(lab):
        raise DataError(
            f"{images!r} / {labels!r}: expected (N, rows, cols) images and N labels, "
            f"got shapes {img.shape} and {lab.shape}"
        )
    x = (img.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    y = lab.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return ArraySplit(x, y)


def load_idx_pair(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[ArraySplit, ArraySplit]:
    """The official (train, test) arrays of ``"mnist"`` or ``"fashion_mnist"``; cached, read-only."""
    if name not in IDX_DATASETS:
        raise DataError(f"no idx dataset named {name!r}; expected one of {sorted(IDX_DATASETS)}")
    root = resolve_data_dir(data_dir)
    out = []
    for split in ("train", "test"):
        img, lab = (data_file(root, f"{IDX_DATASETS[name]}/{f}", name) for f in _FILES[split])
        out.append(_decoded(str(img.resolve()), str(lab.resolve())))
    return out[0], out[1]
