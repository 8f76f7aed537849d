"""Serving obfuscation (``heist-server serve --obfuscate``): live servers, the real CLI's flags, a
plain and an obfuscated victim compared over real HTTP."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest

from shared.images import encode_image
from shared.schemas import decode_embeddings
from testbed.services import start_server
from tests.support import SERVER_ADMIN_TOKEN, Victim, server_env

RNG = np.random.default_rng(7)
IMGS = [encode_image(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]


def _body(*imgs: str) -> bytes:
    return json.dumps({"input": list(imgs), "encoding_format": "base64"}).encode()


def _post(client, body: bytes):
    return client.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.live
def test_serving_obfuscation_pad_shuffle(server_factory, tiny_checkpoint):
    prefix = "heist-obf-" + secrets.token_hex(3)
    sp = server_factory(None, prefix, config={"tiers": {"unlimited": {"outputs": ["representation", "projection"]}}})
    plain = Victim(sp, None, prefix)
    port_args = ["--obfuscate", "pad_shuffle", "--obfuscation-seed", "3", "--obfuscation-pad", "8"]
    obf_server = start_server(tiny_checkpoint, server_env(None, prefix), tiny_checkpoint.parent / f"obf-{prefix}.log",
                              args=port_args, timeout_s=90)
    port = obf_server.port
    try:
        import httpx
        m = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]
        assert m["representation_dim"] == 40 and m["projection_dim"] == 16 + 8
        admin = {"Authorization": f"Bearer {SERVER_ADMIN_TOKEN}"}
        key = httpx.post(f"http://127.0.0.1:{port}/v1/admin/accounts", json={"name": "o", "tier": "unlimited"}, headers=admin).json()["api_key"]
        _, pkey = plain.new_account("unlimited")
        obf = decode_embeddings(httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": IMGS[:2]},
                                           headers={"Authorization": f"Bearer {key}"}).json())
        ref = decode_embeddings(_post(plain.client(pkey), _body(*IMGS[:2])).json())
        assert obf.shape == (2, 40)
        for row, r in zip(obf, ref, strict=True):  # the 32 true values are all there, shuffled among 8 pads
            assert all(np.isclose(row, v, atol=1e-5).any() for v in r)
        again = decode_embeddings(httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": IMGS[:2]},
                                             headers={"Authorization": f"Bearer {key}"}).json())
        assert np.array_equal(obf, again)
    finally:
        obf_server.stop()
