"""A hyperparameter search on a deployment: `fedblend server` with a [tune] job runs its trials on
real `fedblend site` processes, one after another; sites follow the server's current job."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from fedblend.jobs import load_job, parse_job
from fedblend.net.wire import WorkItem, job_id_of
from net_helpers import DATA_DIR, HEART, env, heart_job, make_fleet, wait_all_done, wait_until

SITES = HEART[:3]
LRS = [0.001, 0.01, 0.1]
TUNE = {"searcher": "grid", "n_trials": 3, "metric": "val_loss", "pruner": "none",
        "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "grid": LRS}}}


@pytest.fixture
def fleet(tmp_path):
    f = make_fleet(tmp_path)
    yield f
    f.close()


def _job(tmp_path, **tune):
    return heart_job(tmp_path, name="net-tune", rounds=2,
                     data={"dataset": "heart_disease", "num_sites": 3, "val_fraction": 0.2},
                     deploy={"sites": SITES}, tune={**TUNE, **tune})


def test_a_search_runs_its_trials_on_the_sites(fleet, tmp_path):
    import optuna

    from fedblend.hpo.objective import round_metrics, trial_job
    from fedblend.runner import run_job

    job = _job(tmp_path)
    server = fleet.start_server(job)
    procs = [fleet.start_site(s, extra=["--threads", "1"]) for s in SITES]
    wait_all_done(server, procs, timeout=120, expect="the search is finished after 3 trial(s)")

    state = tmp_path / "state"
    study = optuna.load_study(study_name="net-tune", storage=f"sqlite:///{state / 'tune.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert sorted(t.params["train.lr"] for t in trials) == LRS
    assert all(t.user_attrs["rounds_done"] == 2 for t in trials)
    assert len({t.value for t in trials}) == 3
    # the sites trained each trial's configuration: each trial's score is that of the same trial
    # simulated on the reference pool (the same SiteRunner code as a deployed site)
    base = load_job(job)
    for t in trials:
        sim = run_job(trial_job(base, t.params).with_overrides(**{"pool.kind": "sequential"}), persist=False,
                      data_dir=DATA_DIR)
        assert t.value == pytest.approx(round_metrics(sim.history[-1])["val_loss"], rel=1e-6), t.params

    best = load_job(state / "best_job.toml")
    assert best.tune is None and best.train.lr == study.best_trial.params["train.lr"]
    assert (state / "tune.json").exists()
    st = fleet.store()
    meta = st.meta()
    assert meta["kind"] == "tune" and meta["status"] == "finished"
    assert st.document("best_job.toml") is not None
    kinds = [e["kind"] for e in st.events()]
    assert kinds.count("trial_finished") == 3 and kinds.count("job_switched") == 3 and "search_finished" in kinds
    st.close()


def test_deployment_refuses_repeats(fleet, tmp_path):
    job = _job(tmp_path, repeats=2)
    out = subprocess.run([sys.executable, "-m", "fedblend", "server", "--job", str(job), "--state", str(tmp_path / "state"),
                          "--ca", str(fleet.ca.dir), "--port", "0", "--quiet"], env=env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    msg = " ".join((out.stdout + out.stderr).split())
    assert "[tune].repeats = 2 cannot run on a deployment" in msg and "Set [tune].repeats = 1" in msg, msg


def test_deployment_refuses_several_workers(tmp_path):
    from fedblend.errors import ConfigError
    from fedblend.hpo.deployed import check_deployable
    from fedblend.hpo.spec import tune_spec_for

    spec = tune_spec_for(load_job(_job(tmp_path, workers=2)), "job.toml")
    with pytest.raises(ConfigError, match=r"\[tune\].workers = 2 cannot run on a deployment.*Set \[tune\].workers = 1"):
        check_deployable(spec, "job.toml")


# -- the job switch, in-process --------------------------------------------------------------------
class _FakeClient:
    """Answers /v1/hello with the server's current job and records every call."""

    def __init__(self, job_toml: str) -> None:
        self.job_toml = job_toml
        self.calls: list[tuple[str, str]] = []

    def json(self, method, path, **_):
        self.calls.append((method, path))
        assert path == "/v1/hello"
        return {"site": "cleveland", "server_id": "s1", "job_toml": self.job_toml, "heartbeat_s": 1.0,
                "chunk_bytes": 1024, "max_update_bytes": 1 << 20, "data_check_s": 60.0}

    def call(self, method, path, **_):
        self.calls.append((method, path))

    def close(self):
        pass


def _agent(fleet, loads):
    from fedblend.net.agent import LocalSite, SiteAgent
    from fedblend.net.wire import Schema

    def load_site(job_toml, name):
        loads.append(job_toml)
        runner = type("R", (), {"stats": lambda self: type("S", (), {"to_json": lambda s: {}})()})()
        return LocalSite(runner=runner, schema=Schema(input_shape=[3], num_classes=2), data_version="v1", num_rows=5,
                         current_version=lambda: "v1")

    agent = SiteAgent(fleet.load("cleveland"), load_site, server_url="https://127.0.0.1:1")
    agent.client.close()
    return agent


def test_agent_reloads_on_a_new_job_id_only(fleet):
    job_a, job_b = "name = 'a'\n", "name = 'b'\n"
    loads: list[str] = []
    agent = _agent(fleet, loads)
    agent.client = fake = _FakeClient(job_a)
    agent._enroll()
    assert loads == [job_a] and agent.job_id == job_id_of(job_a)
    assert fake.calls == [("GET", "/v1/hello"), ("POST", "/v1/register")]

    fake.calls.clear()
    for same in (WorkItem(kind="train", task_id="t1"), WorkItem(kind="train", task_id="t2", job_id=job_id_of(job_a))):
        assert agent.follow_job(same)
    assert loads == [job_a] and fake.calls == []  # no job_id, or the loaded one: nothing to do

    fake.job_toml = job_b  # the server switched jobs
    assert agent.follow_job(WorkItem(kind="train", task_id="t3", job_id=job_id_of(job_b)))
    assert loads == [job_a, job_b] and agent.job_id == job_id_of(job_b)
    assert fake.calls == [("GET", "/v1/hello"), ("POST", "/v1/register")]

    # an item of a job the server has already left (it moved on to c): reload c, skip the item
    job_c = "name = 'c'\n"
    fake.job_toml = job_c
    assert not agent.follow_job(WorkItem(kind="train", task_id="t4", job_id=job_id_of("name = 'old'\n")))
    assert loads == [job_a, job_b, job_c] and agent.job_id == job_id_of(job_c)


def test_pool_set_job_tags_tasks_and_hello(tmp_path):
    import threading

    from fedblend.errors import FedblendError
    from fedblend.net.config import parse_deploy
    from fedblend.net.pool import DeploymentPool
    from fedblend.net.wire import Registration, Schema
    from fedblend.records import RoundPlan
    from test_net_units import W

    spec = parse_deploy({"sites": ["a"], "heartbeat_s": 5, "deadline_s": 30})
    pool = DeploymentPool(spec, spool_dir=tmp_path / "spool", job_toml="name = 'x'\n")
    try:
        pool.register("a", Registration(data_version="v1", num_rows=10, schema=Schema(input_shape=[3], num_classes=2)))
        out: dict = {}

        def train():
            try:
                out["r"] = pool.train(RoundPlan(1, ("a",), {}, 0), W)
            except Exception as exc:  # noqa: BLE001 - handed to the test
                out["e"] = exc

        th = threading.Thread(target=train)
        th.start()
        assert pool.wait_for(lambda: bool(pool._sessions["a"].queue), 10)
        item = pool.next_work("a")
        assert item is not None and item.job_id is None  # never switched: old agents see no job_id
        with pytest.raises(FedblendError, match="cannot change while a train request is open"):
            pool.set_job("name = 'y'\n")
        pool.fail_task("a", item.task_id, "test")
        th.join(10)
        assert "e" in out  # no quorum: the round is over, the request closed

        assert pool.set_job("name = 'y'\n") and not pool.set_job("name = 'y'\n")
        assert pool.hello("a").job_toml == "name = 'y'\n"
        th = threading.Thread(target=train)
        th.start()
        assert pool.wait_for(lambda: bool(pool._sessions["a"].queue), 10)
        item = pool.next_work("a")
        assert item.job_id == job_id_of("name = 'y'\n")
        pool.fail_task("a", item.task_id, "test")
        th.join(10)
    finally:
        pool.close()


def test_a_job_switch_keeps_the_sites_data_split(tmp_path):
    """The trial's job differs (lr) but the seed and val_fraction are the same: the same rows."""
    from fedblend.cli.site import make_loader
    from fedblend.hpo.objective import trial_job

    base = load_job(_job(tmp_path))
    load = make_loader(DATA_DIR)
    sites = [load(j.to_toml(), "hungary") for j in (base, trial_job(base, {"train.lr": 0.1}))]
    assert parse_job(tomllib.loads(trial_job(base, {"train.lr": 0.1}).to_toml())).train.lr == 0.1
    a, b = (s.runner.site for s in sites)
    for split in ("train", "val", "test"):
        assert (a.split(split).x == b.split(split).x).all() and (a.split(split).y == b.split(split).y).all(), split
    assert sites[0].data_version == sites[1].data_version and sites[0].num_rows == sites[1].num_rows


def test_a_round_without_quorum_fails_its_trial_and_the_search_goes_on(tmp_path):
    """The shared trial code path with a backend whose first federation loses its quorum."""
    from fedblend.errors import QuorumError
    from fedblend.hpo.objective import simulation_backend
    from fedblend.hpo.spec import tune_spec_for
    from fedblend.hpo.storage import open_storage
    from fedblend.hpo.tune import open_study
    from fedblend.hpo.worker import run_worker

    job = load_job(_job(tmp_path))
    spec = tune_spec_for(job, "job.toml")
    sim = simulation_backend(DATA_DIR)
    calls: list[float] = []

    class NoQuorum:
        def __init__(self, pool):
            self.pool = pool

        def __getattr__(self, name):
            return getattr(self.pool, name)

        def train(self, plan, weights):
            raise QuorumError(f"round {plan.round}: 0 usable update(s) by the deadline, quorum is 2")

    def backend(j):
        prepared, pool, close = sim(j)
        calls.append(j.train.lr)
        return prepared, (NoQuorum(pool) if len(calls) == 1 else pool), close

    storage = open_storage("memory", heartbeat_interval=5, grace_period=20, max_retry=0)
    study = open_study(job, spec, storage)
    ran = run_worker(job, spec, storage=storage, study_name=study.study_name, index=0, run_dir=None, lock_dir=None,
                     backend=backend)
    trials = study.get_trials()
    assert ran == 3 and len(calls) == 3
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("QuorumError: round 1: 0 usable update(s)")


def test_a_killed_server_continues_the_search_where_it_stopped(fleet, tmp_path, free_port):
    import optuna

    lrs = [0.001, 0.003, 0.01, 0.03]
    job = _job(tmp_path, n_trials=4, space={"train.lr": {"type": "float", "low": 0.001, "high": 0.03, "log": True,
                                                        "grid": lrs}})
    storage = f"sqlite:///{tmp_path / 'state' / 'tune.db'}"

    def complete() -> int:
        try:
            study = optuna.load_study(study_name="net-tune", storage=storage)
        except Exception:  # the study is not created yet
            return 0
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))

    server = fleet.start_server(job, port=free_port)
    procs = [fleet.start_site(s, extra=["--threads", "1"]) for s in SITES]
    wait_until(lambda: complete() >= 1, 120, "a first trial to finish", [server])
    server.kill()  # SIGKILL: no clean shutdown, a trial may be cut short
    done_before = complete()
    assert 1 <= done_before < 4
    server2 = fleet.start_server(job, port=free_port)
    wait_all_done(server2, procs, timeout=180, expect="the search is finished")

    study = optuna.load_study(study_name="net-tune", storage=storage)
    finished = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) <= 1 and len(study.get_trials()) == 4 + len(failed)  # the cut trial, run again
    # every grid point ran to completion exactly once; a trial cut short by the kill is failed, not counted
    assert sorted(t.params["train.lr"] for t in finished) == lrs
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.get_trials())
    assert load_job(tmp_path / "state" / "best_job.toml").train.lr == study.best_trial.params["train.lr"]
