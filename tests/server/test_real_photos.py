"""Real photo bytes through ``POST /v1/embeddings``: foolbox's sample photos (CIFAR-10 and greyscale
MNIST / Fashion-MNIST PNGs, progressive ImageNet JPEGs) and odd files made from them (sizes, modes,
formats), each answer checked against preprocessing + the model in this process.

The reference is written here, apart from the server's request path: Pillow decodes the file bytes,
``convert("RGB")``, the shorter side goes to the model's input size (bicubic, ``reducing_gap=3.0``),
a centre crop, /255, the eager encoder of the same checkpoint. The server runs its frozen TorchScript
module on the batcher's thread; the two agree to 2e-6 (measured), and ``ATOL`` allows 1e-4. A wrong
preprocessing (bilinear, no reducing gap, a crop one pixel off, BGR, one grey level up) moves every
photo's embedding by more than 10 x ``ATOL`` (6e-3 at least, measured;
``test_tolerance_rejects_wrong_preprocessing``).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from shared.checkpoint import load_checkpoint
from shared.data.base import DatasetMissingError
from shared.data.samples import SamplePhoto, sample_photos
from shared.schemas import decode_embeddings
from tests.support import SERVER_TEST_CONFIG, InProcessApi, Victim
from tests.support import assert_error as _err

try:
    PHOTOS = {ds: sample_photos(ds) for ds in ("cifar10", "mnist", "fashion_mnist", "imagenet")}
except DatasetMissingError as e:  # the optional extra 'data' is not installed
    pytest.skip(str(e), allow_module_level=True)


def _dims(photo: SamplePhoto) -> tuple[int, int]:
    with Image.open(photo.path) as img:
        return img.size


BIG = next(p for p in PHOTOS["imagenet"] if _dims(p) == (1024, 683))  # the others are 512 x 512

ATOL = 1e-4  # absolute, on embeddings whose entries reach 14 (median |v| about 1)
BICUBIC = Image.Resampling.BICUBIC

# SERVER_TEST_CONFIG with room for the ImageNet photos: 20 per request, the 1024 x 683 one under the pixel cap
PHOTO_CONFIG = {**SERVER_TEST_CONFIG, "max_images_per_request": 20, "max_image_pixels": 1024 * 1024,
                "max_image_bytes": 512 * 1024, "max_body_bytes": 4 * 1024 * 1024}


# ---- the reference: decode, RGB, resize, crop, encoder --------------------------------------------

def reference_pixels(img: Image.Image, size: int, resample: Image.Resampling = BICUBIC,
                     reducing_gap: float | None = 3.0, shift: int = 0) -> np.ndarray:
    """Shorter side to ``size``, centre crop (``shift`` moves the crop: a deliberate error); uint8 HWC."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, round(h * size / w))
    else:
        nw, nh = max(size, round(w * size / h)), size
    if (w, h) != (nw, nh):
        img = img.resize((nw, nh), resample, reducing_gap=reducing_gap)
    left, top = (nw - size) // 2 + shift, (nh - size) // 2 + shift
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@dataclass
class Model:
    encoder: torch.nn.Module
    size: int

    def embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return self.encoder(x).numpy()


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> Model:
    ck = load_checkpoint(tiny_checkpoint)
    return Model(ck.encoder.eval(), ck.config.input_size)


@pytest.fixture(scope="module")
def photo_api(tiny_checkpoint):
    with InProcessApi(tiny_checkpoint, PHOTO_CONFIG) as a:
        yield a


@pytest.fixture(scope="module")
def client(photo_api):
    _, key = photo_api.new_account("free")
    return photo_api.client(key)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def embed_files(client, files: list[bytes]) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": [b64(f) for f in files]})
    assert r.status_code == 200, r.text
    return decode_embeddings(r.json())


def decoded(raw: bytes) -> Image.Image:
    with Image.open(io.BytesIO(raw)) as img:
        img.load()
        return img.convert("RGB")


def assert_matches(got: np.ndarray, want: np.ndarray, names: list[str]) -> None:
    err = np.abs(got - want).max(axis=1)
    bad = [f"{n}: {e:.2e}" for n, e in zip(names, err, strict=True) if e > ATOL]
    assert not bad, f"embeddings off by more than {ATOL}: {bad}"


# ---- the bundled photos, as stored ----------------------------------------------------------------

@pytest.mark.parametrize("dataset,count", [("cifar10", 20), ("imagenet", 20), ("mnist", 4), ("fashion_mnist", 4)])
def test_sample_photos_match_in_process_model(client, model, dataset, count):
    photos = PHOTOS[dataset][:count]
    files = [p.read_bytes() for p in photos]
    got = embed_files(client, files)
    want = model.embed([reference_pixels(decoded(f), model.size) for f in files])
    assert got.shape == want.shape == (count, want.shape[1])
    assert_matches(got, want, [p.name for p in photos])


def test_tolerance_rejects_wrong_preprocessing(client, model):
    """Each deliberate mistake moves every photo's embedding by more than ATOL, so the tolerance can fail."""
    def wrong(files: list[bytes], step: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
        return model.embed([step(decoded(f)) for f in files])

    size = model.size
    cases: dict[str, tuple[str, Callable[[Image.Image], np.ndarray]]] = {
        "bilinear": ("imagenet", lambda im: reference_pixels(im, size, Image.Resampling.BILINEAR)),
        "no reducing gap": ("imagenet", lambda im: reference_pixels(im, size, reducing_gap=None)),
        "crop one pixel off": ("imagenet", lambda im: reference_pixels(im, size, shift=1)),
        "one grey level up": ("imagenet", lambda im: np.minimum(reference_pixels(im, size).astype(int) + 1, 255).astype(np.uint8)),
        "BGR": ("cifar10", lambda im: reference_pixels(im, size)[..., ::-1].copy()),
        "bilinear (28 px up)": ("mnist", lambda im: reference_pixels(im, size, Image.Resampling.BILINEAR)),
    }
    answers: dict[str, np.ndarray] = {}
    for name, (dataset, step) in cases.items():
        files = [p.read_bytes() for p in PHOTOS[dataset][:8]]
        if dataset not in answers:
            answers[dataset] = embed_files(client, files)
        err = np.abs(wrong(files, step) - answers[dataset]).max(axis=1)
        assert (err > 10 * ATOL).all(), f"{name}: {err}"


def test_pixel_cap_refuses_the_large_photo(api):
    """Under the usual test config (max_image_pixels 512 x 512) the 1024 x 683 ImageNet photo is refused
    from its header; the 512 x 512 ones pass."""
    _, key = api.new_account("free")
    c = api.client(key)
    small = PHOTOS["imagenet"][0]
    _err(c.post("/v1/embeddings", json={"input": [b64(small.read_bytes()), b64(BIG.read_bytes())]}),
         413, "image_too_large", "input[1]", r"1024x683 = 699392 pixels, limit 262144")
    assert c.post("/v1/embeddings", json={"input": [b64(small.read_bytes())]}).status_code == 200


# ---- odd files made from the photos ---------------------------------------------------------------

def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png16_rgb(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16), written by hand: Pillow cannot write one."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@dataclass
class Odd:
    """A file, and what the server must make of it: the RGB image it embeds as (``embeds``), or an error.
    ``near``: for a lossy file, the photo it was made from and the mean absolute pixel difference
    the decoded file stays within (so a garbled decode cannot pass by matching itself)."""

    raw: bytes
    embeds: Image.Image | None = None
    error: tuple[int, str, str] | None = None
    near: tuple[Image.Image, float] | None = None


def _photo() -> Image.Image:
    """320 x 240 from the middle of the first ImageNet photo: its lossless files stay under max_image_bytes."""
    return decoded(PHOTOS["imagenet"][0].read_bytes()).crop((96, 136, 416, 376))


def _big() -> Image.Image:
    return decoded(BIG.read_bytes())


def _photo2() -> Image.Image:
    return decoded(PHOTOS["imagenet"][1].read_bytes())


def _lossy(raw: bytes, source: Image.Image, within: float) -> Odd:
    return Odd(raw, embeds=decoded(raw), near=(source, within))


def _rgba() -> Image.Image:
    """The photo with alpha: a left-to-right ramp, the left quarter fully transparent."""
    rgb = np.asarray(_photo())
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    alpha[:, : rgb.shape[1] // 4] = 0
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def _grey16() -> Odd:
    """16-bit greyscale PNG (Pillow's mode I;16): high byte the grey photo, low byte noise."""
    grey = np.asarray(_photo().convert("L")).astype(np.uint16)
    noise = np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint16)
    img16 = Image.fromarray(grey * 256 + noise)
    assert img16.mode == "I;16"
    return Odd(_save(img16, "PNG"), embeds=_photo().convert("L").convert("RGB"))


def _rgb16() -> Odd:
    rgb = np.asarray(_photo()).astype(np.uint16)
    noise = np.random.default_rng(1).integers(0, 256, rgb.shape, dtype=np.uint16)
    return Odd(_png16_rgb(rgb * 256 + noise), embeds=_photo())


def _exif_rotated() -> Odd:
    """EXIF Orientation 6 (rotate 90 degrees to display): the server embeds the stored pixels, unrotated."""
    exif = Image.Exif()
    exif[0x0112] = 6
    img = _photo().crop((0, 0, 384, 256))
    raw = _save(img, "JPEG", quality=95, exif=exif)
    return Odd(raw, embeds=decoded(raw))


def _long_strip(n: int) -> Image.Image:
    """One row of photo pixels n long (rows of the photo laid end to end)."""
    rows = np.asarray(_photo()).reshape(-1, 3)
    return Image.fromarray(rows[:n].reshape(1, n, 3))


ODD: dict[str, Callable[[], Odd]] = {
    # sizes
    "png 31x47 crop": lambda: Odd(_save(c := _photo().crop((100, 50, 131, 97)), "PNG"), embeds=c),
    "png 47x31 crop": lambda: Odd(_save(c := _photo().crop((50, 100, 97, 131)), "PNG"), embeds=c),
    "png 1x1": lambda: Odd(_save(c := _photo().crop((160, 120, 161, 121)), "PNG"), embeds=c),
    "png 320x1 strip": lambda: Odd(_save(c := _photo().crop((0, 120, 320, 121)), "PNG"), embeds=c),
    "png 1x240 strip": lambda: Odd(_save(c := _photo().crop((160, 0, 161, 240)), "PNG"), embeds=c),
    "png 40960x1 strip": lambda: Odd(_save(_long_strip(40960), "PNG"),
                                     error=(413, "image_too_large", r"40960x1: .* 1310720x32 = 41943040 pixels, limit 1048576 \(aspect ratio")),
    "jpeg 224x224": lambda: _lossy(_save(s := _photo().resize((224, 224), BICUBIC), "JPEG", quality=90), s, 3.0),
    "cifar png 32x32 upscaled to jpeg 97x64": lambda: _lossy(
        _save(s := decoded(PHOTOS["cifar10"][3].read_bytes()).resize((97, 64), BICUBIC), "JPEG", quality=90), s, 4.0),
    # JPEG flavours
    "jpeg 1024x683 quality 10": lambda: _lossy(_save(s := _big(), "JPEG", quality=10), s, 12.0),
    "jpeg baseline": lambda: _lossy(_save(_photo(), "JPEG", quality=90), _photo(), 3.0),
    "jpeg progressive 300x200": lambda: _lossy(
        _save(s := _photo2().resize((300, 200), BICUBIC), "JPEG", quality=90, progressive=True), s, 3.0),
    "jpeg greyscale": lambda: _lossy(_save(g := _photo().convert("L"), "JPEG", quality=90), g.convert("RGB"), 3.0),
    "jpeg cmyk": lambda: _lossy(_save(_photo().convert("CMYK"), "JPEG", quality=95), _photo(), 3.0),
    "jpeg exif orientation 6": _exif_rotated,
    # PNG modes
    "png greyscale L": lambda: Odd(_save(g := _photo().convert("L"), "PNG"), embeds=g.convert("RGB")),
    "png greyscale + alpha LA": lambda: Odd(_save(_photo().convert("LA"), "PNG"), embeds=_photo().convert("L").convert("RGB")),
    "png 1-bit": lambda: Odd(_save(b := _photo().convert("1"), "PNG"), embeds=b.convert("RGB")),
    "png palette P": lambda: Odd(_save(p := _photo().quantize(64), "PNG"), embeds=p.convert("RGB")),
    "png palette P with transparency": lambda: Odd(_save(p := _photo().quantize(64), "PNG", transparency=0),
                                                   embeds=p.convert("RGB")),
    "png rgba with transparency": lambda: Odd(_save(_rgba(), "PNG"), embeds=_photo()),
    "png 16-bit greyscale": _grey16,
    "png 16-bit rgb": _rgb16,
    "apng (first frame)": lambda: Odd(_save(_photo(), "PNG", save_all=True, append_images=[_photo2().crop((0, 0, 320, 240))]),
                                    embeds=_photo()),
    # WebP
    "webp rgba lossless": lambda: Odd(r := _save(_rgba(), "WEBP", lossless=True), embeds=decoded(r)),
    "webp rgba lossless exact": lambda: Odd(_save(_rgba(), "WEBP", lossless=True, exact=True), embeds=_photo()),
    "webp lossy": lambda: _lossy(_save(_photo(), "WEBP", quality=80), _photo(), 4.0),
    # refused
    "gif": lambda: Odd(_save(_photo(), "GIF"), error=(415, "unsupported_media_type", "format GIF not allowed")),
    "bmp": lambda: Odd(_save(_photo(), "BMP"), error=(415, "unsupported_media_type", "format BMP not allowed")),
    "tiff": lambda: Odd(_save(_photo(), "TIFF"), error=(415, "unsupported_media_type", "format TIFF not allowed")),
    "jpeg truncated": lambda: Odd(PHOTOS["imagenet"][0].read_bytes()[:30000],
                                  error=(422, "invalid_image", "corrupt or truncated image")),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_files_from_real_photos(client, model, name):
    case = ODD[name]()
    r = client.post("/v1/embeddings", json={"input": [b64(case.raw)]})
    if case.error is not None:
        status, type_, msg = case.error
        _err(r, status, type_, "input[0]", msg)
        return
    assert r.status_code == 200, r.text
    assert case.embeds is not None
    want_px = reference_pixels(case.embeds, model.size)
    if case.near is not None:
        source, within = case.near
        diff = np.abs(want_px.astype(float) - reference_pixels(source, model.size)).mean()
        assert diff <= within, f"{name}: decoded file is {diff:.1f} grey levels from its source"
    assert_matches(decode_embeddings(r.json()), model.embed([want_px]), [name])


def test_sixteen_bit_grey_is_not_clipped(client, model):
    """Pillow's convert("RGB") clips 16-bit grey samples to 255: a white image. The server keeps the
    high byte, so the answer is far from the white image's embedding."""
    case = _grey16()
    got = embed_files(client, [case.raw])
    white = model.embed([np.full((model.size, model.size, 3), 255, np.uint8)])
    assert np.abs(got - white).max() > 100 * ATOL


def test_data_uri_jpeg(client, model):
    raw = PHOTOS["imagenet"][2].read_bytes()
    r = client.post("/v1/embeddings", json={"input": [f"data:image/jpeg;base64,{b64(raw)}"]})
    assert r.status_code == 200, r.text
    assert_matches(decode_embeddings(r.json()), model.embed([reference_pixels(decoded(raw), model.size)]), ["data: URI"])


# ---- live: real uvicorn --------------------------------------------------------------------------

@pytest.mark.live
def test_photos_through_live_server(server_factory, model):
    """The real CLI on real uvicorn (embedded store): CIFAR-10 PNGs, ImageNet JPEGs and a greyscale
    MNIST PNG in one request, the same numbers as in process."""
    sp = server_factory(None, "photos", config=PHOTO_CONFIG)
    victim = Victim(sp, None, "photos")
    try:
        _, key = victim.new_account("free")
        photos: list[SamplePhoto] = PHOTOS["cifar10"][:4] + PHOTOS["imagenet"][:4] + PHOTOS["mnist"][:1]
        files = [p.read_bytes() for p in photos]
        with victim.client(key) as c:
            got = embed_files(c, files)
        want = model.embed([reference_pixels(decoded(f), model.size) for f in files])
        assert_matches(got, want, [p.name for p in photos])
    finally:
        victim.admin.close()
