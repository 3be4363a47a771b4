"""The Weights codec: safetensors in memory and on disk, scalars kept, corrupt input refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedblend.errors import FedblendError
from fedblend.weights import Weights


def _weights() -> Weights:
    rng = np.random.default_rng(0)
    # a deliberately unsorted key order, a 0-d counter and a non-contiguous view
    return Weights(
        {
            "z.weight": rng.standard_normal((3, 4)).astype(np.float32),
            "a.step": np.array(7, dtype=np.int64),
            "m.bias": rng.standard_normal((4, 3)).astype(np.float32).T[0],
        }
    )


def test_bytes_and_file_round_trips_keep_order_shapes_and_values(tmp_path: Path) -> None:
    w = _weights()
    assert Weights.from_bytes(w.to_bytes()).equal(w)
    w.save_file(tmp_path / "w.safetensors", {"round": "3"})
    back, meta = Weights.load_file_with_metadata(tmp_path / "w.safetensors")
    assert back.equal(w) and list(back) == ["z.weight", "a.step", "m.bias"]
    assert back["a.step"].shape == () and meta == {"round": "3"}
    # the file and the bytes are the same encoding (header key order aside)
    again, meta2 = Weights.from_bytes_with_metadata((tmp_path / "w.safetensors").read_bytes())
    assert again.equal(w) and meta2 == meta


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(_weights().to_bytes()[:40])
    with pytest.raises(FedblendError, match="bad.safetensors: not a valid safetensors file"):
        Weights.load_file_with_metadata(p)
    with pytest.raises(FedblendError, match="truncated|not valid safetensors"):
        Weights.from_bytes(p.read_bytes())
