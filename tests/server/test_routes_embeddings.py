"""``POST /v1/embeddings`` in process (``create_app`` behind the ASGI transport, embedded store):
the answer's contract against the model itself, tier outputs, micro-batching, every bad-input case
(status, error type, param and message), the body limit while reading, the rate limit."""

from __future__ import annotations

import base64
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from shared.checkpoint import load_checkpoint
from shared.images import ImageLimits, encode_image, preprocess
from shared.schemas import EmbeddingResponse, decode_embeddings
from tests.support import assert_error as _err
from tests.support import metric

RNG = np.random.default_rng(0)


def _img(h=40, w=48, fmt="PNG", **kw) -> str:
    return encode_image(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), fmt, **kw)


@pytest.fixture(scope="module")
def free(api):
    _, key = api.new_account("free")
    with api.client(key) as c:
        yield c


# ---- contract ---------------------------------------------------------------------------------

def test_embeddings_contract_matches_in_process_model(api, free, tiny_checkpoint):
    raw = [RNG.integers(0, 256, (32 + 8 * i, 32 + 4 * i, 3), dtype=np.uint8) for i in range(3)]
    inputs = [encode_image(raw[0], "PNG"), encode_image(raw[1], "WEBP", lossless=True, data_uri=True),
              encode_image(raw[2], "PNG", data_uri=True)]
    r = free.post("/v1/embeddings", json={"input": inputs})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json") and r.headers.get("x-request-id")
    resp = EmbeddingResponse.model_validate(r.json())
    assert resp.object == "list" and resp.usage.images == 3 and [d.index for d in resp.data] == [0, 1, 2]
    got = decode_embeddings(resp)
    assert got.shape == (3, 32) and got.dtype == np.float32
    # the same preprocessing + model in process gives the same numbers
    ck = load_checkpoint(tiny_checkpoint)
    x = preprocess(inputs, 32, ImageLimits())
    with torch.no_grad():
        ref = ck.encoder(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # base64 (little-endian float32) carries the same values, bit for bit after float32 rounding
    r64 = free.post("/v1/embeddings", json={"input": inputs, "encoding_format": "base64"})
    b64 = decode_embeddings(r64.json())
    assert isinstance(r64.json()["data"][0]["embedding"], str)
    np.testing.assert_array_equal(b64, got.astype(np.float32))
    assert np.frombuffer(base64.b64decode(r64.json()["data"][0]["embedding"]), "<f4").shape == (32,)
    # JPEG decodes too
    assert free.post("/v1/embeddings", json={"input": [_img(fmt="JPEG", quality=90)]}).status_code == 200


def test_projection_allowed_only_where_tier_allows(api, free):
    _, key = api.new_account("research")
    with api.client(key) as c:
        r = c.post("/v1/embeddings", json={"input": [_img(), _img()], "output": "projection"})
        assert r.status_code == 200 and decode_embeddings(r.json()).shape == (2, 16)
    _err(free.post("/v1/embeddings", json={"input": [_img()], "output": "projection"}), 403, "permission_error", "output",
         "not allowed for tier 'free'")


def test_concurrent_requests_are_micro_batched(api):
    _, key = api.new_account("unlimited")
    body = {"input": [_img() for _ in range(2)]}
    before = metric(api.client(None), "heist_batch_images_count")
    with api.client(key) as c, ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(lambda _: c.post("/v1/embeddings", json=body).status_code, range(48)))
    assert codes == [200] * 48
    batches = metric(api.client(None), "heist_batch_images_count") - before
    assert 0 < batches < 48, f"{batches} forward passes for 48 concurrent requests: no batching"


# ---- bad input ----------------------------------------------------------------------------------

def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _gif() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="GIF")
    return base64.b64encode(buf.getvalue()).decode()


def _bomb() -> str:
    buf = io.BytesIO()  # 2000x2000 = 4 Mpx of zeros: a few KB compressed, over the 512x512 test limit
    Image.new("L", (2000, 2000)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


BAD = {
    "malformed base64": (lambda: [_img(), "not*base64!"], 422, "invalid_image", "input[1]", "malformed base64"),
    "not an image": (lambda: [base64.b64encode(b"hello world, not an image").decode()], 422, "invalid_image", "input[0]",
                     "not a decodable image"),
    "truncated png": (lambda: [_img(), _img(), base64.b64encode(_png_bytes(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))[:300]).decode()],
                      422, "invalid_image", "input[2]", "corrupt or truncated"),
    "empty string": (lambda: [""], 422, "invalid_image", "input[0]", "empty image"),
    "gif not allowed": (lambda: [_img(), _gif()], 415, "unsupported_media_type", "input[1]", "GIF not allowed"),
    "data uri wrong type": (lambda: ["data:image/gif;base64," + _gif()], 415, "unsupported_media_type", "input[0]", "image/gif"),
    "data uri not base64": (lambda: ["data:image/png,abcd"], 422, "invalid_image", "input[0]", "base64"),
    "decompression bomb": (lambda: [_bomb()], 413, "image_too_large", "input[0]", "2000x2000 = 4000000 pixels"),
    "image bytes over limit": (lambda: [base64.b64encode(os.urandom(300 * 1024)).decode()], 413, "image_too_large", "input[0]", "exceeds"),
    "too many images": (lambda: [_img(8, 8)] * 9, 400, "invalid_request_error", "input", "9 images in one request; the limit is 8"),
    "no images": (lambda: [], 422, "invalid_request_error", "input", "at least 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_images(free, case):
    make, status, type_, param, msg = BAD[case]
    _err(free.post("/v1/embeddings", json={"input": make()}), status, type_, param, msg)


@pytest.mark.parametrize("body,status,type_,param,msg", [
    (b"{not json", 400, "invalid_json", None, "not valid JSON"),
    (b'{"input": "abc"}', 422, "invalid_request_error", "input", "valid list"),
    (b'{"input": [1]}', 422, "invalid_request_error", "input[0]", "valid string"),
    (b'{"inputs": ["x"]}', 422, "invalid_request_error", None, "Field required"),
    (b'{"input": ["x"], "encoding_format": "hex"}', 422, "invalid_request_error", "encoding_format", "'float' or 'base64'"),
    (b'{"input": ["x"], "output": "logits"}', 422, "invalid_request_error", "output", "'representation' or 'projection'"),
    (b'{"input": ["x"], "model": "someone-else"}', 404, "model_not_found", "model", "not served here"),
    (b'[]', 422, "invalid_request_error", None, "valid dictionary"),
])
def test_bad_bodies(free, body, status, type_, param, msg):
    _err(free.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"}), status, type_, param, msg)


def test_body_limit_enforced_while_reading(free):
    big = json.dumps({"input": ["A" * (1100 * 1024)]}).encode()
    # declared length over the limit: refused before reading
    _err(free.post("/v1/embeddings", content=big), 413, "request_too_large", None, "exceeds 1048576 bytes")

    def chunks():  # no Content-Length (chunked): the limit must hold while streaming
        for i in range(0, len(big), 64 * 1024):
            yield big[i:i + 64 * 1024]
    _err(free.post("/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"}),
         413, "request_too_large", None, "exceeds")


# ---- rate limit ------------------------------------------------------------------------------------

def test_rate_limit_429_with_retry_after(api):
    aid, key = api.new_account("tiny")  # 3 requests per 60 s
    with api.client(key) as c:
        codes = [c.post("/v1/embeddings", json={"input": [_img(16, 16)]}).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = c.post("/v1/embeddings", json={"input": [_img(16, 16)]})
        _err(r, 429, "rate_limit_exceeded", None, "3 requests per 60 s")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    usage = api.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]
    assert usage["requests"] == 3 and usage["images"] == 3  # the refused request is not counted


def test_rate_limit_holds_under_concurrency(api):
    aid, key = api.new_account("tiny")
    with api.client(key) as c, ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(lambda _: c.post("/v1/embeddings", json={"input": [_img(16, 16)]}).status_code, range(12)))
    assert sorted(codes) == [200] * 3 + [429] * 9
    assert api.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]["requests"] == 3
