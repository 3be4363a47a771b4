"""Identity at the trust boundary, against a real server process on 127.0.0.1: mutual TLS, the
site name from the certificate only, revocation, the admin credential, and site agents whose TLS
handshake fails exiting with a clear message instead of retrying forever."""

from __future__ import annotations

import datetime as dt
import json
import ssl

import httpx
import pytest

from fedblend.net.ca import CertificateAuthority
from fedblend.net.identity import _load_chain, load_bundle
from net_helpers import heart_job, make_fleet, wait_until

REFUSED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError, httpx.WriteError)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    f = make_fleet(root)
    f.start_server(heart_job(root), dashboard=True)  # waits for its 4 sites forever: none joins in this module
    yield f
    f.close()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    return CertificateAuthority.init(tmp_path_factory.mktemp("other") / "ca", server_url="https://127.0.0.1:1")


def _alive(fleet):
    with fleet.client("cleveland") as c:
        assert c.get("/v1/ping").json()["you"] == "cleveland"


def test_the_site_name_comes_from_the_certificate(fleet):
    with fleet.client("cleveland") as c:
        r = c.get("/v1/ping")
        assert r.status_code == 200 and r.json()["you"] == "cleveland"
        assert c.get("/v1/hello").json()["site"] == "cleveland"


def test_a_plaintext_client_gets_nothing(fleet):
    with pytest.raises(REFUSED):
        httpx.get(fleet.url.replace("https://", "http://") + "/v1/ping", timeout=10)
    _alive(fleet)


def test_a_client_without_a_certificate_is_refused(fleet):
    ctx = ssl.create_default_context(cadata=fleet.load("cleveland").ca_cert)
    with pytest.raises(REFUSED):
        httpx.get(fleet.url + "/v1/ping", verify=ctx, timeout=10)
    _alive(fleet)


def test_a_certificate_from_another_ca_is_refused(fleet, other_ca):
    impostor = load_bundle(other_ca.issue_site("cleveland"))
    ctx = ssl.create_default_context(cadata=fleet.load("cleveland").ca_cert)  # trusts the real server...
    _load_chain(ctx, impostor.cert, impostor.key)  # ...but presents a certificate the server's CA never signed
    with pytest.raises(REFUSED):
        httpx.get(fleet.url + "/v1/ping", verify=ctx, timeout=10)
    _alive(fleet)


def _expired(fleet):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    return fleet.ca.issue_site("hungary", days=1, not_before=past, out=fleet.root / "expired.bundle")


def test_an_expired_certificate_is_refused(fleet):
    with pytest.raises(REFUSED):
        httpx.get(fleet.url + "/v1/ping", verify=load_bundle(_expired(fleet)).client_ssl_context(), timeout=10)
    _alive(fleet)


def test_a_site_whose_handshake_fails_exits_with_a_clear_message(fleet, other_ca):
    # our certificate is refused (expired): exit 3, "certificate rejected", no endless retry
    p = fleet.start_site("hungary", bundle=_expired(fleet), data=None)
    assert p.wait(60) == 3, p.tail()
    assert "certificate rejected" in p.tail() and "expired" in p.tail()
    # the server is not signed by the bundle's CA: exit 3 as well
    p = fleet.start_site("cleveland", bundle=other_ca.issue_site("cleveland", out=fleet.root / "other.bundle"), data=None)
    assert p.wait(60) == 3, p.tail()
    assert "does not trust" in p.tail()
    # a bundle whose certificate comes from another CA while it trusts ours: probed, then exit 3
    hybrid = json.loads((fleet.root / "other.bundle").read_text())
    hybrid["ca_cert"] = fleet.load("cleveland").ca_cert
    (fleet.root / "hybrid.bundle").write_text(json.dumps(hybrid))
    p = fleet.start_site("cleveland", bundle=fleet.root / "hybrid.bundle", data=None)
    assert p.wait(60) == 3, p.tail()
    assert "certificate rejected" in p.tail()


def test_a_revoked_site_is_refused_while_the_server_runs(fleet):
    b = fleet.load("switzerland")
    with httpx.Client(base_url=fleet.url, verify=b.client_ssl_context(), timeout=10) as c:
        assert c.get("/v1/ping").status_code == 200
        fleet.ca.revoke("switzerland", "compromised")
        r = wait_until(lambda: (x := c.get("/v1/ping")).status_code == 403 and x, 30, "the revocation to take effect")
        assert r.json()["error"] == "certificate_revoked" and "revoked" in r.json()["detail"]
    p = fleet.start_site("switzerland", data=None)
    assert p.wait(60) == 3, p.tail()
    assert "certificate rejected" in p.tail() and "revoked" in p.tail()
    st = fleet.store()
    assert any(e["kind"] == "request_rejected" and e["site_id"] == "switzerland" and e["payload"]["code"] == "certificate_revoked"
               for e in st.events())
    st.close()


def test_a_site_cannot_speak_for_another(fleet):
    body = {"data_version": "x", "num_rows": 1, "schema": {"input_shape": [13], "num_classes": 2}, "site_id": "va"}
    with fleet.client("cleveland") as c:
        r = c.post("/v1/register", json=body)
    assert r.status_code == 403 and "can only speak for itself" in r.json()["detail"]
    # a bundle edited to claim another name is refused by the agent before it connects
    raw = json.loads(fleet.bundle("cleveland").read_text())
    raw["site"] = "va"
    (fleet.root / "liar.bundle").write_text(json.dumps(raw))
    p = fleet.start_site("va", bundle=fleet.root / "liar.bundle", data=None)
    assert p.wait(60) == 2, p.tail()
    assert "certificate is for site 'cleveland'" in p.tail()


def test_admin_actions_need_the_admin_certificate_and_token(fleet):
    admin = load_bundle(fleet.ca.dir / "admin.bundle")
    with fleet.client("admin") as c:
        assert c.get("/admin/status").status_code == 401
        assert c.get("/admin/status", headers={"authorization": "Bearer nope"}).status_code == 403
        st = c.get("/admin/status", headers={"authorization": f"Bearer {admin.admin_token}"})
        assert st.status_code == 200 and st.json()["status"] == "waiting"
        assert c.get("/v1/hello").status_code == 403  # the admin certificate cannot act as a site
    with fleet.client("va") as c:
        r = c.get("/admin/status", headers={"authorization": f"Bearer {admin.admin_token}"})
        assert r.status_code == 403 and "admin certificate" in r.json()["detail"]
    with fleet.client("admin", headers={"authorization": f"Bearer {admin.admin_token}"}) as c:
        r = c.post("/admin/actions", json={"action": "revoke", "site": "va", "reason": "test"})
        assert r.status_code == 200 and r.json()["serials"]
    with fleet.client("va") as c:
        assert wait_until(lambda: c.get("/v1/ping").status_code == 403, 30, "va to be refused")


def test_the_dashboard_is_served_to_the_admin_certificate_only(fleet):
    with fleet.client("admin") as c:
        r = c.get("/dashboard/")
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    with fleet.client("cleveland") as c:
        r = c.get("/dashboard/")
        assert r.status_code == 403 and "admin certificate" in r.json()["detail"]
