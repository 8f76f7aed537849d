"""JPEG decoding on the device (``server.gpu_decode``), tested with torchvision's CPU decoder
standing in for nvJPEG: the same resize, crop and rounding, the same batching through
``shared.images.preprocess`` and the HTTP API, and the calibration's choice. What only a GPU can
show (nvJPEG's own pixels, its speed) is measured by ``scripts/gpu_bench.sh``.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

import server.gpu_decode as gd
from server.gpu_decode import DeviceJpegDecoder, resize_center_crop_tensor
from shared.checkpoint import load_checkpoint
from shared.data.base import DatasetMissingError
from shared.data.samples import sample_photos
from shared.images import ImageError, ImageLimits, preprocess, resize_center_crop, to_rgb
from shared.schemas import decode_embeddings
from tests.support import SERVER_TEST_CONFIG, InProcessApi

try:
    JPEGS = [p.path.read_bytes() for p in sample_photos("imagenet")]
except DatasetMissingError as e:  # the optional extra 'data' is not installed
    pytest.skip(str(e), allow_module_level=True)
PNG_PHOTOS = [p.path.read_bytes() for p in sample_photos("cifar10")[:4]]
LIMITS = ImageLimits(max_pixels=1024 * 1024, max_bytes=512 * 1024)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def pillow_pixels(raw: bytes, size: int) -> np.ndarray:
    return resize_center_crop(to_rgb(Image.open(io.BytesIO(raw))), size)


class Counting(DeviceJpegDecoder):
    """Counts the files the device path decodes."""

    calls: int = 0
    files: int = 0

    def decode(self, raws):
        self.calls += 1
        self.files += len(raws)
        return super().decode(raws)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_device_pixels_agree_with_pillow_on_real_photos(size):
    """The 20 ImageNet JPEGs (512 x 512 and 1024 x 683): mean difference under 0.6 levels at every
    size (0.41 / 0.23 / 0.13 measured at 32 / 64 / 224), 99th percentile at most 3."""
    dec = DeviceJpegDecoder(torch.device("cpu"), size)
    got = dec.decode(JPEGS).astype(int)
    want = np.stack([pillow_pixels(r, size) for r in JPEGS]).astype(int)
    assert got.shape == want.shape == (len(JPEGS), size, size, 3)
    diff = np.abs(got - want)
    assert diff.mean() < 0.6 and np.percentile(diff, 99) <= 3, (diff.mean(), np.percentile(diff, 99))


def test_resize_geometry_matches_pillow_on_odd_shapes():
    """Shorter side to size, centre crop, for shapes on both sides of square and for an exact fit."""
    rng = np.random.default_rng(0)
    for h, w in [(47, 31), (31, 47), (32, 32), (100, 33), (33, 100)]:
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        got = resize_center_crop_tensor(torch.from_numpy(img).permute(2, 0, 1), 32).numpy().astype(int)
        want = resize_center_crop(Image.fromarray(img), 32).astype(int)
        assert got.shape == (32, 32, 3)
        assert np.abs(got - want)[..., :2].mean() < 1.0, (h, w)  # the gradients: geometry, not noise


def test_embeddings_stay_close_and_a_wrong_resize_does_not(tiny_checkpoint):
    """On the test model the device pixels move embeddings (relative L2) by a tenth of what a wrong
    preprocessing (bilinear without antialiasing) does, so the pixel bound above is the right scale."""
    ck = load_checkpoint(tiny_checkpoint)
    size = ck.config.input_size

    def embed(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ck.encoder.eval()(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).numpy()

    ref = embed(np.stack([pillow_pixels(r, size) for r in JPEGS]))
    dev = embed(DeviceJpegDecoder(torch.device("cpu"), size).decode(JPEGS))
    wrong = []
    for r in JPEGS:
        t = torch.from_numpy(np.array(Image.open(io.BytesIO(r)).convert("RGB"))).permute(2, 0, 1)[None].float()
        _, _, h, w = t.shape
        nw, nh = (size, round(h * size / w)) if w <= h else (round(w * size / h), size)
        x = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", antialias=False)
        left, top = (nw - size) // 2, (nh - size) // 2
        wrong.append(x[0, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    bad = embed(np.stack(wrong))
    scale = np.linalg.norm(ref, axis=1)
    dev_err, bad_err = np.linalg.norm(dev - ref, axis=1) / scale, np.linalg.norm(bad - ref, axis=1) / scale
    # measured: device at most 2.6% (median 0.5%), the wrong resize 2.8-140% (median 15%)
    assert dev_err.max() < 0.03 and np.median(dev_err) < 0.1 * np.median(bad_err), (dev_err, bad_err)


def test_preprocess_sends_eligible_jpegs_to_the_device_in_one_call():
    """JPEGs (RGB and grey) go to the device together; PNGs, CMYK JPEGs and JPEGs under min_side
    stay on Pillow; the output order is the input order."""
    grey = io.BytesIO()
    Image.open(io.BytesIO(JPEGS[0])).convert("L").save(grey, "JPEG", quality=90)
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(JPEGS[1])).convert("CMYK").save(cmyk, "JPEG", quality=90)
    small = io.BytesIO()
    Image.open(io.BytesIO(JPEGS[2])).resize((40, 40)).save(small, "JPEG", quality=90)
    files = [JPEGS[0], PNG_PHOTOS[0], grey.getvalue(), cmyk.getvalue(), small.getvalue(), JPEGS[3]]
    dec = Counting(torch.device("cpu"), 32, min_side=64)
    out = preprocess([b64(f) for f in files], 32, LIMITS, dec)
    assert (dec.calls, dec.files) == (1, 3)  # JPEGS[0], grey, JPEGS[3]
    want = np.stack([pillow_pixels(f, 32) for f in files]).astype(int)
    diff = np.abs(out.astype(int) - want).reshape(len(files), -1).max(axis=1)
    assert list(diff[[1, 3, 4]]) == [0, 0, 0]  # Pillow's own pixels
    assert all(d <= 16 for d in diff[[0, 2, 5]]), diff  # the device's, close to Pillow's


def test_a_corrupt_jpeg_gets_pillows_error_and_the_checks_come_first():
    """A truncated JPEG among good ones: the device call fails, Pillow decodes them all again and
    names the bad input. The header checks (format allow-list, pixel cap) run before the device."""
    dec = Counting(torch.device("cpu"), 32)
    cut = JPEGS[1][: len(JPEGS[1]) // 2]
    with pytest.raises(ImageError) as e:
        preprocess([b64(JPEGS[0]), b64(cut)], 32, LIMITS, dec)
    assert (e.value.index, e.value.status, e.value.type) == (1, 422, "invalid_image")
    assert dec.calls == 1
    with pytest.raises(ImageError) as e:
        preprocess([b64(JPEGS[0])], 32, ImageLimits(max_pixels=100 * 100), dec)
    assert e.value.status == 413 and dec.calls == 1  # refused before any decoding
    with pytest.raises(ImageError) as e:
        preprocess([b64(JPEGS[0])], 32, ImageLimits(formats=("PNG",)), dec)
    assert e.value.status == 415 and dec.calls == 1


@pytest.mark.parametrize(("wins", "chosen"), [
    ([False, False, True, True, True, True], 128),
    ([True, False, True, False, True, True], 512),
    ([True] * 6, 32),
    ([False] * 6, None),
    ([True, True, True, True, True, False], None),  # losing at the largest size: never
])
def test_calibration_picks_the_smallest_side_from_which_the_device_always_wins(monkeypatch, wins, chosen):
    times = iter([t for w in wins for t in ((2.0, 1.0) if w else (1.0, 2.0))])  # (Pillow, device) per side
    monkeypatch.setattr(gd, "_best", lambda fn, raws, repeats: next(times))
    dec = DeviceJpegDecoder(torch.device("cpu"), 32)
    assert dec.calibrate(batch=2, repeats=1) == chosen
    assert dec.min_side == chosen and len(dec.timings) == len(wins)


def test_calibration_on_a_failing_device_turns_it_off(monkeypatch):
    def broken(self, raws):
        raise RuntimeError("no decoder")
    monkeypatch.setattr(DeviceJpegDecoder, "decode", broken)
    dec = DeviceJpegDecoder(torch.device("cpu"), 32)
    assert dec.calibrate(batch=2, repeats=1, sides=(32, 64)) is None
    assert not dec.eligible(Image.open(io.BytesIO(JPEGS[0])))


def test_device_decode_through_the_api(tiny_checkpoint):
    """``device_decode: on`` on this CPU: the server's answer for a JPEG is the model on the device
    decoder's pixels, for a PNG on Pillow's; ``off`` serves Pillow's pixels for both."""
    ck = load_checkpoint(tiny_checkpoint)
    size = ck.config.input_size

    def embed(pixels: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ck.encoder.eval()(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).numpy()

    files = [JPEGS[0], PNG_PHOTOS[0], JPEGS[4]]
    conf = {**SERVER_TEST_CONFIG, "max_image_pixels": 1024 * 1024, "max_image_bytes": 512 * 1024}
    dev = DeviceJpegDecoder(torch.device("cpu"), size)
    want_on = embed(np.stack([dev.decode([f])[0] if f[:2] == b"\xff\xd8" else pillow_pixels(f, size) for f in files]))
    want_off = embed(np.stack([pillow_pixels(f, size) for f in files]))
    assert np.abs(want_on - want_off).max() > 1e-3  # the two paths are distinguishable on these photos
    for mode, want in (("on", want_on), ("off", want_off)):
        with InProcessApi(tiny_checkpoint, {**conf, "device_decode": mode}) as api:
            _, key = api.new_account("free")
            r = api.client(key).post("/v1/embeddings", json={"input": [b64(f) for f in files]})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(decode_embeddings(r.json()), want, atol=1e-4)
