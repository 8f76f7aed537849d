"""Image decoding, limits and preprocessing (shared/images.py)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.images import ImageError, ImageLimits, decode_image, encode_image, resize_center_crop


def test_image_decoding_and_preprocessing():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    img = decode_image(encode_image(arr, "PNG", data_uri=True), 0, ImageLimits())
    assert img.size == (60, 30) and img.mode == "RGB"
    assert resize_center_crop(img, 32).shape == (32, 32, 3)
    rgba = encode_image(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "PNG")
    assert decode_image(rgba, 0, ImageLimits()).mode == "RGB"
    with pytest.raises(ImageError) as e:
        decode_image(encode_image(arr, "PNG"), 5, ImageLimits(max_pixels=100))
    assert e.value.status == 413 and e.value.param == "input[5]"
    with pytest.raises(ImageError) as e:
        decode_image(encode_image(arr, "JPEG"), 1, ImageLimits(formats=("PNG",)))
    assert e.value.status == 415
