"""The API through the official ``openai`` SDK, and the conventions such clients rely on: ``usage``
token fields, ``x-ratelimit-*`` headers, ``x-request-id`` (real uvicorn, shared Redis)."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.live


def _img(seed: int) -> str:
    arr = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def sdk(victim):
    _, key = victim.new_account("free")
    with openai.OpenAI(base_url=victim.url + "/v1", api_key=key, max_retries=0, timeout=30) as client:
        yield client


def test_sdk_embeddings_float_base64_and_default(sdk):
    model = sdk.models.list().data[0].id
    imgs = [_img(0), _img(1)]
    floats = sdk.embeddings.create(model=model, input=imgs, encoding_format="float")
    assert floats.object == "list" and floats.model == model and [d.index for d in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens == 2 and floats.usage.total_tokens == 2
    ref = np.asarray([d.embedding for d in floats.data], np.float32)
    # explicit base64: the SDK hands back the little-endian float32 bytes as they came
    b64 = sdk.embeddings.create(model=model, input=imgs, encoding_format="base64")
    got = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in b64.data])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    # no encoding_format: the SDK asks for base64 itself and decodes to floats
    default = sdk.embeddings.create(model=model, input=imgs)
    np.testing.assert_allclose(np.asarray([d.embedding for d in default.data], np.float32), ref, rtol=0, atol=1e-6)


def test_sdk_errors_map_to_its_exceptions(victim, sdk):
    with openai.OpenAI(base_url=victim.url + "/v1", api_key="heist_not-a-key", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.embeddings.create(model="any", input=[_img(0)])
    assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="someone-else", input=[_img(0)])
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.embeddings.create(model=sdk.models.list().data[0].id, input=["not*base64!"])


def test_sdk_raw_response_carries_request_id_and_rate_limit_headers(victim, sdk):
    model = sdk.models.list().data[0].id
    raw = sdk.embeddings.with_raw_response.create(model=model, input=[_img(2)] * 3, extra_headers={"x-request-id": "sdk-trace-1"})
    assert raw.headers["x-request-id"] == "sdk-trace-1"
    assert raw.headers["x-ratelimit-limit-requests"] == "1000" and raw.headers["x-ratelimit-limit-images"] == "10000"
    assert int(raw.headers["x-ratelimit-remaining-images"]) <= 10000 - 3
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s") and raw.parse().usage.prompt_tokens == 3
    # the request id is in the server's access log line of that request
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in victim.server.log.read_text().splitlines() if x.startswith("{")]
        if any(x.get("request_id") == "sdk-trace-1" and x.get("msg") == "request" for x in lines):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no access log line with request_id sdk-trace-1")


def test_request_id_generated_on_every_response(victim):
    c = victim.client(None)
    for r in (c.get("/healthz"), c.get("/v1/models"), c.post("/v1/embeddings", json={"input": [_img(0)]}),
              c.get("/nowhere")):
        assert len(r.headers["x-request-id"]) >= 16, r
    ids = {c.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert c.get("/healthz", headers={"x-request-id": "bad id with spaces"}).headers["x-request-id"] != "bad id with spaces"


def test_rate_limit_headers_count_down_and_hold_on_429(victim):
    _, key = victim.new_account("tiny")  # 3 requests per 60 s, no image limit
    c = victim.client(key)
    remaining = []
    for i in range(3):
        r = c.post("/v1/embeddings", json={"input": [_img(i)]})
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3" and "x-ratelimit-limit-images" not in r.headers
        assert 1 <= int(r.headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 60
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    r = c.post("/v1/embeddings", json={"input": [_img(9)]})
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining-requests"] == "0" and r.headers["retry-after"]
    assert r.json()["error"]["type"] == "rate_limit_exceeded"


def test_usage_fields_over_plain_http(victim):
    _, key = victim.new_account("free")
    r = httpx.post(victim.url + "/v1/embeddings", json={"input": [_img(0), _img(1)]},
                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.json()["usage"] == {"images": 2, "prompt_tokens": 2, "total_tokens": 2}
