"""Fuzz the dashboard's JSON API from its own OpenAPI schema with schemathesis.

Every operation is called with generated (valid and invalid) parameters, as an admin, against a
real server over a hand-filled run: no 5xx, every status code and body documented, every body
valid against its response model. Without a token every operation must answer 401.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from fedblend.dashboard import DashboardAuth, create_app
from test_dashboard import ADMIN, VIEWER, fill_store, serve

HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run = tmp_path_factory.mktemp("fuzz") / "run"
    fill_store(run).close()
    app = create_app(run, auth=DashboardAuth(viewer_tokens=[VIEWER], admin_tokens=[ADMIN]))
    with serve(app) as base:
        yield base


def test_api_conforms_to_its_schema(dashboard_url: str) -> None:
    # schemathesis.pytest.from_fixture does not run under pytest 9 (it reads request.node._nodeid),
    # so each operation's hypothesis strategy is driven here directly.
    schema = schemathesis.openapi.from_url(f"{dashboard_url}/openapi.json", headers=HEADERS)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    calls = 0
    session = requests.Session()  # keep-alive: one connection for every call
    for op in operations:
        has_params = len(op.query) > 0
        for mode in schemathesis.GenerationMode:
            if mode == schemathesis.GenerationMode.NEGATIVE and not has_params:
                continue  # nothing to make invalid but the (fixed) token

            @given(case=op.as_strategy(generation_mode=mode, headers=HEADERS))
            @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                nonlocal calls
                case.call_and_validate(session=session)
                calls += 1

            check()
    session.close()
    assert calls >= len(operations)


def test_every_api_operation_needs_a_token(dashboard_url: str) -> None:
    spec = httpx.get(f"{dashboard_url}/openapi.json", headers=HEADERS, timeout=10).json()
    paths = sorted(spec["paths"])
    assert len(paths) >= 9
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in paths:
        assert httpx.get(dashboard_url + path, timeout=10).status_code == 401, path
        assert httpx.get(dashboard_url + path, headers=HEADERS, timeout=10).status_code == 200, path
