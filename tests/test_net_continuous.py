"""Continuous federation with real processes: two sites on their own CSV files; when one site's
data changes (its manifest hash), the server runs another cycle from the last global model,
with nobody in the loop."""

from __future__ import annotations

import numpy as np
import pytest
import tomli_w

from net_helpers import make_fleet, rounds_committed, wait_until


def _csv(path, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.normal(size=n) > 0).astype(int)
    lines = ["f1,f2,f3,f4,y"] + [",".join(f"{v:.5f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def fleet(tmp_path):
    f = make_fleet(tmp_path)
    yield f
    f.close()


def test_new_data_at_a_site_starts_a_new_cycle(fleet, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "alpha.csv").write_text(_csv(data / "alpha.csv", 60, 1))
    (data / "beta.csv").write_text(_csv(data / "beta.csv", 60, 2))
    job = tmp_path / "csv.toml"
    job.write_text(tomli_w.dumps({
        "name": "csv-continuous", "seed": 1, "rounds": 2, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "csv", "files": {"alpha": "alpha.csv", "beta": "beta.csv"}, "label_column": "y"},
        "model": {"name": "logreg"},
        "train": {"lr": 0.1, "batch_size": 8, "local_steps": 5},
        "deploy": {"sites": ["alpha", "beta"], "heartbeat_s": 0.5, "missed_heartbeats": 6, "long_poll_s": 1,
                   "data_check_s": 0.2, "linger_s": 5, "cycle": {"new_data_sites": 1, "max_cycles": 2}},
    }))
    server = fleet.start_server(job)
    sites = [fleet.start_site(s, data=data) for s in ("alpha", "beta")]

    def cycle_one_done():
        if rounds_committed(fleet) < 2:
            return False
        st = fleet.store()
        try:
            return any(e["kind"] == "cycle_finished" for e in st.events())
        finally:
            st.close()

    wait_until(cycle_one_done, 120, "the first cycle to finish", [server, *sites])
    st = fleet.store()
    first_version = {s["site_id"]: s["data_version"] for s in st.sites()}
    st.close()
    assert rounds_committed(fleet) == 2  # nothing runs until there is new data
    with open(data / "alpha.csv", "a") as f:  # twenty new patients at alpha
        f.write(_csv(data / "x.csv", 20, 3).split("\n", 1)[1])
    for p in sites:
        assert p.wait(120) == 0, p.tail()
    assert server.wait(60) == 0, server.tail()

    st = fleet.store()
    assert [r["round"] for r in st.rounds()] == [1, 2, 3, 4]
    events = st.events()
    trigger = [e["payload"] for e in events if e["kind"] == "cycle_trigger"]
    assert trigger == [{"reason": "new_data", "sites": ["alpha"]}]
    assert any(e["kind"] == "resumed" and e["round"] == 2 for e in events)  # cycle 2 starts from round 2's model
    now = {s["site_id"]: s for s in st.sites()}
    assert now["alpha"]["data_version"] != first_version["alpha"] and now["beta"]["data_version"] == first_version["beta"]
    assert now["alpha"]["num_rows"] == 80
    assert st.meta()["cycle"] == 2
    train3 = {m["site_id"]: m["num_examples"] for m in st.site_metrics("train") if m["round"] == 3}
    train1 = {m["site_id"]: m["num_examples"] for m in st.site_metrics("train") if m["round"] == 1}
    assert train3["alpha"] > train1["alpha"] and train3["beta"] == train1["beta"]
    st.close()
