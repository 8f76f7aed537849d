"""API keys: random, stored as hashes, compared in constant time."""

from __future__ import annotations

from server.accounts import hash_key, key_matches, make_account


def test_keys_random_hashed_constant_time():
    (a, ka), (_b, kb) = make_account("a", "free"), make_account("b", "free")
    assert ka != kb and ka.startswith("heist_") and len(ka) >= 40
    assert a.key_hash == hash_key(ka) and ka not in a.key_hash and key_matches(ka, a.key_hash) and not key_matches(kb, a.key_hash)
