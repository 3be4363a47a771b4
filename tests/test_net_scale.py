"""Sixteen site processes for twenty rounds over loopback, half of them sampled each round; the
deployed model is bit-identical to the simulation of the same job (sampling included)."""

from __future__ import annotations

from fedblend.data import site_names
from fedblend.jobs import load_job
from fedblend.runner import run_job
from net_helpers import DATA_DIR, heart_job, make_fleet, wait_all_done


def test_sixteen_sites_twenty_rounds(tmp_path):
    sites = site_names(16)
    job = heart_job(tmp_path, rounds=20, data={"dataset": "heart_disease", "partition": "iid", "num_sites": 16},
                    train={"local_steps": 5}, sampling={"fraction": 0.5}, eval={"every": 5},
                    deploy={"sites": sites, "heartbeat_s": 1.0, "missed_heartbeats": 10})
    fleet = make_fleet(tmp_path)
    try:
        server = fleet.start_server(job, timeout=120)
        procs = [fleet.start_site(s) for s in sites]
        wait_all_done(server, procs, timeout=600)
    finally:
        fleet.close()
    st = fleet.store()
    rounds = st.rounds()
    assert [r["round"] for r in rounds] == list(range(1, 21))
    assert all(len(r["participants"]) == 8 and not r["failures"] for r in rounds)
    assert len({tuple(r["participants"]) for r in rounds}) > 1  # sampling varies by round
    evals = st.site_metrics("eval:test")
    assert {m["round"] for m in evals} == {5, 10, 15, 20} and len([m for m in evals if m["round"] == 20]) == 16
    deployed = st.final_weights()
    sim = run_job(load_job(job).with_overrides(**{"pool.kind": "sequential"}), persist=False, data_dir=DATA_DIR)
    assert deployed.equal(sim.weights)  # bit-identical to the reference pool
    auto = run_job(load_job(job), persist=False, data_dir=DATA_DIR)  # the pool `auto` picks (vectorized here)
    assert deployed.allclose(auto.weights, rtol=0, atol=1e-6)
    st.close()
