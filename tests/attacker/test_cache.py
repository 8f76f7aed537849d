"""The attacker's answer cache: durable (SQLite WAL) and keyed by account."""

from __future__ import annotations

import numpy as np

from attacker.cache import QueryCache, account_fingerprint, image_ids


def test_cache_is_durable_and_keyed(tmp_path):
    ids = image_ids(np.zeros((3, 4, 4, 3), np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None, None])
    assert len(set(ids)) == 3
    a1, a2 = account_fingerprint("http://x", "k1"), account_fingerprint("http://x", "k2")
    with QueryCache(tmp_path) as c:
        c.put(a1, ids[:2], np.ones((2, 5), np.float32))
        assert c._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with QueryCache(tmp_path) as c:
        assert set(c.get(a1, ids)) == set(ids[:2]) and c.get(a2, ids) == {}
        assert c.count() == 2
