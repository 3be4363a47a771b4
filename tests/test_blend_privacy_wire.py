"""Every HTTPS message a deployed site sends and receives during a run with a blend, inspected.

``test_blend_privacy.py`` checks the SiteRunner boundary of the in-process pool; this file checks
the wire of a real deployment: a ``fedblend server`` process on 127.0.0.1 and three real
``SiteAgent``s (built as ``fedblend site`` builds them) in threads of this process, talking mutual
TLS. An httpx event hook on each agent's clients records the method, path and both bodies of every
request. From the recording alone the test rebuilds every model a site downloaded and every
update it uploaded, and asserts:

1. every request goes to a fleet endpoint (``net/wire.py``), each JSON body is that endpoint's
   pydantic message; no other kind of message exists;
2. raw data never leaves a site: only JSON control messages and update chunks of training tasks
   go up, evaluation results are scalar sums, registration stats are aggregates, and no request
   body holds the bytes (float32 or float64) of any of the site's feature rows;
3. no other site's individual model reaches a site: no downloaded model equals another site's
   update, and every blend candidate is a mix of the round's site models in which every site keeps
   at least floor/K;
4. the synthesis downloads are exactly the candidates of the server's blend record.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from fedblend.blend.mixing import blend_weights
from fedblend.blend.spaces import Candidate
from fedblend.cli.site import make_loader
from fedblend.net.agent import EXIT_DONE, SiteAgent
from fedblend.net.wire import (
    EvalResult,
    Heartbeat,
    Hello,
    Registration,
    TaskFailure,
    UploadManifest,
    UploadTicket,
    WorkItem,
)
from fedblend.weights import Weights
from net_helpers import DATA_DIR, HEART, heart_job, make_fleet

SITES = HEART[:3]
BUDGET, FLOOR = 6, 0.25
ROUNDS = 3

# the fleet API a site may call (net/wire.py), and the message its JSON body must be
ENDPOINTS: list[tuple[str, re.Pattern[str], type | None]] = [
    ("GET", re.compile(r"/v1/hello"), None),
    ("POST", re.compile(r"/v1/register"), Registration),
    ("POST", re.compile(r"/v1/heartbeat"), Heartbeat),
    ("GET", re.compile(r"/v1/work"), None),
    ("GET", re.compile(r"/v1/models/(?P<model>[^/]+)/chunks/(?P<index>\d+)"), None),
    ("POST", re.compile(r"/v1/tasks/(?P<task>[^/]+)/upload"), UploadManifest),
    ("PUT", re.compile(r"/v1/uploads/(?P<upload>[^/]+)/chunks/(?P<index>\d+)"), None),
    ("POST", re.compile(r"/v1/uploads/(?P<upload>[^/]+)/commit"), None),
    ("POST", re.compile(r"/v1/tasks/(?P<task>[^/]+)/eval"), EvalResult),
    ("POST", re.compile(r"/v1/tasks/(?P<task>[^/]+)/fail"), TaskFailure),
]
STATS_KEYS = {"site_id", "num_train", "num_val", "num_test", "label_counts", "features", "data_version", "min_cell"}


@dataclass
class Exchange:
    """One request a site made, as it crossed the wire."""

    method: str
    path: str
    params: dict[str, str]
    request: bytes
    status: int
    response: bytes
    kind: str = ""  # the endpoint's path pattern
    groups: dict[str, str] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        return 200 <= self.status < 400

    def request_json(self) -> Any:
        return json.loads(self.request) if self.request else None

    def response_json(self) -> Any:
        return json.loads(self.response)


def record_traffic(client: httpx.Client, log: list[Exchange]) -> None:
    """Record every request ``client`` sends and the response to it (httpx event hooks, public API).

    A request is logged as it leaves, so one that never gets an answer is inspected too
    (``status`` 0, empty response).
    """
    pending: dict[int, Exchange] = {}

    def on_request(req: httpx.Request) -> None:
        ex = Exchange(req.method, req.url.path, dict(req.url.params), req.read(), 0, b"")
        pending[id(req)] = ex
        log.append(ex)

    def on_response(r: httpx.Response) -> None:
        r.read()
        ex = pending.pop(id(r.request))
        ex.status, ex.response = r.status_code, r.content

    client.event_hooks = {"request": [on_request], "response": [on_response]}


def run_agents(fleet: Any, deadline_s: float = 60.0) -> tuple[dict[str, SiteAgent], dict[str, list[Exchange]]]:
    """One real SiteAgent per site, in threads, each with its HTTPS traffic recorded.

    The run takes seconds; past ``deadline_s`` the server is stopped and the agents with it (they
    give up after ``give_up_s`` without a server), so a broken run fails fast instead of hanging.
    """
    agents = {s: SiteAgent(fleet.load(s), make_loader(DATA_DIR), server_url=fleet.url, give_up_s=5) for s in SITES}
    traffic: dict[str, list[Exchange]] = {s: [] for s in SITES}
    for s, a in agents.items():
        record_traffic(a.client.http, traffic[s])
        record_traffic(a.beat_client.http, traffic[s])
    codes: dict[str, int] = {}
    threads = [
        threading.Thread(target=lambda s=s: codes.__setitem__(s, agents[s].run()), name=f"site-{s}") for s in SITES
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(timeout=max(0.0, end - time.monotonic()))
    if any(t.is_alive() for t in threads):
        log = fleet.server.tail() if fleet.server else ""
        fleet.close()
        for a in agents.values():
            a.stop()
        for t in threads:
            t.join(timeout=30)
        pytest.fail(f"the site agents did not finish within {deadline_s:.0f} s; server log:\n{log}")
    assert codes == dict.fromkeys(SITES, EXIT_DONE), {s: (codes.get(s), agents[s].message) for s in SITES}
    assert all(f"the job is finished after round {ROUNDS}" in a.message for a in agents.values())
    return agents, traffic


def classify(ex: Exchange) -> None:
    """Name the endpoint ``ex`` went to (``kind`` stays "" for a request to anything else)."""
    for method, pattern, _ in ENDPOINTS:
        m = pattern.fullmatch(ex.path)
        if m and method == ex.method:
            ex.kind, ex.groups = pattern.pattern, m.groupdict()
            return


def numbers(obj: Any) -> list[float]:
    """Every number in a JSON value, in document order."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def scalars_only(obj: Any, where: str) -> None:
    assert isinstance(obj, dict), f"{where}: expected a JSON object, got {type(obj).__name__}"
    for k, v in obj.items():
        assert isinstance(v, (int, float, str)) and not isinstance(v, bool), f"{where}.{k} is not a scalar: {v!r}"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    fleet = make_fleet(root)
    job = heart_job(
        root,
        rounds=ROUNDS,
        data={"dataset": "heart_disease", "num_sites": 3, "val_fraction": 0.2},
        deploy={"sites": SITES, "chunk_mb": 0.0001},  # ~100-byte chunks: models travel in pieces
        blend={"budget": BUDGET, "batch_size": 2, "space": "tilt", "schedule": "end", "floor": FLOOR},
    )
    torch.set_num_threads(1)  # as `fedblend site --threads 1`; the agents run in this process
    try:
        server = fleet.start_server(job)
        agents, traffic = run_agents(fleet)
        for log in traffic.values():
            for ex in log:
                classify(ex)
        assert server.wait(60) == 0, server.tail()
        st = fleet.store()
        try:
            blends, rounds = st.blends(), st.rounds()
        finally:
            st.close()
        yield {"agents": agents, "traffic": traffic, "blends": blends, "rounds": rounds}
    finally:
        fleet.close()


def reassemble(traffic: dict[str, list[Exchange]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """From the recording: every work item, every downloaded model and every uploaded update."""
    downloads: dict[str, dict[str, Any]] = {}  # site -> model_id -> Weights (as the agent rebuilt it)
    uploads: dict[str, dict[str, Any]] = {}  # site -> task_id -> {round, weights}
    for site, log in traffic.items():
        chunks: dict[str, dict[int, bytes]] = defaultdict(dict)
        up_chunks: dict[str, dict[int, bytes]] = defaultdict(dict)
        refs, manifests, tickets = {}, {}, {}
        for ex in log:
            if not ex.answered:
                continue
            if ex.kind == "/v1/work":
                item = WorkItem.model_validate(ex.response_json())
                for ref in (item.model, item.reference):
                    if ref is not None:
                        refs[ref.model_id] = ref
            elif ex.kind.startswith("/v1/models/"):
                chunks[ex.groups["model"]][int(ex.groups["index"])] = ex.response
            elif ex.kind.endswith("/upload"):
                manifests[ex.groups["task"]] = UploadManifest.model_validate(ex.request_json())
                tickets[UploadTicket.model_validate(ex.response_json()).upload_id] = ex.groups["task"]
            elif ex.kind.startswith("/v1/uploads/") and ex.method == "PUT":
                up_chunks[ex.groups["upload"]][int(ex.groups["index"])] = ex.request
        downloads[site] = {}
        for model_id, parts in chunks.items():
            ref = refs[model_id]
            assert sorted(parts) == list(range(len(ref.chunks))), f"{site}: model {model_id} chunks {sorted(parts)}"
            data = b"".join(parts[i] for i in range(len(ref.chunks)))
            assert len(ref.chunks) > 1 and hashlib.sha256(data).hexdigest() == ref.sha256
            downloads[site][model_id] = Weights.from_bytes(data)
        uploads[site] = {}
        for upload_id, parts in up_chunks.items():
            man = manifests[tickets[upload_id]]
            data = b"".join(parts[i] for i in range(len(man.chunks)))
            assert hashlib.sha256(data).hexdigest() == man.sha256, (
                f"{site}: upload {upload_id} does not match its manifest"
            )
            uploads[site][tickets[upload_id]] = {"round": man.round, "weights": Weights.from_bytes(data)}
    return downloads, uploads


def work_items(log: list[Exchange]) -> list[WorkItem]:
    return [WorkItem.model_validate(ex.response_json()) for ex in log if ex.kind == "/v1/work" and ex.answered]


def test_every_request_is_a_fleet_message(deployed):
    for site, log in deployed["traffic"].items():
        assert log, site
        unknown = [f"{ex.method} {ex.path}" for ex in log if not ex.kind]
        assert not unknown, f"{site} called what is not a fleet API endpoint: {unknown}"
        for ex in log:
            model = next(m for meth, p, m in ENDPOINTS if p.pattern == ex.kind and meth == ex.method)
            if model is not None:
                model.model_validate(ex.request_json())  # extra="forbid": no field beyond the message's
            elif ex.method == "GET" or ex.kind.endswith("/commit"):
                assert ex.request == b"", f"{site}: {ex.method} {ex.path} carried a body"
            if ex.kind == "/v1/hello":
                Hello.model_validate(ex.response_json())
        assert work_items(log)[-1].kind == "done"  # told the job is done, and left
        kinds = Counter(ex.kind for ex in log)
        assert kinds["/v1/register"] == 1 and kinds["/v1/hello"] == 1, kinds
        # every request was answered, but a heartbeat may meet the server as it exits at the end
        unanswered = [(ex.path, ex.status, ex.response[:200]) for ex in log if not ex.answered]
        assert all(p == "/v1/heartbeat" and st == 0 for p, st, _ in unanswered), unanswered


def test_no_raw_data_leaves_a_site(deployed):
    for site, log in deployed["traffic"].items():
        items = work_items(log)
        train_tasks = {i.task_id for i in items if i.kind == "train"}
        # binary bodies go up only as chunks of an upload opened for a training task
        uploads = {}
        for ex in log:
            if ex.kind.endswith("/upload"):
                assert ex.groups["task"] in train_tasks, f"{site}: an upload for a task that is not a training task"
                uploads[ex.response_json()["upload_id"]] = ex.groups["task"]
        for ex in log:
            if ex.method == "PUT":
                assert ex.groups["upload"] in uploads, f"{site}: chunk for an unknown upload {ex.groups['upload']}"
            elif ex.request:
                json.loads(ex.request)  # everything else that carries a body is a JSON control message
        # evaluation results: the scalar sums, nothing per example
        evals = [ex for ex in log if ex.kind.endswith("/eval")]
        assert evals
        for ex in evals:
            scalars_only(ex.request_json(), f"{site} eval")
            assert set(ex.request_json()) == {"split", "num_examples", "loss_sum", "correct", "diff_sum", "diff_sq_sum"}
        # registration: aggregate statistics only
        (reg,) = [ex.request_json() for ex in log if ex.kind == "/v1/register"]
        stats = reg["stats"]
        assert set(stats) == STATS_KEYS, sorted(stats)
        assert all(v is None or isinstance(v, int) for v in stats["label_counts"].values())
        for name, f in stats["features"].items():
            scalars_or_none = all(v is None or isinstance(v, (int, float)) for v in f.values())
            assert set(f) <= {"mean", "std", "missing"} and scalars_or_none, (name, f)
        # no request body holds any feature row, as float32 or float64 bytes
        data = deployed["agents"][site].site.runner.site
        rows = np.concatenate([data.train.x, data.val.x, data.test.x]).reshape(
            len(data.train) + len(data.val) + len(data.test), -1
        )
        distinct = [r for r in rows if len(np.unique(r)) > 1]  # a constant row is too generic to be a signal
        assert len(distinct) > 0.9 * len(rows)
        needles = [r.astype(dt).tobytes() for r in distinct for dt in (np.float32, np.float64)]
        sent = b"".join(ex.request for ex in log)
        leaked = [n for n in needles if n in sent]
        assert not leaked, f"{site}: {len(leaked)} feature rows found in what it sent"
        # nor as JSON numbers: no three consecutive numbers of a JSON body are three consecutive
        # values of a feature row
        triples = {r[i : i + 3].astype(np.float32).tobytes() for r in distinct for i in range(len(r) - 2)}
        for ex in log:
            if ex.method != "PUT" and ex.request:
                seq = np.asarray(numbers(ex.request_json()), dtype=np.float32)
                hits = [i for i in range(len(seq) - 2) if seq[i : i + 3].tobytes() in triples]
                assert not hits, f"{site}: {ex.path} carries feature values {seq[hits[0] : hits[0] + 3]}"
        # the update chunks did go up (the check above had something to search)
        assert sum(len(ex.request) for ex in log if ex.method == "PUT") > 0


def test_no_site_receives_another_sites_model(deployed):
    traffic = deployed["traffic"]
    downloads, uploads = reassemble(traffic)
    assert all(len(uploads[s]) == ROUNDS for s in SITES), {s: len(u) for s, u in uploads.items()}
    for site in SITES:
        others = [u["weights"] for s in SITES if s != site for u in uploads[s].values()]
        for model_id, w in downloads[site].items():
            assert not any(w.allclose(o, rtol=1e-6, atol=1e-8) for o in others), (
                f"{site} got another site's update ({model_id})"
            )

    # the blend: candidates are mixes of the last round's site models, every site >= floor/K
    (rec,) = deployed["blends"]
    assert rec["round"] == ROUNDS
    last = {s: next(u["weights"] for u in uploads[s].values() if u["round"] == ROUNDS) for s in SITES}
    basis = np.stack([last[s].flatten() for s in rec["sites"]], axis=1).astype(np.float64)
    k = basis.shape[1]
    mixes = 0
    for site in SITES:
        for item in work_items(traffic[site]):
            if item.kind != "evaluate" or item.split != "val":
                continue
            assert item.round == ROUNDS and item.reference is not None
            w = downloads[site][item.model.model_id]
            ref = downloads[site][item.reference.model_id]
            assert not any(w.allclose(m, rtol=1e-6, atol=1e-8) for m in last.values())
            if w.equal(ref):  # the FedAvg reference itself
                continue
            coef, *_ = np.linalg.lstsq(basis, w.flatten().astype(np.float64), rcond=None)
            assert np.allclose(basis @ coef, w.flatten(), atol=1e-5), (
                "a candidate that is not a blend of the site models"
            )
            assert coef.sum() == pytest.approx(1.0, abs=1e-4)
            assert coef.min() >= FLOOR / k - 1e-4, (
                f"{site} received a blend in which a site has {coef.min():.4f} < floor/K"
            )
            mixes += 1
    assert mixes >= (BUDGET - 1) * len(SITES)


def test_synthesis_downloads_are_the_recorded_candidates(deployed):
    traffic = deployed["traffic"]
    downloads, uploads = reassemble(traffic)
    (rec,) = deployed["blends"]
    comm = rec["communication"]
    assert rec["eval_sites"] == SITES and comm["eval_sites"] == len(SITES)
    assert comm["candidates"] == BUDGET and comm["models_sent"] == BUDGET * len(SITES)
    last = {s: next(u["weights"] for u in uploads[s].values() if u["round"] == ROUNDS) for s in SITES}
    merged = None
    per_site: dict[str, list[Weights]] = {}
    for site in SITES:
        cands = [i for i in work_items(traffic[site]) if i.kind == "evaluate" and i.split == "val"]
        assert len(cands) == comm["models_sent"] // comm["eval_sites"], f"{site}: {len(cands)} candidate downloads"
        evals = [ex for ex in traffic[site] if ex.kind.endswith("/eval")]
        answered = {ex.groups["task"] for ex in evals if ex.request_json()["split"] == "val"}
        assert answered == {i.task_id for i in cands}  # one scalar answer per candidate, on validation
        refs = {i.reference.sha256 for i in cands}
        assert len(refs) == 1  # one reference (the round's FedAvg aggregate) for the whole synthesis
        merged = downloads[site][cands[0].reference.model_id]
        per_site[site] = [downloads[site][i.model.model_id] for i in cands]
    # every site scored the same candidates, in the order the record lists them, and each is the
    # record's ratios applied to the uploaded site models
    assert merged is not None
    assert [r["round"] for r in deployed["rounds"]] == [1, 2, 3] and deployed["rounds"][-1]["participants"] == SITES
    # the reference is the round's FedAvg of the uploaded site models
    fedavg = blend_weights(last, Candidate({"all": rec["fedavg_ratios"]}, 1.0), reference=merged)
    assert merged.allclose(fedavg, rtol=1e-5, atol=1e-6)
    for site in SITES:
        assert all(a.equal(b) for a, b in zip(per_site[site], per_site[SITES[0]], strict=True))
    for entry, w in zip(rec["trials"], per_site[SITES[0]], strict=True):
        if entry["label"] == "fedavg":
            assert w.equal(merged)
            continue
        want = blend_weights(last, Candidate({"all": entry["ratios"]}, 1.0), reference=merged)
        assert w.allclose(want, rtol=1e-6, atol=1e-7), f"candidate {entry['number']} is not the record's ratios"
        assert min(entry["ratios"].values()) >= FLOOR / len(SITES) - 1e-9
