"""Deployed runs with real processes on 127.0.0.1: a server and one `fedblend site` per site.

Equivalence: a seeded deployed run gives bit-identical final weights to the seeded simulation of
the same job on the reference pool (``sequential``: the same SiteRunner code as a deployed site;
same torch build, one thread each side). The vectorized simulation pool agrees to float rounding.
"""

from __future__ import annotations

import pytest

from fedblend.jobs import load_job
from fedblend.runner import run_job
from net_helpers import DATA_DIR, HEART, heart_job, make_fleet, rounds_committed, wait_all_done, wait_until


@pytest.fixture
def fleet(tmp_path):
    f = make_fleet(tmp_path)
    yield f
    f.close()


def test_three_sites_run_to_the_end_and_equal_the_simulation(fleet, tmp_path):
    """Smoke run and equivalence, with the blend on: its candidates are scored by the sites."""
    sites = HEART[:3]
    job = heart_job(tmp_path, rounds=3, data={"dataset": "heart_disease", "num_sites": 3, "val_fraction": 0.2},
                    deploy={"sites": sites}, strategy={"name": "fedadam", "server_lr": 0.05},
                    blend={"budget": 6, "batch_size": 2})
    server = fleet.start_server(job)
    procs = [fleet.start_site(s, extra=["--threads", "1"]) for s in sites]
    wait_all_done(server, procs, timeout=180, expect="the job is finished after round 3")

    st = fleet.store()
    rounds = st.rounds()
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["participants"] == sites for r in rounds)
    deployed = st.final_weights()
    sim = run_job(load_job(job).with_overrides(**{"pool.kind": "sequential"}), persist=False, data_dir=DATA_DIR)
    assert deployed.equal(sim.weights), "deployed and simulated final weights differ"
    assert rounds[-1]["global_metrics"]["test_acc"] == pytest.approx(sim.final_metrics["test_acc"])
    blends = st.blends()
    untimed = {k: v for k, v in sim.history[-1].blend.items() if k != "timing"}
    assert [b["round"] for b in blends] == [3] and {k: v for k, v in blends[0].items() if k != "timing"} == {"round": 3, **untimed}
    # the dashboard's view: site states, data versions, row counts, stats, events
    by_site = {s["site_id"]: s for s in st.sites()}
    assert set(by_site) == set(sites)
    assert by_site["cleveland"]["num_rows"] == 303 and len(by_site["cleveland"]["data_version"]) == 16
    assert all(s["state"] == "offline" for s in by_site.values())  # each was told the job is done and left
    assert st.site_stats()["hungary"]["num_train"] == 138  # FLamby's 172 training rows, 20% carved for validation
    kinds = [e["kind"] for e in st.events()]
    assert kinds.count("site_registered") == 3 and "cycle_finished" in kinds
    assert st.meta()["status"] == "finished"
    st.close()


def test_a_dead_site_and_a_slow_site_do_not_stop_the_run(fleet, tmp_path):
    """va is killed mid-round (missed heartbeats -> offline); switzerland trains past the deadline
    (its update arrives late and is refused); the round closes with the other two."""
    job = heart_job(tmp_path, rounds=1, deploy={"quorum": 2, "deadline_s": 6, "eval_deadline_s": 60})
    server = fleet.start_server(job)
    fast = [fleet.start_site(s) for s in ("cleveland", "hungary")]
    slow = fleet.start_site("switzerland", extra=["--delay-train-s", "9"])
    doomed = fleet.start_site("va", extra=["--delay-train-s", "600"])

    def site_state(name):
        if not (tmp_path / "state" / "run.db").exists():
            return None
        st = fleet.store()
        try:
            return {s["site_id"]: s["state"] for s in st.sites()}.get(name)
        finally:
            st.close()

    wait_until(lambda: site_state("va") == "training", 120, "site va to start training", [server])
    doomed.kill()
    for p in fast + [slow]:
        assert p.wait(120) == 0, p.tail()
    assert server.wait(60) == 0, server.tail()

    st = fleet.store()
    rounds = st.rounds()
    assert [r["round"] for r in rounds] == [1]
    assert rounds[0]["participants"] == ["cleveland", "hungary"]
    failed = {f["site_id"]: f for f in rounds[0]["failures"]}
    assert failed["va"]["kind"] == "offline" and "no heartbeat" in failed["va"]["reason"], failed
    assert failed["switzerland"]["kind"] == "timeout" and "deadline of 6s" in failed["switzerland"]["reason"], failed
    events = st.events()
    assert any(e["kind"] == "site_offline" and e["site_id"] == "va" for e in events)
    late = [e["payload"] for e in events if e["kind"] == "request_rejected" and e["site_id"] == "switzerland"]
    assert [p["code"] for p in late] == ["late"] and "closed at its deadline" in late[0]["detail"], late
    # the late site still answered the evaluation: the final metrics cover it
    evals = {m["site_id"] for m in st.site_metrics("eval:test")}
    assert evals == {"cleveland", "hungary", "switzerland"}
    assert {s["site_id"]: s["state"] for s in st.sites()}["va"] == "offline"
    st.close()


def test_killed_server_resumes_and_reaches_the_uninterrupted_model(fleet, tmp_path, free_port):
    sites = HEART[:3]
    job = heart_job(tmp_path, rounds=6, data={"dataset": "heart_disease", "num_sites": 3}, deploy={"sites": sites})
    server = fleet.start_server(job, port=free_port)
    procs = [fleet.start_site(s, extra=["--threads", "1"]) for s in sites]
    wait_until(lambda: rounds_committed(fleet) >= 2, 120, "round 2 to be committed", [server])
    server.kill()  # SIGKILL: no clean shutdown
    killed_at = rounds_committed(fleet)
    assert 2 <= killed_at < 6
    server2 = fleet.start_server(job, port=free_port)
    wait_all_done(server2, procs, timeout=180)

    st = fleet.store()
    assert [r["round"] for r in st.rounds()] == [1, 2, 3, 4, 5, 6]
    assert any(e["kind"] == "resumed" and e["round"] == killed_at for e in st.events())
    sim = run_job(load_job(job).with_overrides(**{"pool.kind": "sequential"}), persist=False, data_dir=DATA_DIR)
    assert st.final_weights().equal(sim.weights), "the resumed run's final model differs from an uninterrupted one"
    st.close()
