"""One root error for fedblend, and its children.

Every message says what went wrong, where, what was expected, what was got, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "FedblendError",
    "ConfigError",
    "DataError",
    "ModelError",
    "UpdateRejected",
    "StoreError",
    "TransportError",
    "QuorumError",
]


class FedblendError(Exception):
    """Root of every error fedblend raises on purpose."""


class ConfigError(FedblendError, ValueError):
    """A job file, CLI option or constructor argument is invalid."""


class DataError(FedblendError):
    """A dataset is missing, malformed, or a partition is unusable."""


class ModelError(FedblendError):
    """A model does not fit its data (e.g. output width vs. number of labels)."""


class UpdateRejected(FedblendError):
    """A site's update failed validation; ``reason`` says why."""

    def __init__(self, site_id: str, reason: str) -> None:
        super().__init__(f"update from site {site_id!r} rejected: {reason}")
        self.site_id = site_id
        self.reason = reason


class StoreError(FedblendError):
    """The run store cannot be read or written."""


class TransportError(FedblendError):
    """A site or the server cannot be reached, or spoke out of protocol."""


class QuorumError(FedblendError):
    """Too few sites took part in a round for it to count."""
