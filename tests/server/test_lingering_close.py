"""Refused bodies over real sockets (real uvicorn): lingering close, Expect: 100-continue, the bounds.

A client such as urllib writes its whole body before it reads the answer; were the server to close
with the body unread, the kernel would reset the connection and that client would see a broken pipe
instead of the 413. The server therefore reads and drops a refused body (up to ``discard_body_bytes``
in all, for at most ``discard_body_s``) before it answers and closes.
"""

from __future__ import annotations

import base64
import io
import json
import select
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.live

MIB = 1024 * 1024
CONFIG = {
    "max_images_per_request": 8,
    "max_body_bytes": MIB,
    "max_image_bytes": 256 * 1024,
    "discard_body_bytes": 80 * MIB,
    "discard_body_s": 2.0,
    "tiers": {"free": {}},
}


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(None, "linger", config=CONFIG)


def _post(url: str, data, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/embeddings", data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _assert_413(status: int, body: dict) -> None:
    assert status == 413, body
    assert body["error"]["type"] == "request_too_large" and "exceeds 1048576 bytes" in body["error"]["message"]


def test_urllib_reads_413_of_a_64mb_body(server):
    t0 = time.monotonic()
    _assert_413(*_post(server.url, b"x" * (64 * MIB)))  # declared length (Content-Length)
    assert time.monotonic() - t0 < 30


def test_urllib_reads_413_of_a_chunked_64mb_body(server):
    block = b"y" * (256 * 1024)
    chunks = (block for _ in range(256))  # 64 MiB, no Content-Length: urllib sends it chunked
    _assert_413(*_post(server.url, chunks, {"Transfer-Encoding": "chunked"}))


def test_urllib_reads_413_of_10000_images(server):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    body = json.dumps({"input": [base64.b64encode(buf.getvalue()).decode()] * 10_000}).encode()
    assert len(body) > MIB
    _assert_413(*_post(server.url, body))


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _read_response(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout``)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _head(length: int | None, expect: bool = False) -> bytes:
    lines = ["POST /v1/embeddings HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_expect_100_continue_oversize_gets_413_at_once(server):
    with _connect(server.url) as s:
        t0 = time.monotonic()
        s.sendall(_head(64 * MIB, expect=True))
        resp = _read_response(s)
    assert time.monotonic() - t0 < 2
    assert resp.startswith(b"HTTP/1.1 413") and b"100 Continue" not in resp
    assert b'"request_too_large"' in resp and b"connection: close" in resp.lower()


def test_expect_100_continue_within_limit_gets_100_then_the_answer(server):
    body = json.dumps({"input": ["x"]}).encode()
    with _connect(server.url) as s:
        s.sendall(_head(len(body), expect=True))
        s.settimeout(2)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 100 Continue"), first
        s.sendall(body)
        rest = first.split(b"\r\n\r\n", 1)[1] or s.recv(65536)
    assert rest.startswith(b"HTTP/1.1 401"), rest  # no API key: the body was read, then refused


def test_declared_body_over_the_discard_bound_is_answered_unread(server):
    with _connect(server.url) as s:
        s.sendall(_head(200 * MIB))  # over discard_body_bytes: nothing is read, the 413 comes at once
        resp = _read_response(s, timeout=3)
    assert resp.startswith(b"HTTP/1.1 413") and b'"request_too_large"' in resp


def test_chunked_body_read_stops_at_the_discard_bound(server):
    chunk = b"%x\r\n%s\r\n" % (MIB, b"z" * MIB)
    sent = 0
    with _connect(server.url) as s:
        s.sendall(_head(None))
        with pytest.raises(OSError):  # the server stops reading at the bound and closes: a reset, then EPIPE
            while sent < 400 * MIB:
                s.sendall(chunk)
                sent += MIB
    # bound 80 MiB plus what the two kernels' socket buffers absorbed
    assert 79 * MIB <= sent < 120 * MIB, sent / MIB


def test_slow_body_read_stops_after_discard_body_s(server):
    with _connect(server.url) as s:
        s.sendall(_head(None) + b"%x\r\n%s\r\n" % (2 * MIB, b"a" * 2 * MIB))  # over max_body_bytes at once
        t0 = time.monotonic()
        resp = b""
        while time.monotonic() - t0 < 10:  # then 1 KiB every 50 ms, forever
            if select.select([s], [], [], 0.05)[0]:
                resp = _read_response(s, timeout=2)
                break
            s.sendall(b"400\r\n" + b"b" * 1024 + b"\r\n")
        elapsed = time.monotonic() - t0
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert 1.5 <= elapsed <= 5, elapsed  # discard_body_s = 2
