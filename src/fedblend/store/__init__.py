"""Run stores: where a run's rounds, metrics, statistics, events and checkpoints are kept."""

from fedblend.store.sqlite import DB_NAME, SqlRunStore, StoredCheckpoint, list_runs

__all__ = ["SqlRunStore", "StoredCheckpoint", "list_runs", "DB_NAME"]
