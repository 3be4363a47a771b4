"""Bad input at the trust boundary, over the real HTTPS API: two honest site processes and one
hostile site driven by this test. Every bad message is refused with a clear reason, recorded
against the site that sent it, and the run goes on with the others."""

from __future__ import annotations

import hashlib
import threading

import httpx
import numpy as np
import pytest

from fedblend.data.heart import HEART_FEATURES
from fedblend.net.codec import file_digests, write_weights
from fedblend.weights import Weights
from net_helpers import heart_job, make_fleet, wait_until

JSON = {"content-type": "application/json"}
REG = {"data_version": "evil-1", "num_rows": 100, "schema": {"input_shape": [13], "num_classes": 2, "kind": "tabular",
                                                                       "feature_names": list(HEART_FEATURES)}}


class Hostile:
    """A site that speaks the protocol by hand (certificate 'va'), with its own heartbeat."""

    def __init__(self, fleet, name="va"):
        self.fleet, self.name = fleet, name
        self.c = fleet.client(name)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._beats, daemon=True)
        self.rounds_seen: list[int] = []

    def _beats(self):
        with self.fleet.client(self.name) as c:
            while not self._stop.wait(0.2):
                try:
                    c.post("/v1/heartbeat", json={})
                except httpx.HTTPError:
                    pass

    def start_beating(self):
        self._beat.start()

    def close(self):
        self._stop.set()
        self.c.close()

    def next_item(self, answer_evals=True):
        while True:
            item = self.c.get("/v1/work", params={"wait": 5}, timeout=60).json()
            if item["kind"] == "evaluate" and answer_evals:
                r = self.c.post(f"/v1/tasks/{item['task_id']}/eval",
                                json={"split": item["split"], "num_examples": 5, "loss_sum": 3.0, "correct": 2})
                assert r.status_code == 200, r.text
                continue
            if item["kind"] != "wait":
                return item

    def download(self, ref) -> Weights:
        data = b"".join(self.c.get(f"/v1/models/{ref['model_id']}/chunks/{i}").content for i in range(len(ref["chunks"])))
        assert hashlib.sha256(data).hexdigest() == ref["sha256"]
        return Weights.from_bytes(data)

    def manifest(self, item, payload: bytes, n=10, **kw):
        path = self.fleet.root / "hostile.bin"
        path.write_bytes(payload)
        dig = file_digests(path, self.chunk)
        return {"round": item["round"], "size": dig.size, "sha256": dig.sha256, "chunks": list(dig.chunks), "num_examples": n, **kw}

    def send(self, item, payload: bytes, n=10, **kw):
        """Upload ``payload`` as this task's update; returns the commit response."""
        t = self.c.post(f"/v1/tasks/{item['task_id']}/upload", json=self.manifest(item, payload, n, **kw))
        assert t.status_code == 200, t.text
        ticket = t.json()
        for i in range(-(-len(payload) // self.chunk)):
            if i not in ticket["received"]:
                r = self.c.put(f"/v1/uploads/{ticket['upload_id']}/chunks/{i}", content=payload[i * self.chunk:(i + 1) * self.chunk])
                assert r.status_code == 200, r.text
        return self.c.post(f"/v1/uploads/{ticket['upload_id']}/commit")


def _bytes(w: Weights, tmp) -> bytes:
    write_weights(w, tmp / "w.st")
    return (tmp / "w.st").read_bytes()


@pytest.fixture
def fleet(tmp_path):
    f = make_fleet(tmp_path)
    yield f
    f.close()


def test_bad_input_is_refused_recorded_and_the_run_goes_on(fleet, tmp_path):
    chunk_mb = 0.0001  # ~100-byte chunks: even the small heart model travels in several chunks
    job = heart_job(tmp_path, rounds=8, deploy={"sites": ["cleveland", "hungary", "va"], "quorum": 2, "chunk_mb": chunk_mb,
                                               "max_update_mb": 0.01})
    server = fleet.start_server(job)
    honest = [fleet.start_site(s) for s in ("cleveland", "hungary")]
    h = Hostile(fleet)
    h.chunk = int(chunk_mb * 1024 * 1024)

    def registered():
        st = fleet.store() if (tmp_path / "state" / "run.db").exists() else None
        if st is None:
            return False
        try:
            return {"cleveland", "hungary"} <= {s["site_id"] for s in st.sites()}
        finally:
            st.close()

    wait_until(registered, 120, "the honest sites to register", [server])
    c = h.c
    # -- malformed messages before registering ---------------------------------------------------
    r = c.post("/v1/register", content=b'{"data_version": ', headers=JSON)
    assert r.status_code == 422 and "malformed request" in r.json()["detail"]
    r = c.post("/v1/register", json={**REG, "favourite_colour": "red"})
    assert r.status_code == 422 and "favourite_colour" in r.json()["detail"]
    r = c.post("/v1/gossip", json={"hello": 1})
    assert r.status_code == 404 and r.json()["detail"] == "unknown message type: POST /v1/gossip"
    r = c.post("/v1/heartbeat", json={"state": "dancing"})
    assert r.status_code == 422
    try:
        r = c.post("/v1/register", content=b" " * (5 * 1024 * 1024), headers=JSON)
        assert r.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server may close the connection before the whole body is sent; it is recorded either way
    r = c.post("/v1/register", json={**REG, "schema": {"input_shape": [12], "num_classes": 2}})
    assert r.status_code == 409 and "another shape" in r.json()["detail"]
    r = c.get("/v1/work")
    assert r.status_code == 409 and r.json()["error"] == "not_registered"
    assert c.post("/v1/register", json=REG).status_code == 200
    h.start_beating()

    tmp = tmp_path
    prev = None
    for expected_round in range(1, 9):
        item = h.next_item()
        assert item["kind"] == "train" and item["round"] == expected_round, item
        g = h.download(item["model"])
        rnd = item["round"]
        if rnd == 1:
            # manifest problems
            big = h.manifest(item, b"\0" * 64)
            r = c.post(f"/v1/tasks/{item['task_id']}/upload", json={**big, "size": 10 * 1024 * 1024, "chunks": ["0" * 64] * 100})
            assert r.status_code == 413 and "exceeds max_update_mb" in r.json()["detail"]
            r = c.post(f"/v1/tasks/{item['task_id']}/upload", json={**big, "chunks": ["xyz"]})
            assert r.status_code == 422 and "64 lower-case hex" in r.json()["detail"]
            # chunk problems, then a payload that is not a weights file at all
            junk = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))
            t = c.post(f"/v1/tasks/{item['task_id']}/upload", json=h.manifest(item, junk)).json()
            up = f"/v1/uploads/{t['upload_id']}"
            bad = bytes([junk[0] ^ 0xFF]) + junk[1:h.chunk]
            r = c.put(f"{up}/chunks/0", content=bad)
            assert r.status_code == 422 and "corrupted in transit" in r.json()["detail"]
            r = c.put(f"{up}/chunks/0", content=junk[:10])
            assert r.status_code == 422 and "truncated" in r.json()["detail"]
            r = c.put(f"{up}/chunks/99", content=junk[:10])
            assert r.status_code == 422 and "out of range" in r.json()["detail"]
            r = c.put(f"{up}/chunks/0", content=b"x" * (h.chunk + 4096))
            assert r.status_code == 413
            r = c.post(f"{up}/commit")
            assert r.status_code == 422 and "not received yet" in r.json()["detail"]
            for i in range(-(-len(junk) // h.chunk)):
                assert c.put(f"{up}/chunks/{i}", content=junk[i * h.chunk:(i + 1) * h.chunk]).status_code == 200
            r = c.post(f"{up}/commit")
            assert r.status_code == 422 and "not a valid weights file" in r.json()["detail"]
        elif rnd == 2:
            nan = g.map(lambda v: np.full_like(v, np.nan))
            assert h.send(item, _bytes(nan, tmp)).status_code == 200  # well-formed on the wire; the round loop rejects it
        elif rnd == 3:
            r = c.post(f"/v1/tasks/{prev['task_id']}/upload", json=h.manifest(prev, _bytes(g, tmp)))  # replay of round 2
            assert r.status_code == 409 and r.json()["error"] == "stale"
            r = c.post(f"/v1/tasks/{item['task_id']}/upload", json=h.manifest({**item, "round": 2}, _bytes(g, tmp)))
            assert r.status_code == 409 and "stale" in r.json()["detail"]
            wrong = Weights({k: np.zeros((v.shape[0] + 1, *v.shape[1:]), v.dtype) for k, v in g.items()})
            assert h.send(item, _bytes(wrong, tmp)).status_code == 200
        elif rnd == 4:
            assert h.send(item, _bytes(g.astype(np.float64), tmp)).status_code == 200
        elif rnd == 5:
            assert h.send(item, _bytes(g.map(lambda v: v + np.float32(1e9)), tmp)).status_code == 200
        elif rnd == 6:
            assert h.send(item, _bytes(g, tmp), n=10**11).status_code == 200
        elif rnd == 7:
            assert h.send(item, _bytes(Weights({**g, "backdoor": np.ones(3, np.float32)}), tmp)).status_code == 200
        else:
            with fleet.client("cleveland") as other:  # another site cannot answer for va
                r = other.post(f"/v1/tasks/{item['task_id']}/upload", json=h.manifest(item, _bytes(g, tmp)))
                assert r.status_code == 403 and "given to another site" in r.json()["detail"]
            good = _bytes(g, tmp)
            assert h.send(item, good).json()["status"] == "accepted"
            assert h.send(item, good).json()["status"] == "duplicate"  # the same update twice counts once
            r = c.post(f"/v1/tasks/{item['task_id']}/upload", json=h.manifest(item, _bytes(g * 2.0, tmp)))
            assert r.status_code == 409 and r.json()["error"] == "conflict"
        prev = item
    assert h.next_item()["kind"] == "done"
    h.close()
    for p in honest:
        assert p.wait(120) == 0, p.tail()
    assert server.wait(60) == 0, server.tail()

    st = fleet.store()
    rounds = st.rounds()
    assert [r["round"] for r in rounds] == list(range(1, 9))
    assert all(r["participants"] == ["cleveland", "hungary"] for r in rounds[:7])
    assert rounds[7]["participants"] == ["cleveland", "hungary", "va"]
    reasons = {r["round"]: next(f["reason"] for f in r["failures"] if f["site_id"] == "va") for r in rounds[:7]}
    assert "not a valid weights file" in reasons[1]
    assert "NaN or Inf" in reasons[2]
    assert "must have shape/dtype" in reasons[3] and "(14, 13)" in reasons[3] or "(2," in reasons[3]
    assert "float64" in reasons[4]
    assert "exceeds max_update_norm" in reasons[5]
    assert "exceeds the limit" in reasons[6]
    assert "unexpected keys ['backdoor']" in reasons[7]
    events = st.events(limit=10_000)
    va_codes = {e["payload"]["code"] for e in events if e["kind"] == "request_rejected" and e["site_id"] == "va"}
    assert {"bad_request", "not_found", "too_large", "conflict", "bad_chunk", "stale"} <= va_codes, va_codes
    assert sum(e["kind"] == "update_rejected" and e["site_id"] == "va" for e in events) == 7
    assert any(e["kind"] == "request_rejected" and e["site_id"] == "cleveland" and e["payload"]["code"] == "forbidden" for e in events)
    assert {s["site_id"]: s["rejected"] for s in st.sites()}["va"] == 7
    assert st.meta()["status"] == "finished"
    st.close()
