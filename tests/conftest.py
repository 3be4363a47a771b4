"""Shared fixtures: the data directory, small jobs, free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FEDBLEND_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.fail(f"data directory {DATA_DIR} not found; set FEDBLEND_DATA_DIR")
    return DATA_DIR


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(1)
