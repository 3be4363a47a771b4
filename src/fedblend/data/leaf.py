"""LEAF FEMNIST (clients = writers) and LEAF Shakespeare (clients = speaking roles).

Caldas et al. (2018), LEAF: A Benchmark for Federated Settings, arXiv:1812.01097. Both use LEAF's
JSON layout ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``
with one train and one test file per shard; each client keeps its own LEAF train/test split and a
seeded validation split is carved from its train split by ``val_fraction``.

FEMNIST: ``x`` is 784 floats, reshaped to float32 ``(1, 28, 28)``. LEAF stores 1.0 for the white
background; by default (``invert=True``) we return ``1 - x`` so that 0 is background and ink is
bright, the same convention as MNIST, and one image model fits both. 62 classes (0-9, A-Z, a-z).

Shakespeare: ``x`` is an 80-character string, ``y`` the next character. Both become int64 ids over
``SHAKESPEARE_VOCAB``, LEAF's 80-character ``ALL_LETTERS``. In the test files ``num_samples``
overstates the count (a LEAF quirk), so counts always come from ``len(y)``.

Run: ``PYTHONPATH=src python -c "from fedblend.data import load_femnist as f; print(len(f().sites))"``
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.datadir import resolve_data_dir
from fedblend.data.split import carve_val, check_fraction, rng_for, writable
from fedblend.errors import ConfigError, DataError

__all__ = ["SHAKESPEARE_VOCAB", "FEMNIST_CLASSES", "encode_text", "load_femnist", "load_shakespeare"]

SHAKESPEARE_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
FEMNIST_CLASSES: tuple[str, ...] = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_FEMNIST_DIR = "femnist_leaf_sample"
_SHAKESPEARE_DIR = "shakespeare_leaf_sample"
_SEQ_LEN = 80

_LOOKUP = np.full(256, -1, dtype=np.int64)
for _i, _ch in enumerate(SHAKESPEARE_VOCAB):
    _LOOKUP[ord(_ch)] = _i


def encode_text(strings: list[str], seq_len: int | None = None, *, where: str = "text") -> np.ndarray:
    """Token ids (int64) of equal-length strings over ``SHAKESPEARE_VOCAB``: shape ``(n, seq_len)``.

    A character outside the vocabulary is a ``DataError`` naming it and ``where``.
    """
    if not strings:
        return np.zeros((0, seq_len or 0), dtype=np.int64)
    length = len(strings[0]) if seq_len is None else seq_len
    bad = next((i for i, s in enumerate(strings) if len(s) != length), None)
    if bad is not None:
        raise DataError(f"{where}: sequence {bad} has {len(strings[bad])} characters, expected {length}")
    joined = "".join(strings)
    try:
        codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: character {joined[e.start]!r} is not in the vocabulary") from None
    ids = _LOOKUP[codes]
    if (ids < 0).any():
        ch = chr(int(codes[np.argmax(ids < 0)]))
        raise DataError(f"{where}: character {ch!r} is not in SHAKESPEARE_VOCAB (80 printable characters)")
    return ids.reshape(len(strings), length)


def _read_json(path: Path) -> dict[str, Any]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            d = json.loads(fh.read())
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read LEAF file {str(path)!r}: {e}") from None
    if not isinstance(d, dict) or "user_data" not in d:
        raise DataError(f"{str(path)!r} is not a LEAF file: no 'user_data' key")
    return d


def _split_files(root: Path, sub: str, dataset: str) -> tuple[list[Path], list[Path]]:
    base = root / sub
    train = sorted(p for p in (base / "train").glob("*.json*") if p.suffix in (".json", ".gz"))
    test = sorted(p for p in (base / "test").glob("*.json*") if p.suffix in (".json", ".gz"))
    if not train:
        raise DataError(
            f"dataset {dataset!r} needs LEAF JSON files in {str(base / 'train')!r}, found none; "
            f"set --data-dir or FEDBLEND_DATA_DIR to the directory that holds {sub}/"
        )
    return train, test


@functools.lru_cache(maxsize=2)
def _femnist_writers(root: str) -> dict[str, tuple[ArraySplit, ArraySplit]]:
    train_files, test_files = _split_files(Path(root), _FEMNIST_DIR, "femnist")
    parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "test": {}}
    for split, files in (("train", train_files), ("test", test_files)):
        for f in files:
            for w, ud in _read_json(f)["user_data"].items():
                x = np.asarray(ud["x"], dtype=np.float32)
                y = np.asarray(ud["y"], dtype=np.int64)
                if x.ndim != 2 or x.shape[1] != 784 or len(x) != len(y):
                    raise DataError(
                        f"{f}: writer {w!r} has x of shape {x.shape} and {len(y)} labels; expected (n, 784) and n"
                    )
                if w in parts[split]:
                    raise DataError(f"{f}: writer {w!r} appears in two {split} shards")
                parts[split][w] = (x.reshape(-1, 1, 28, 28), y)
    out: dict[str, tuple[ArraySplit, ArraySplit]] = {}
    for w in sorted(parts["train"]):
        x, y = parts["train"][w]
        tx, ty = parts["test"].get(w, (x[:0], y[:0]))
        for a in (x, y, tx, ty):
            a.flags.writeable = False
        out[w] = (ArraySplit(x, y), ArraySplit(tx, ty))
    return out


def load_femnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    num_writers: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    invert: bool = True,
) -> FederatedDataset:
    """FEMNIST by writer: one site per writer (ids like ``"f3313_11"``), sorted by id.

    ``num_writers`` keeps the first N writers in that order; ``invert=False`` keeps LEAF's
    1.0-is-background values.
    """
    root = resolve_data_dir(data_dir)
    vf = check_fraction("val_fraction", val_fraction)
    writers = _femnist_writers(str(root.resolve()))
    ids = list(writers)
    if num_writers is not None:
        if not isinstance(num_writers, int) or not 1 <= num_writers <= len(ids):
            raise ConfigError(f"'num_writers' must be an int in [1, {len(ids)}] (got {num_writers!r})")
        ids = ids[:num_writers]
    sites: dict[str, SiteData] = {}
    for w in ids:
        train, test = writers[w]
        if invert:
            train, test = ArraySplit(1.0 - train.x, train.y), ArraySplit(1.0 - test.x, test.y)
        train, val = carve_val(train, vf, rng_for(seed, "val", w))
        sites[w] = SiteData(w, writable(train), writable(val), writable(test))
    return FederatedDataset(
        name="femnist",
        sites=sites,
        num_classes=62,
        input_shape=(1, 28, 28),
        kind="image",
        class_names=FEMNIST_CLASSES,
    )


@functools.lru_cache(maxsize=2)
def _shakespeare_roles(root: str) -> dict[str, tuple[ArraySplit, ArraySplit]]:
    train_files, test_files = _split_files(Path(root), _SHAKESPEARE_DIR, "shakespeare")
    parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {"train": {}, "test": {}}
    for split, files in (("train", train_files), ("test", test_files)):
        for f in files:
            for role, ud in _read_json(f)["user_data"].items():
                where = f"{f.name}, role {role!r}"
                x = encode_text(ud["x"], _SEQ_LEN, where=where)
                y = encode_text(ud["y"], 1, where=where)[:, 0]
                if len(x) != len(y):  # never trust num_samples: the test files overstate it
                    raise DataError(f"{where}: {len(x)} sequences but {len(y)} targets")
                parts[split][role] = (x, y)
    out: dict[str, tuple[ArraySplit, ArraySplit]] = {}
    for role in sorted(parts["train"]):
        x, y = parts["train"][role]
        tx, ty = parts["test"].get(role, (x[:0], y[:0]))
        for a in (x, y, tx, ty):
            a.flags.writeable = False
        out[role] = (ArraySplit(x, y), ArraySplit(tx, ty))
    return out


def load_shakespeare(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> FederatedDataset:
    """LEAF Shakespeare by speaking role: one site per role, sorted by role name."""
    root = resolve_data_dir(data_dir)
    vf = check_fraction("val_fraction", val_fraction)
    sites: dict[str, SiteData] = {}
    for role, (train, test) in _shakespeare_roles(str(root.resolve())).items():
        train, val = carve_val(train, vf, rng_for(seed, "val", role))
        sites[role] = SiteData(role, writable(train), writable(val), writable(test))
    return FederatedDataset(
        name="shakespeare",
        sites=sites,
        num_classes=len(SHAKESPEARE_VOCAB),
        input_shape=(_SEQ_LEN,),
        kind="text",
        class_names=tuple(SHAKESPEARE_VOCAB),
    )
