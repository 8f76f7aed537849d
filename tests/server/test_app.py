"""The app as a whole: models, health, readiness, OpenAPI and docs, no 500 on unknown routes
(in process), and schemathesis fuzzing a live server for 5xx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import assert_error as _err


def test_models_health_docs(api):
    c = api.client(None)
    m = c.get("/v1/models").json()["data"][0]
    assert m["architecture"] == "resnet18" and m["input_size"] == 32 and m["representation_dim"] == 32
    assert m["projection_dim"] == 16 and m["max_images_per_request"] == 8
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"status": "ready", "model": True, "store": True}
    spec = c.get("/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"] and "EmbeddingRequest" in json.dumps(spec)
    assert c.get("/docs").status_code == 200


def test_no_500_on_wrong_methods_and_paths(api):
    c = api.client(None)
    _err(c.get("/v1/embeddings"), 405, "method_not_allowed")
    _err(c.get("/v2/nothing"), 404, "not_found")


@pytest.mark.live
@pytest.mark.timeout(150)
def test_schemathesis_finds_no_5xx(victim, tmp_path):
    st = shutil.which("st") or os.path.join(os.path.dirname(sys.executable), "st")
    if not os.path.exists(st):
        pytest.skip("schemathesis CLI (st) not installed")
    _, key = victim.new_account("unlimited")
    out = subprocess.run([st, "run", victim.url + "/openapi.json", "--checks", "not_a_server_error",
                          "--max-examples", "12", "--seed", "1", "--phases", "examples,fuzzing", "--no-color",
                          "-H", f"Authorization: Bearer {key}", "--request-timeout", "20",
                          "--exclude-path-regex", "^/v1/admin/accounts/\\{account_id\\}/revoke$"],
                         capture_output=True, text=True, timeout=140, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "/v1/embeddings" in out.stdout
