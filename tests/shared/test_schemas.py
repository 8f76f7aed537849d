"""API schemas: embeddings encoded as float lists or base64 (little-endian float32)."""

from __future__ import annotations

import numpy as np

from shared.schemas import decode_embedding, encode_embedding


def test_embedding_encoding_round_trip():
    v = np.linspace(-1, 1, 7, dtype=np.float32)
    assert np.array_equal(decode_embedding(encode_embedding(v, "base64")), v)
    assert np.allclose(decode_embedding(encode_embedding(v, "float")), v)
