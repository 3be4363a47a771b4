"""In-memory site data: what a SiteRunner trains and evaluates on.

Every built-in dataset, partitioner and user-data loader ends in a ``FederatedDataset``: one
``SiteData`` per site, each with train, validation and test splits as numpy arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from fedblend.errors import DataError

__all__ = ["ArraySplit", "SiteData", "FederatedDataset"]


@dataclass(frozen=True)
class ArraySplit:
    """Features ``x`` (float32, or int64 token ids) and labels ``y`` (int64 class ids)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"features and labels differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> ArraySplit:
        return ArraySplit(self.x[idx], self.y[idx])

    @staticmethod
    def empty_like(other: ArraySplit) -> ArraySplit:
        return ArraySplit(other.x[:0], other.y[:0])

    @staticmethod
    def concat(parts: list[ArraySplit]) -> ArraySplit:
        return ArraySplit(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


@dataclass(frozen=True)
class SiteData:
    site_id: str
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit

    def split(self, name: str) -> ArraySplit:
        if name not in ("train", "val", "test"):
            raise DataError(f"split must be 'train', 'val' or 'test' (got {name!r})")
        return getattr(self, name)

    def version(self) -> str:
        """A hash of the site's data: changes when its data changes (continuous federation)."""
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            h.update(np.ascontiguousarray(s.x).tobytes())
            h.update(np.ascontiguousarray(s.y).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class FederatedDataset:
    """All sites of one federation, with what a model needs to know about the data."""

    name: str
    sites: dict[str, SiteData]
    num_classes: int
    input_shape: tuple[int, ...]
    kind: str = "tabular"  # "tabular" | "image" | "text"
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for sid, s in self.sites.items():
            if len(s.train) == 0:
                raise DataError(
                    f"site {sid!r} has no training examples; use fewer sites, a larger alpha, "
                    "or a partition with min_size > 0"
                )

    @property
    def site_ids(self) -> list[str]:
        return list(self.sites)
