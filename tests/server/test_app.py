"""The app as a whole: models, health, readiness, OpenAPI and docs, no 500 on unknown routes
(in process); schemathesis with --checks all runs in tests/server/test_contract_schemathesis.py."""

from __future__ import annotations

import json

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
