"""Resumable query cache: every paid answer is written durably to SQLite (WAL, synchronous=FULL)
before anything uses it, keyed by (account, image id, output, repeat).

``account`` is a fingerprint of (server URL, API key) so the key itself is never stored; ``image
id`` is the SHA-256 of the image's pixels and shape (content-addressed: the same picture is the
same id whichever query set it came from); ``repeat`` numbers deliberate re-asks of one image
(query averaging). A run killed at any point (kill -9, Ctrl-C, network loss) loses at most the
answers that were in flight and never reached it; everything it received is on disk and is
served from here on the next run instead of being bought again.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    account  TEXT NOT NULL,
    image_id TEXT NOT NULL,
    output   TEXT NOT NULL,
    rep      INTEGER NOT NULL DEFAULT 0,
    dim      INTEGER NOT NULL,
    vec      BLOB NOT NULL,
    created  REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (account, image_id, output, rep)
) WITHOUT ROWID;
"""


def account_fingerprint(base_url: str, api_key: str) -> str:
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:20]


def image_ids(images: np.ndarray) -> list[str]:
    """Content ids of uint8 (N, H, W, 3) images."""
    return [hashlib.sha256(np.ascontiguousarray(im).tobytes() + str(im.shape).encode()).hexdigest()[:32] for im in images]


class QueryCache:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "answers.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> QueryCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put(self, account: str, ids: list[str], vecs: np.ndarray, output: str = "representation", rep: int = 0) -> None:
        """Store answers durably (one transaction, fsynced) before the caller uses them."""
        vecs = np.ascontiguousarray(vecs, dtype="<f4")
        if len(ids) != len(vecs):
            raise ValueError(f"{len(ids)} ids for {len(vecs)} vectors")
        rows = [(account, i, output, rep, vecs.shape[1], v.tobytes()) for i, v in zip(ids, vecs, strict=True)]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO answers (account, image_id, output, rep, dim, vec) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, account: str, ids: list[str], output: str = "representation", rep: int = 0) -> dict[str, np.ndarray]:
        """The cached answers among ``ids`` (missing ones are absent from the dict)."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for s in range(0, len(ids), 500):
                chunk = ids[s : s + 500]
                q = (f"SELECT image_id, vec FROM answers WHERE account=? AND output=? AND rep=? "
                     f"AND image_id IN ({','.join('?' * len(chunk))})")
                for iid, blob in self._db.execute(q, (account, output, rep, *chunk)):
                    found[iid] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        return found

    def count(self, account: str | None = None) -> int:
        with self._lock:
            if account is None:
                return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM answers WHERE account=?", (account,)).fetchone()[0]
