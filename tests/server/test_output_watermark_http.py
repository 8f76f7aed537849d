"""The ``output_watermark`` defence over HTTP (in-process app, embedded store): a marked tier answers
exactly the marker's function of the victim's representation, the same for every account; an
unmarked tier answers the victim; a key made with another secret, or placed after a defence that
changes the answers, is refused at start; ``heist-server watermark-key`` needs the secret."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from server.app import create_app
from server.config import ConfigError, config_from
from shared.images import ImageLimits, encode_image, preprocess
from shared.output_watermark import Marker, calibrate
from shared.schemas import decode_embeddings
from tests.support import SERVER_ADMIN_TOKEN, InProcessApi

SECRET = "owm-http-secret-0123456789"
RNG = np.random.default_rng(11)
PIXELS = RNG.integers(0, 256, (400, 32, 32, 3), dtype=np.uint8)


def _reps(checkpoint, pixels: np.ndarray) -> np.ndarray:
    from shared.checkpoint import load_checkpoint

    ck = load_checkpoint(checkpoint)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        return ck.encoder(x).numpy()


@pytest.fixture(scope="module")
def key(tmp_path_factory, tiny_checkpoint):
    cal = calibrate(_reps(tiny_checkpoint, PIXELS), SECRET.encode(), directions=3, rate=0.1)
    path = tmp_path_factory.mktemp("owm") / "key.json"
    path.write_text(cal.model_dump_json())
    return path, cal


def _tiers(path, first=()) -> dict:
    return {"wm": {"defences": [*first, {"name": "output_watermark", "params": {"key": str(path), "strength": 0.4}}]},
            "plain": {}}


def test_marked_tier_answers_the_marker_function_for_every_account(key, tiny_checkpoint):
    path, cal = key
    imgs = [encode_image(p) for p in PIXELS[:64]]
    decoded = preprocess(imgs, 32, ImageLimits())
    expected, w = Marker(cal, SECRET.encode(), 0.4).mark(_reps(tiny_checkpoint, decoded))
    assert 0 < (w.sum(1) > 0).sum() < 64  # some images marked, some not
    body = json.dumps({"input": imgs, "encoding_format": "base64"}).encode()
    with InProcessApi(tiny_checkpoint, {"tiers": _tiers(path), "max_images_per_request": 64}, secret=SECRET) as api:
        got = []
        for tier in ("wm", "wm", "plain"):
            _, k = api.new_account(tier)
            r = api.client(k).post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            got.append(decode_embeddings(r.json()))
        metrics = api.admin.get("/metrics").text
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    assert np.array_equal(got[0], got[1])  # the mark does not depend on the account
    np.testing.assert_allclose(got[2], _reps(tiny_checkpoint, decoded), atol=1e-5)
    assert not np.allclose(got[0], got[2], atol=1e-4)
    marked = int((w.sum(1) > 0).sum())
    assert f'heist_defence_actions_total{{action="marked",defence="output_watermark"}} {2 * marked}.0' in metrics


@pytest.mark.parametrize("case", ["other secret", "after noise", "missing file"])
def test_bad_watermark_configs_are_refused_at_start(key, tiny_checkpoint, tmp_path, case):
    path, _ = key
    secret, first = SECRET, ()
    if case == "other secret":
        secret, msg = "another-secret-0123456789", "another server secret"
    elif case == "after noise":
        first, msg = ({"name": "gaussian_noise", "params": {"sigma": 0.1}},), "must come before"
    else:
        path, msg = tmp_path / "none.json", "not found"
    cfg = config_from({"tiers": _tiers(path, first), "checkpoint": tiny_checkpoint, "admin_token": SERVER_ADMIN_TOKEN,
                       "server_secret": secret})
    with pytest.raises(ConfigError, match=msg):
        create_app(cfg)


def test_watermark_key_command_needs_the_secret_and_writes_no_secret(tmp_path, monkeypatch, tiny_checkpoint):
    from server.cli import main

    monkeypatch.delenv("HEIST_SERVER_SECRET", raising=False)
    assert main(["watermark-key", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "k.json")]) == 2
    assert not (tmp_path / "k.json").exists()
