"""Deployment pieces in-process (fast): CA and bundles, the wire codec, [deploy] validation, the
pool's fault rules (quorum, deadline, offline, late, stale, duplicate), the OpenAPI schema, and the
coordinator's cycle schedule."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import stat
import struct
import threading
import time

import numpy as np
import pytest

from fedblend.engine.validate import UpdateValidator
from fedblend.errors import ConfigError, FedblendError, QuorumError
from fedblend.net.ca import CertificateAuthority, RevocationList
from fedblend.net.codec import DiskWeights, file_digests, write_weights
from fedblend.net.config import parse_deploy
from fedblend.net.identity import check_site_name, identity_from_peercert, load_bundle
from fedblend.net.pool import DeploymentPool
from fedblend.net.wire import EvalResult, Heartbeat, Registration, Schema, UploadManifest, WireError
from fedblend.records import RoundPlan, SiteUpdate
from fedblend.strategies import make_strategy
from fedblend.weights import Weights

W = Weights({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32), "n": np.array(3, np.int64)})
SCHEMA = Schema(input_shape=[3], num_classes=2)


# -- CA and bundles ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca") / "ca", server_url="https://fl.example.org:8443")


def test_ca_init_writes_private_keys_privately_and_an_admin_bundle(ca):
    for name in ("ca.key", "server.key", "admin.bundle"):
        assert stat.S_IMODE(os.stat(ca.dir / name).st_mode) == 0o600, name
    admin = load_bundle(ca.dir / "admin.bundle")
    assert admin.role == "admin" and admin.admin_token and hashlib.sha256(admin.admin_token.encode()).hexdigest() == ca.admin_token_hash
    with pytest.raises(ConfigError, match="already holds a CA"):
        CertificateAuthority.init(ca.dir, server_url="https://x:1")


def test_site_bundle_carries_identity_and_server(ca, tmp_path):
    b = load_bundle(ca.issue_site("cleveland", out=tmp_path / "c.bundle"))
    assert (b.site, b.role, b.server_url) == ("cleveland", "site", "https://fl.example.org:8443")
    assert b.cert_subject() == ("cleveland", "site")
    assert b.not_after() > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    ctx = b.client_ssl_context()
    assert ctx.verify_mode.name == "CERT_REQUIRED"


def test_a_tampered_bundle_cannot_claim_another_name(ca, tmp_path):
    path = ca.issue_site("hungary", out=tmp_path / "h.bundle")
    raw = json.loads(path.read_text())
    raw["site"] = "va"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="its certificate is for site 'hungary'"):
        load_bundle(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a fedblend site bundle"):
        load_bundle(path)
    with pytest.raises(ConfigError, match="not found"):
        load_bundle(tmp_path / "missing.bundle")


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x" * 65, "admin", "../etc", "é"])
def test_site_names_are_checked(bad):
    with pytest.raises(ConfigError):
        check_site_name(bad)


def test_revocation_reaches_a_running_revocation_list(ca):
    rl = RevocationList([ca.revoked_path])
    serial = next(c["serial"] for c in reversed(ca.issued()) if c["name"] == "cleveland")
    assert not rl.is_revoked(serial)
    assert ca.revoke("cleveland", "lost laptop") == [c["serial"] for c in ca.issued() if c["name"] == "cleveland"]
    rl.refresh(force=True)
    assert rl.is_revoked(serial) and rl.is_revoked("000" + serial.lower())
    from cryptography import x509

    crl = x509.load_pem_x509_crl((ca.dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    with pytest.raises(ConfigError, match="no certificate was issued to 'nobody'"):
        ca.revoke("nobody")


def test_identity_comes_from_the_verified_certificate_dict():
    cert = {"subject": ((("commonName", "va"),), (("organizationalUnitName", "site"),)), "serialNumber": "ab12"}
    ident = identity_from_peercert(cert)
    assert (ident.name, ident.role, ident.serial) == ("va", "site", "AB12")
    padded = dict(cert, serialNumber="0AB12")  # getpeercert() pads serials to whole bytes
    assert identity_from_peercert(padded).serial == "AB12"
    assert identity_from_peercert(None) is None
    assert identity_from_peercert({"subject": ((("commonName", "va"),),), "serialNumber": "1"}) is None  # no role


# -- codec ------------------------------------------------------------------------------------------
def test_streamed_safetensors_round_trip_and_load_lazily(tmp_path):
    size = write_weights(W, tmp_path / "w.st", {"k": "v"})
    assert size == (tmp_path / "w.st").stat().st_size
    d = DiskWeights(tmp_path / "w.st")
    assert list(d) == ["w", "b", "n"] and d.spec() == W.spec() and d.equal(W) and d.metadata == {"k": "v"}
    assert Weights.from_bytes((tmp_path / "w.st").read_bytes()).equal(W)  # plain safetensors
    dig = file_digests(tmp_path / "w.st", 16)
    assert len(dig.chunks) == math.ceil(size / 16) and dig.size == size


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"abc", "truncated"),
        (struct.pack("<Q", 1 << 40) + b"{}", "more than the limit"),
        (struct.pack("<Q", 100) + b"{}", "truncated"),
        (struct.pack("<Q", 4) + b"{no}", "not valid JSON"),
        (_raw({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "not supported"),
        (_raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "needs 8 bytes"),
        (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "fall outside"),
        (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1],
               "data_offsets": [0, 4]}}, b"\0" * 8), "tile the data"),
        (_raw({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12), "trailing bytes"),
        (_raw({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "non-negative"),
        (_raw({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly dtype, shape, data_offsets"),
        (_raw([1, 2], b""), "JSON object"),
    ],
)
def test_corrupt_weight_files_are_rejected_with_a_reason(tmp_path, payload, match):
    (tmp_path / "bad.st").write_bytes(payload)
    with pytest.raises(FedblendError, match=match):
        DiskWeights(tmp_path / "bad.st")


def test_disk_weights_go_through_validation_and_aggregation_like_in_memory_ones(tmp_path):
    rng = np.random.default_rng(0)
    ws = [W.map(lambda v, i=i: (v + rng.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v) for i in range(3)]
    disk = []
    for i, w in enumerate(ws):
        write_weights(w, tmp_path / f"{i}.st")
        disk.append(DiskWeights(tmp_path / f"{i}.st"))
    fedavg = make_strategy("fedavg")
    mem = fedavg.aggregate(W, [SiteUpdate(f"s{i}", 1, w, 10 + i) for i, w in enumerate(ws)])
    lazy = fedavg.aggregate(W, [SiteUpdate(f"s{i}", 1, w, 10 + i) for i, w in enumerate(disk)])
    assert lazy.equal(mem)
    nan = W.map(lambda v: np.full_like(v, np.nan) if v.dtype.kind == "f" else v)
    write_weights(nan, tmp_path / "nan.st")
    v = UpdateValidator(max_update_norm=100)
    assert "NaN or Inf" in v.check(SiteUpdate("s", 1, DiskWeights(tmp_path / "nan.st"), 5), W, 1)
    assert v.check(SiteUpdate("s", 1, disk[0], 5), W, 1) is None


# -- [deploy] ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, match",
    [
        ({"quorum": 3, "sites": ["a", "b"]}, "quorum 3 is larger"),
        ({"deadline": 5}, "deploy.deadline: unknown key"),
        ({"sites": ["a", "a"]}, "twice"),
        ({"cycle": {"max_cycles": 2}}, "every_s or new_data_sites"),
        ({"heartbeat_s": -1}, "deploy.heartbeat_s"),
        ({"sites": ["admin"]}, "reserved"),
    ],
)
def test_deploy_table_errors_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_deploy(raw, source="job.toml")


# -- the pool's fault rules, driven in-process ---------------------------------------------------
def _pool(tmp_path, **deploy):
    spec = parse_deploy({"sites": ["a", "b"], "heartbeat_s": 5, "missed_heartbeats": 2, "deadline_s": 30,
                         "chunk_mb": 0.0001, **deploy})
    pool = DeploymentPool(spec, spool_dir=tmp_path / "spool", job_toml="name = 'x'")
    for s in ("a", "b"):
        pool.register(s, Registration(data_version="v1", num_rows=10, schema=SCHEMA))
    return pool


def _send(pool, site, task_id, rnd, weights, n=10, **manifest):
    path = pool._spool.root / f"out-{site}-{task_id}.st"
    write_weights(weights, path)
    dig = file_digests(path, pool.spec.chunk_bytes)
    man = UploadManifest(round=rnd, size=dig.size, sha256=dig.sha256, chunks=list(dig.chunks), num_examples=n, **manifest)
    ticket = pool.begin_upload(site, task_id, man)
    data = path.read_bytes()
    for i in range(len(dig.chunks)):
        if i not in ticket.received:
            pool.put_chunk(site, ticket.upload_id, i, data[i * dig.chunk_size:(i + 1) * dig.chunk_size])
    return pool.commit_upload(site, ticket.upload_id)


def _train_in_thread(pool, rnd=1, sites=("a", "b")):
    out: dict = {}

    def go():
        try:
            out["results"] = pool.train(RoundPlan(rnd, tuple(sites), {}, 0), W)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _work(pool, site, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pool.heartbeat(site, Heartbeat())
        item = pool.next_work(site)
        if item is not None:
            return item
        pool.wait_for(lambda: False, 0.02)
    raise AssertionError(f"no work for {site}")


def test_round_closes_when_all_answered_and_a_duplicate_counts_once(tmp_path):
    pool = _pool(tmp_path)
    t, out = _train_in_thread(pool)
    ia, ib = _work(pool, "a"), _work(pool, "b")
    assert ia.kind == "train" and ia.round == 1 and ia.model.size > 0
    assert _send(pool, "a", ia.task_id, 1, W).status == "accepted"
    assert _send(pool, "a", ia.task_id, 1, W).status == "duplicate"  # the same update again
    with pytest.raises(WireError, match="different second answer") as e:
        _send(pool, "a", ia.task_id, 1, W * 2.0)
    assert e.value.code == "conflict"
    with pytest.raises(WireError, match="given to another site"):
        _send(pool, "b", ia.task_id, 1, W)
    with pytest.raises(WireError, match="round 7 but task"):
        _send(pool, "b", ib.task_id, 7, W)
    _send(pool, "b", ib.task_id, 1, W)
    t.join(10)
    res = out["results"]
    assert [r.site_id for r in res] == ["a", "b"] and all(isinstance(r, SiteUpdate) for r in res)
    assert isinstance(res[0].weights, DiskWeights) and res[0].weights.equal(W)
    with pytest.raises(WireError, match="unknown") as e:  # next round: the old task is stale
        t2, _ = _train_in_thread(pool, rnd=2)
        _work(pool, "a")
        _send(pool, "a", ia.task_id, 1, W)
    assert e.value.code == "stale"
    pool.close()
    t2.join(10)


def test_deadline_makes_a_late_update_late_and_quorum_holds(tmp_path):
    pool = _pool(tmp_path, deadline_s=0.5, quorum=1)
    t, out = _train_in_thread(pool)
    ia, ib = _work(pool, "a"), _work(pool, "b")
    _send(pool, "a", ia.task_id, 1, W)
    t.join(10)
    res = out["results"]
    assert isinstance(res[0], SiteUpdate) and res[1].kind == "timeout" and "deadline of 0.5s" in res[1].reason
    with pytest.raises(WireError, match="closed at its deadline") as e:
        _send(pool, "b", ib.task_id, 1, W)
    assert e.value.code == "late"
    pool.close()


def test_too_few_updates_by_the_deadline_is_a_quorum_error(tmp_path):
    pool = _pool(tmp_path, deadline_s=0.3, quorum=2)
    t, out = _train_in_thread(pool)
    t.join(10)
    assert isinstance(out["error"], QuorumError) and "quorum is 2" in str(out["error"])
    pool.close()


def test_a_silent_site_goes_offline_and_the_round_closes_without_it(tmp_path):
    pool = _pool(tmp_path, quorum=1, heartbeat_s=0.2)
    t, out = _train_in_thread(pool)
    ia = _work(pool, "a")
    _send(pool, "a", ia.task_id, 1, W)
    t0 = time.monotonic()
    while t.is_alive() and time.monotonic() - t0 < 10:  # "b" never beats again
        pool.heartbeat("a", Heartbeat())
        t.join(0.05)
    res = out["results"]
    assert res[1].kind == "offline" and "no heartbeat" in res[1].reason
    assert pool.site_ids() == ["a"]
    pool.heartbeat("b", Heartbeat())  # back
    assert pool.site_ids() == ["a", "b"]
    pool.close()


def test_registration_checks_names_and_schemas(tmp_path):
    pool = _pool(tmp_path)
    with pytest.raises(WireError, match="can only speak for itself"):
        pool.register("a", Registration(site_id="b", data_version="v", num_rows=1, schema=SCHEMA))
    with pytest.raises(WireError, match="another shape"):
        pool.register("b", Registration(data_version="v", num_rows=1, schema=Schema(input_shape=[4], num_classes=2)))
    with pytest.raises(WireError, match="not part of this job"):
        pool.register("z", Registration(data_version="v", num_rows=1, schema=SCHEMA))
    with pytest.raises(WireError) as e:
        pool.next_work("z")
    assert e.value.code == "not_registered"
    pool.close()


def test_evaluation_results_are_checked(tmp_path):
    pool = _pool(tmp_path)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", pool.evaluate(W, ["a", "b"], "test")))
    t.start()
    ia, ib = _work(pool, "a"), _work(pool, "b")
    assert ia.kind == "evaluate" and ia.split == "test"
    with pytest.raises(WireError, match="cannot exceed"):
        pool.submit_eval("a", ia.task_id, EvalResult(split="test", num_examples=3, loss_sum=1.0, correct=4))
    with pytest.raises(WireError, match="asked for split 'test'"):
        pool.submit_eval("a", ia.task_id, EvalResult(split="val", num_examples=3, loss_sum=1.0, correct=1))
    pool.submit_eval("a", ia.task_id, EvalResult(split="test", num_examples=4, loss_sum=2.0, correct=3))
    assert pool.submit_eval("a", ia.task_id, EvalResult(split="test", num_examples=4, loss_sum=2.0, correct=3)).status == "duplicate"
    pool.fail_task("b", ib.task_id, "disk full")
    t.join(10)
    a, b = out["r"]
    assert a.accuracy == 0.75 and b.kind == "error" and "disk full" in b.reason
    pool.close()


def test_uploads_over_the_limit_or_with_bad_chunks_are_refused(tmp_path):
    pool = _pool(tmp_path, max_update_mb=0.0002)  # ~200 bytes
    t, out = _train_in_thread(pool, sites=("a",))
    ia = _work(pool, "a")
    big = Weights({"w": np.zeros(1000, np.float32)})
    with pytest.raises(WireError, match="exceeds max_update_mb") as e:
        _send(pool, "a", ia.task_id, 1, big)
    assert e.value.code == "too_large"
    path = tmp_path / "u.st"
    write_weights(Weights({"w": np.zeros(3, np.float32)}), path)
    dig = file_digests(path, pool.spec.chunk_bytes)
    ticket = pool.begin_upload("a", ia.task_id, UploadManifest(round=1, size=dig.size, sha256=dig.sha256, chunks=list(dig.chunks), num_examples=1))
    data = path.read_bytes()
    with pytest.raises(WireError, match="does not match the manifest"):
        pool.put_chunk("a", ticket.upload_id, 0, bytes([data[0] ^ 1]) + data[1:pool.spec.chunk_bytes])
    with pytest.raises(WireError, match="truncated or padded"):
        pool.put_chunk("a", ticket.upload_id, 0, data[:5])
    with pytest.raises(WireError, match="out of range"):
        pool.put_chunk("a", ticket.upload_id, 99, data[:5])
    with pytest.raises(WireError, match="not received yet"):
        pool.commit_upload("a", ticket.upload_id)
    pool.close()
    t.join(10)


def test_an_upload_that_is_not_a_weights_file_fails_the_task_with_the_reason(tmp_path):
    pool = _pool(tmp_path)
    t, out = _train_in_thread(pool, sites=("a",))
    ia = _work(pool, "a")
    junk = bytes(range(256)) * 2
    path = tmp_path / "junk.bin"
    path.write_bytes(junk)
    dig = file_digests(path, pool.spec.chunk_bytes)
    ticket = pool.begin_upload("a", ia.task_id, UploadManifest(round=1, size=dig.size, sha256=dig.sha256, chunks=list(dig.chunks), num_examples=1))
    for i in range(len(dig.chunks)):
        pool.put_chunk("a", ticket.upload_id, i, junk[i * dig.chunk_size:(i + 1) * dig.chunk_size])
    with pytest.raises(WireError, match="not a valid weights file") as e:
        pool.commit_upload("a", ticket.upload_id)
    assert e.value.code == "rejected"
    t.join(10)
    (res,) = out["results"] if "results" in out else (out["error"],)
    pool.close()
    assert "not a valid weights file" in str(getattr(res, "reason", res))


# -- OpenAPI ----------------------------------------------------------------------------------------
def test_every_message_is_in_the_openapi_schema(tmp_path):
    from fedblend.net.server import create_app

    pool = _pool(tmp_path)
    app = create_app(pool, revocations=RevocationList([]), admin_token_hash="0" * 64)
    schema = app.app.openapi()
    names = set(schema["components"]["schemas"])
    for m in ("Hello", "Registration", "Registered", "Heartbeat", "HeartbeatReply", "WorkItem", "ModelRef", "UploadManifest",
              "UploadTicket", "ChunkAck", "EvalResult", "TaskFailure", "Receipt", "AdminStatus", "AdminAction", "Schema"):
        assert m in names, m
    paths = set(schema["paths"])
    assert {"/v1/register", "/v1/heartbeat", "/v1/work", "/v1/tasks/{task_id}/upload", "/v1/uploads/{upload_id}/commit"} <= paths
    pool.close()


# -- continuous federation: the schedule trigger -------------------------------------------------
class _FakeFed:
    def __init__(self, total, store):
        self.total, self.store = total, store
        self.round = 0
        self.history: list = []
        self.weights = self.initial_weights = W

    def resume(self):
        self.round = self.store.last
        return self.round

    def run(self, until=None):
        self.round = until
        self.store.last = until
        return None


class _FakeStore:
    def __init__(self):
        self.last, self.metas, self.events = 0, {}, []

    def meta(self):
        return dict(self.metas)

    def set_meta(self, **kw):
        self.metas.update(kw)

    def set_status(self, *a, **kw):
        pass

    def record_event(self, kind, **kw):
        self.events.append((kind, kw))

    def last_round(self):
        return self.last


def test_cycles_run_on_a_schedule_from_the_last_global_model(tmp_path):
    from fedblend.net.coordinator import Coordinator

    pool = _pool(tmp_path, cycle={"every_s": 0.1, "max_cycles": 3})
    store = _FakeStore()
    feds = []

    def make(total):
        feds.append(_FakeFed(total, store))
        return feds[-1]

    c = Coordinator(pool, store, make, spec=pool.spec, rounds=2)
    c.start()
    assert c.finished.wait(20)
    assert c.error is None
    assert [f.total for f in feds] == [2, 4, 6] and store.last == 6
    assert [kw["reason"] for k, kw in store.events if k == "cycle_trigger"] == ["schedule", "schedule"]
    assert store.metas["cycle"] == 3
    assert isinstance(feds[-1].weights, DiskWeights) and feds[-1].weights.equal(W)  # kept on disk between rounds
    pool.close()


def test_a_round_that_keeps_failing_is_retried_with_growing_pauses(tmp_path, monkeypatch):
    """All sites online but no usable update (e.g. every one rejected): no retry spin."""
    from fedblend.errors import QuorumError
    from fedblend.net.coordinator import Coordinator

    monkeypatch.setattr(Coordinator, "RETRY_BASE_S", 0.02)
    monkeypatch.setattr(Coordinator, "RETRY_MAX_S", 0.05)
    pool = _pool(tmp_path)
    store = _FakeStore()
    calls: list[int] = []

    class Flaky(_FakeFed):
        def run(self, until=None):
            calls.append(until)
            if len(calls) in (2, 3, 4, 5):  # round 2 fails four times in a row, then goes through
                raise QuorumError(f"round {until}: 0 usable update(s) by the deadline, quorum is 2")
            return super().run(until)

    c = Coordinator(pool, store, lambda total: Flaky(total, store), spec=pool.spec, rounds=3)
    c.start()
    assert c.finished.wait(20)
    assert c.error is None and store.last == 3
    assert calls == [1, 2, 2, 2, 2, 2, 3]
    retries = [kw for k, kw in store.events if k == "round_retry"]
    assert [r["attempt"] for r in retries] == [1, 2, 3, 4]
    assert [r["delay_s"] for r in retries] == [0.02, 0.04, 0.05, 0.05]  # doubling, capped
    assert all(r["round"] == 2 and "0 usable update(s)" in r["reason"] for r in retries)
    pool.close()


def test_a_heartbeat_after_being_told_done_does_not_bring_a_site_back(tmp_path):
    """A site's heartbeat thread can send one last beat after its work loop was told the job is done."""
    from fedblend.net.wire import Heartbeat

    pool = _pool(tmp_path)
    pool.set_mode("done", "the job is finished after round 3")
    item = pool.next_work("a")
    assert item is not None and item.kind == "done"
    assert "a" not in pool.site_ids() and pool._sessions["a"].state == "offline"
    reply = pool.heartbeat("a", Heartbeat(state="idle", progress=0.0))
    assert reply.registered and "a" not in pool.site_ids() and pool._sessions["a"].state == "offline"
    # a site not yet told keeps its normal heartbeat handling
    pool.heartbeat("b", Heartbeat(state="idle", progress=0.0))
    assert "b" in pool.site_ids()
    pool.close()
