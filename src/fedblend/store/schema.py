"""The run store's tables (SQLAlchemy Core). One database per run directory."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

run_meta = Table(
    "run_meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", JSON),
)

rounds = Table(
    "rounds",
    metadata,
    Column("round", Integer, primary_key=True),
    Column("committed_at", Float, nullable=False),
    Column("duration_s", Float),
    Column("participants", JSON),
    Column("failures", JSON),
    Column("global_metrics", JSON),
    Column("checkpoint", String),
    Column("digest", String),
)

site_metrics = Table(
    "site_metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("round", Integer, index=True, nullable=False),
    Column("site_id", String, nullable=False),
    Column("kind", String, nullable=False),  # "train" | "eval:<split>"
    Column("num_examples", Integer),
    Column("metrics", JSON),
)

site_stats = Table(
    "site_stats",
    metadata,
    Column("site_id", String, primary_key=True),
    Column("stats", JSON),
    Column("heterogeneity", Float),
)

sites = Table(
    "sites",
    metadata,
    Column("site_id", String, primary_key=True),
    Column("state", String),  # online | training | evaluating | idle | offline | rejected
    Column("progress", Float),
    Column("last_heartbeat", Float),
    Column("data_version", String),
    Column("num_rows", Integer),
    Column("rejected", Integer, default=0),
    Column("info", JSON),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String, nullable=False, index=True),
    Column("round", Integer),
    Column("site_id", String),
    Column("payload", JSON),
)

blends = Table(
    "blends",
    metadata,
    Column("round", Integer, primary_key=True),
    Column("record", JSON),
)

# Free-form record of the run's own text documents (e.g. the job TOML).
documents = Table(
    "documents",
    metadata,
    Column("name", String, primary_key=True),
    Column("text", Text),
)
