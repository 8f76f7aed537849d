"""The OpenAPI document is the contract: ``st run --checks all`` (schemathesis, every check: status codes
and headers documented, responses matching their schemas, schema-valid requests accepted, invalid ones
refused, ``Allow`` on 405) finds nothing against a live server, with an API key and with the admin token.

The server is this module's own (embedded store): the admin pass creates and revokes accounts at random.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.support import REPO, SERVER_ADMIN_TOKEN

pytestmark = pytest.mark.live

CONFIG = {
    "max_images_per_request": 4,
    "max_body_bytes": 1024 * 1024,
    "max_image_bytes": 256 * 1024,
    "max_image_pixels": 512 * 512,
    "tiers": {"free": {"rate_limit": {"window_s": 60, "requests": 100000, "images": 1000000}},
              "unlimited": {"outputs": ["representation", "projection"]}},
}


def _st(url: str, token: str, paths: list[str], tmp_path) -> subprocess.CompletedProcess:
    st = os.path.join(os.path.dirname(sys.executable), "st")
    if not os.path.exists(st):
        pytest.skip("schemathesis CLI (st) not installed")
    cmd = [st, "--config-file", str(REPO / "schemathesis.toml"), "run", url + "/openapi.json", "--checks", "all",
           "--max-examples", "25", "--seed", "1", "--no-color", "--request-timeout", "20",
           "-H", f"Authorization: Bearer {token}", *paths]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=100, cwd=tmp_path)


def _assert_clean(out: subprocess.CompletedProcess, operations: int) -> None:
    log = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0 and "No issues found" in out.stdout, log
    assert re.search(rf"Selected: {operations}/.*\n\s*Tested: {operations}\b", out.stdout), log
    assert "Authentication failed" not in out.stdout, log


@pytest.fixture(scope="module")
def srv(server_factory):
    return server_factory(None, "contract-" + secrets.token_hex(3), config=CONFIG)


@pytest.mark.timeout(240)
def test_every_schemathesis_check_passes(srv, tmp_path):
    r = httpx.post(srv.url + "/v1/admin/accounts", json={"name": "contract", "tier": "unlimited"},
                   headers={"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}, timeout=30)
    assert r.status_code == 201, r.text
    # the API key first: the admin pass may revoke any account, this one included
    # embeddings, models, healthz, readyz, metrics; then the six admin operations
    _assert_clean(_st(srv.url, r.json()["api_key"], ["--exclude-path-regex", "^/v1/admin"], tmp_path), 5)
    _assert_clean(_st(srv.url, SERVER_ADMIN_TOKEN, ["--include-path-regex", "^/v1/admin"], tmp_path), 6)


def test_openapi_states_what_the_server_enforces(srv):
    doc = httpx.get(srv.url + "/openapi.json", timeout=30).json()
    req = doc["components"]["schemas"]["EmbeddingRequest"]
    items = req["properties"]["input"]["items"]
    assert req["properties"]["input"]["maxItems"] == 4 and items["minLength"] == 1 and items["pattern"]
    assert doc["components"]["schemas"]["AccountCreate"]["properties"]["tier"]["enum"] == ["free", "unlimited"]
    emb = doc["paths"]["/v1/embeddings"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "413", "415", "422", "428", "429", "503"} <= set(emb)
    assert "x-ratelimit-remaining-requests" in emb["200"]["headers"] and "Retry-After" in emb["429"]["headers"]
    assert "400" in doc["paths"]["/v1/admin/accounts"]["post"]["responses"]
    # every answer names its request id, and 405 lists every method of the path
    r = httpx.delete(srv.url + "/v1/admin/accounts", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST" and r.headers["x-request-id"]
    bad = httpx.post(srv.url + "/v1/embeddings", json={"input": [""]}, timeout=30)
    assert bad.status_code == 401  # no key; with one, "" is refused as the schema says (422)
