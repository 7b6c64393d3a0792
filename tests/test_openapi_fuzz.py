"""Schemathesis generates requests from the router's own OpenAPI document:
whatever it sends, the router never answers with a 5xx."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from inferswarm.router.app import create_app
from inferswarm.router.settings import RouterSettings

DATA_DIR = Path(tempfile.mkdtemp(prefix="inferswarm-fuzz-"))
atexit.register(shutil.rmtree, DATA_DIR, ignore_errors=True)
app = create_app(RouterSettings(auth=False, open_join=True, data_dir=DATA_DIR))
# The dashboard's feed streams until the router drains: no single answer to check.
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/v1/network/stream")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
    if response.status_code >= 400:
        assert "error" in response.json()
