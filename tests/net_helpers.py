"""Helpers for deployment tests: a CA, job files, server and site processes on 127.0.0.1.

Servers listen on a port the OS picks (``--port 0``) and report it in a ready file; every wait
polls for a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import tomli_w

from fedblend.net.ca import CertificateAuthority
from fedblend.net.identity import SiteBundle, load_bundle

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FEDBLEND_DATA_DIR", REPO.parent / "shared" / "data"))
HEART = ["cleveland", "hungary", "switzerland", "va"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["FEDBLEND_DATA_DIR"] = str(DATA_DIR)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def wait_until(pred: Callable[[], Any], timeout: float, what: str, procs: list[Proc] | None = None) -> Any:
    """Poll ``pred`` until it returns something truthy; fail naming ``what`` (and dead processes)."""
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        for p in procs or []:
            if p.popen.poll() is not None and not p.may_exit:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > end:
            logs = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in procs or [])
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.05)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    may_exit: bool = True

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:.0f}s:\n{self.tail()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(name: str, args: list[str], log: Path, may_exit: bool = True) -> Proc:
    fh = open(log, "wb")
    p = subprocess.Popen([sys.executable, "-m", "fedblend", *args], stdout=fh, stderr=subprocess.STDOUT, env=env(),
                         cwd=str(log.parent))
    fh.close()
    return Proc(name, p, log, may_exit)


@dataclass
class Fleet:
    """A CA with bundles, and the processes a test started (stopped at teardown)."""

    root: Path
    ca: CertificateAuthority
    procs: list[Proc] = field(default_factory=list)
    url: str = ""
    server: Proc | None = None

    def bundle(self, name: str) -> Path:
        path = self.ca.dir / "sites" / f"{name}.bundle"
        if not path.exists():
            self.ca.issue_site(name)
        return path

    def load(self, name: str) -> SiteBundle:
        return load_bundle(self.bundle(name))

    def start_server(self, job: Path, state: Path | None = None, *, port: int = 0, extra: list[str] = (),
                     timeout: float = 60, dashboard: bool = False) -> Proc:
        state = state or self.root / "state"
        ready = self.root / f"ready-{len(self.procs)}.json"
        ready.unlink(missing_ok=True)
        p = spawn("server", ["-v", "server", "--job", str(job), "--state", str(state), "--ca", str(self.ca.dir), "--port", str(port),
                             "--ready-file", str(ready), "--quiet", "--dashboard" if dashboard else "--no-dashboard", *extra],
                  self.root / f"server-{len(self.procs)}.log", may_exit=False)
        self.procs.append(p)
        wait_until(ready.exists, timeout, "the server to listen", [p])
        info = json.loads(ready.read_text())
        self.url = f"https://127.0.0.1:{info['port']}"
        self.server = p
        return p

    def start_site(self, name: str, *, extra: list[str] = (), data: Path | None = DATA_DIR, bundle: Path | None = None) -> Proc:
        args = ["-v", "site", "--bundle", str(bundle or self.bundle(name)), "--server", self.url, "--give-up-s", "120", *extra]
        if data is not None:
            args += ["--data", str(data)]
        p = spawn(f"site {name}", args, self.root / f"site-{name}-{len(self.procs)}.log")
        self.procs.append(p)
        return p

    def client(self, name: str, **kw: Any) -> httpx.Client:
        b = self.load(name) if name != "admin" else load_bundle(self.ca.dir / "admin.bundle")
        return httpx.Client(base_url=self.url, verify=b.client_ssl_context(), timeout=30, **kw)

    def store(self, state: Path | None = None) -> Any:
        from fedblend.store import SqlRunStore

        return SqlRunStore(state or self.root / "state", create=False)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def make_fleet(root: Path) -> Fleet:
    ca = CertificateAuthority.init(root / "ca", server_url="https://127.0.0.1:1")
    return Fleet(root, ca)


def heart_job(root: Path, *, name: str = "net-test", rounds: int = 3, deploy: dict[str, Any] | None = None,
              **sections: Any) -> Path:
    """A small heart-disease job file with a [deploy] table tuned for tests (fast heartbeats)."""
    raw: dict[str, Any] = {
        "name": name, "seed": 3, "rounds": rounds, "output_dir": str(root / "runs"),
        "data": {"dataset": "heart_disease"},
        "model": {"name": "logreg"},
        "train": {"lr": 0.01, "batch_size": 8, "local_steps": 10},
        "strategy": {"name": "fedavg"},
        "deploy": {"sites": HEART, "heartbeat_s": 0.5, "missed_heartbeats": 4, "deadline_s": 60, "linger_s": 5,
                   "long_poll_s": 5, **(deploy or {})},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    path = root / f"{name}.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def rounds_committed(fleet: Fleet, state: Path | None = None) -> int:
    path = (state or fleet.root / "state") / "run.db"
    if not path.exists():
        return 0
    st = fleet.store(state)
    try:
        return st.last_round()
    finally:
        st.close()


def wait_all_done(server: Proc, sites: list[Proc], *, timeout: float, expect: str | None = None) -> None:
    """Every site agent exits 0 within ``timeout`` (its log saying ``expect``), then the server does."""
    for p in sites:
        assert p.wait(timeout) == 0, p.tail()
        if expect is not None:
            assert expect in p.tail(), p.tail()
    assert server.wait(60) == 0, server.tail()
