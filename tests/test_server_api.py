"""The victim API end to end: a real ``heist-server serve`` (uvicorn) on loopback, a real Redis,
httpx as the client. Every bad-input case is checked for its status, error type, param and message.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO, SERVER_ADMIN_TOKEN, server_env  # noqa: I001
from PIL import Image

from shared.checkpoint import load_checkpoint
from shared.images import ImageLimits, encode_image, preprocess
from shared.proc import popen
from shared.proc import run as run_child
from shared.schemas import EmbeddingResponse, ErrorResponse, decode_embeddings

RNG = np.random.default_rng(0)


def _img(h=40, w=48, fmt="PNG", **kw) -> str:
    return encode_image(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), fmt, **kw)


def _err(r: httpx.Response, status: int, type_: str, param: str | None = None, msg: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = ErrorResponse.model_validate(r.json()).error
    assert body.type == type_, r.text
    if param is not None:
        assert body.param == param, r.text
    if msg is not None:
        assert re.search(msg, body.message), body.message
    return r.json()


@pytest.fixture(scope="module")
def free(victim):
    _, key = victim.new_account("free")
    with victim.client(key) as c:
        yield c


# ---- contract ---------------------------------------------------------------------------------

def test_models_health_docs(victim):
    c = victim.client(None)
    m = c.get("/v1/models").json()["data"][0]
    assert m["architecture"] == "resnet18" and m["input_size"] == 32 and m["representation_dim"] == 32
    assert m["projection_dim"] == 16 and m["max_images_per_request"] == 8
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/readyz").json() == {"status": "ready", "model": True, "store": True}
    spec = c.get("/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"] and "EmbeddingRequest" in json.dumps(spec)
    assert c.get("/docs").status_code == 200


def test_embeddings_contract_matches_in_process_model(victim, free, tiny_checkpoint):
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


def test_projection_allowed_only_where_tier_allows(victim, free):
    _, key = victim.new_account("research")
    with victim.client(key) as c:
        r = c.post("/v1/embeddings", json={"input": [_img(), _img()], "output": "projection"})
        assert r.status_code == 200 and decode_embeddings(r.json()).shape == (2, 16)
    _err(free.post("/v1/embeddings", json={"input": [_img()], "output": "projection"}), 403, "permission_error", "output",
         "not allowed for tier 'free'")


def test_concurrent_requests_are_micro_batched(victim):
    _, key = victim.new_account("unlimited")
    body = {"input": [_img() for _ in range(2)]}
    before = _metric(victim, "heist_batch_images_count")
    with victim.client(key) as c, ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(lambda _: c.post("/v1/embeddings", json=body).status_code, range(48)))
    assert codes == [200] * 48
    batches = _metric(victim, "heist_batch_images_count") - before
    assert 0 < batches < 48, f"{batches} forward passes for 48 concurrent requests: no batching"


def _metric(victim, name: str, labels: str = "") -> float:
    text = victim.client(None).get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
            if line.split("{")[0].split(" ")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_and_structured_logs(victim, free):
    r = free.post("/v1/embeddings", json={"input": [_img()]}, headers={"X-Request-ID": "trace-abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc-123"
    text = victim.client(None).get("/metrics").text
    for name in ("heist_requests_total", "heist_request_seconds_bucket", "heist_batch_images_bucket",
                 "heist_images_total", "heist_defence_decisions_total", "heist_queue_images"):
        assert name in text, name
    assert _metric(victim, "heist_requests_total", 'route="/v1/embeddings"') > 0
    lines = [json.loads(x) for x in victim.server.log.read_text().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "trace-abc-123"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["account"].startswith("acct_") and mine[-1]["path"] == "/v1/embeddings"
    assert any(x["msg"] == "model loaded" and "policies" in x for x in lines)


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


def test_no_500_on_wrong_methods_and_paths(victim):
    c = victim.client(None)
    _err(c.get("/v1/embeddings"), 405, "method_not_allowed")
    _err(c.get("/v2/nothing"), 404, "not_found")


# ---- auth and accounts ---------------------------------------------------------------------------

def test_missing_wrong_revoked_keys(victim):
    body = {"input": [_img()]}
    _err(victim.client(None).post("/v1/embeddings", json=body), 401, "authentication_error", None, "missing API key")
    _err(victim.client("heist_" + "x" * 43).post("/v1/embeddings", json=body), 401, "authentication_error", None, "invalid API key")
    _err(httpx.post(victim.url + "/v1/embeddings", json=body, headers={"Authorization": "Basic dXNlcjpwYXNz"}),
         401, "authentication_error")
    aid, key = victim.new_account("free")
    with victim.client(key) as c:
        assert c.post("/v1/embeddings", json=body).status_code == 200
        info = victim.admin.post(f"/v1/admin/accounts/{aid}/revoke").json()
        assert info["revoked"] is True and info["usage"]["requests"] == 1
        _err(c.post("/v1/embeddings", json=body), 403, "permission_error", None, "revoked")


def test_admin_endpoints_guarded(victim):
    _err(httpx.get(victim.url + "/v1/admin/accounts"), 401, "authentication_error", None, "admin token")
    _err(httpx.get(victim.url + "/v1/admin/accounts", headers={"Authorization": "Bearer " + SERVER_ADMIN_TOKEN[:-1] + "x"}),
         401, "authentication_error")
    aid, key = victim.new_account("free", name="listed-user")
    _err(httpx.get(victim.url + "/v1/admin/accounts", headers={"Authorization": f"Bearer {key}"}), 401, "authentication_error")
    rows = victim.admin.get("/v1/admin/accounts").json()["data"]
    assert any(r["id"] == aid and r["name"] == "listed-user" for r in rows)
    assert all("key" not in json.dumps(r).lower() or "key_hash" not in r for r in rows)
    assert victim.admin.get("/v1/admin/accounts/listed-user").json()["id"] == aid
    _err(victim.admin.get("/v1/admin/accounts/acct_nope"), 404, "not_found")
    _err(victim.admin.post("/v1/admin/accounts", json={"name": "listed-user", "tier": "free"}), 409, "conflict", "name")
    _err(victim.admin.post("/v1/admin/accounts", json={"name": "z", "tier": "platinum"}), 422, "invalid_request_error", "tier")


def test_keys_stored_only_as_hashes(victim):
    import redis

    aid, key = victim.new_account("free")
    r = redis.Redis.from_url(victim.redis_url, decode_responses=True)
    dump = json.dumps({k: r.hgetall(k) if r.type(k) == "hash" else r.get(k) if r.type(k) == "string" else None
                       for k in r.scan_iter(match=f"{victim.prefix}:*")})
    assert key not in dump and key[6:] not in dump
    import hashlib
    assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_cli_accounts_create_list_revoke(victim):
    env = server_env(victim.redis_url, victim.prefix)
    run = lambda *a: run_child([sys.executable, "-m", "server.cli", "accounts", *a], cwd=REPO, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    out = run("create", "cli-user", "--tier", "free")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("heist_") and len(key) > 40
    with victim.client(key) as c:
        assert c.post("/v1/embeddings", json={"input": [_img()]}).status_code == 200
    listed = run("list", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["cli-user"]["usage"] == {"requests": 1, "images": 1, "counters": {}}
    bad = run("create", "cli-user2", "--tier", "platinum")
    assert bad.returncode == 2 and "unknown tier 'platinum'" in bad.stderr
    assert run("revoke", "cli-user").returncode == 0
    with victim.client(key) as c:
        _err(c.post("/v1/embeddings", json={"input": [_img()]}), 403, "permission_error")


# ---- rate limit ------------------------------------------------------------------------------------

def test_rate_limit_429_with_retry_after(victim):
    aid, key = victim.new_account("tiny")  # 3 requests per 60 s
    with victim.client(key) as c:
        codes = [c.post("/v1/embeddings", json={"input": [_img(16, 16)]}).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = c.post("/v1/embeddings", json={"input": [_img(16, 16)]})
        _err(r, 429, "rate_limit_exceeded", None, "3 requests per 60 s")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    usage = victim.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]
    assert usage["requests"] == 3 and usage["images"] == 3  # the refused request is not counted


def test_rate_limit_holds_under_concurrency(victim):
    aid, key = victim.new_account("tiny")
    with victim.client(key) as c, ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(lambda _: c.post("/v1/embeddings", json={"input": [_img(16, 16)]}).status_code, range(12)))
    assert sorted(codes) == [200] * 3 + [429] * 9
    assert victim.admin.get(f"/v1/admin/accounts/{aid}").json()["usage"]["requests"] == 3


# ---- fuzzing and packaging -------------------------------------------------------------------------

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


def test_docker_compose_config_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary not installed here (CI installs it: .ci/run)")
    env = {**os.environ, "HEIST_ADMIN_TOKEN": "x" * 32, "HEIST_SERVER_SECRET": "y" * 32}
    out = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "victim-api" in out.stdout and "redis" in out.stdout and "healthcheck" in out.stdout


@pytest.mark.timeout(120)
def test_compose_services_run_natively(tiny_checkpoint, redis_server_factory, tmp_path):
    """Start what docker-compose.yml describes, natively: the redis service's redis-server, then the
    victim-api command with the file's environment (secrets from env, REDIS_URL at the redis service),
    and run both healthchecks. Only host names, ports and mount points are mapped to this machine."""
    import yaml
    from conftest import compose_env, free_port, wait_http

    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    api, red = spec["services"]["victim-api"], spec["services"]["redis"]
    assert red["command"][0] == "redis-server" and "--appendonly" in red["command"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert any(v.endswith(":/checkpoints:ro") for v in api["volumes"]) and any(v.endswith(":/data") for v in api["volumes"])
    with pytest.raises(AssertionError, match="HEIST_ADMIN_TOKEN"):  # refuses to start without the secret
        compose_env(api["environment"]["HEIST_ADMIN_TOKEN"], {})
    redis_srv = redis_server_factory()
    probe = red["healthcheck"]["test"][1:]
    out = subprocess.run(probe[:1] + ["-p", str(redis_srv.port)] + probe[1:], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "PONG"
    host_env = {"HEIST_ADMIN_TOKEN": SERVER_ADMIN_TOKEN, "HEIST_SERVER_SECRET": "compose-secret-" + "s" * 16,
                "HEIST_VICTIM": tiny_checkpoint.name, "HEIST_DEVICE": "cpu"}
    env = {k: compose_env(str(v), host_env) for k, v in api["environment"].items()}
    port = free_port()
    env["REDIS_URL"] = env["REDIS_URL"].replace("redis://redis:6379", f"redis://127.0.0.1:{redis_srv.port}")
    env["HEIST_CHECKPOINT"] = env["HEIST_CHECKPOINT"].replace("/checkpoints", str(tiny_checkpoint.parent))
    env["HEIST_DATA_DIR"] = str(tmp_path)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEIST_") and k != "REDIS_URL"},
           **{k: v for k, v in env.items() if v != ""}, "HEIST_STORE_PREFIX": "compose"}
    cmd = [sys.executable, "-m", "server.cli"] + api["command"][1:]
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    log = (tmp_path / "api.log").open("w")
    proc = popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", proc=proc)
        check = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in api["healthcheck"]["test"][1:]]
        check[0] = sys.executable if check[0] == "python" else check[0]
        assert subprocess.run(check, capture_output=True).returncode == 0
        admin = {"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}
        key = httpx.post(url + "/v1/admin/accounts", json={"name": "c", "tier": "free"}, headers=admin).json()["api_key"]
        r = httpx.post(url + "/v1/embeddings", json={"input": [_img()]}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 32
    finally:
        proc.terminate()
        proc.wait(15)
