"""The account-store interface.

Per account: profile + key hash, usage counters, rate-limit windows. Everything one request
writes goes through :meth:`AccountStore.commit` as *one* atomic operation (a Lua script on Redis,
one critical section in the embedded store) that re-checks revocation and the rate limit, so
concurrent replicas never over-admit and a crash never leaves a half-counted request.
"""

from __future__ import annotations

import builtins
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from server.accounts import Account
from server.config import RateLimit
from shared.schemas import AccountUsage

HISTORY_LEN = "history_len"  # defence_stats(): entries in the account's history stream
COVERAGE_BITS = "coverage_bits"  # defence_stats(): bits set in the account's coverage bitmap


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached; the API answers 503 (fail closed)."""


class AccountExists(ValueError):
    pass


@dataclass
class HistoryAppend:
    """Vectors (head projections) appended to the account's bounded history stream (and the global one)."""

    vectors: np.ndarray  # (n, d) float32
    maxlen: int
    global_maxlen: int = 0  # 0 = not appended to the global stream


@dataclass(frozen=True)
class IdempotentAnswer:
    """What a request with an ``Idempotency-Key`` leaves for its retries: the answer it committed.

    ``key_id``: sha256 of the client's key (hex); ``digest``: sha256 of the request body (hex);
    ``payload``: the served answer, encoded by the route; kept ``ttl_ms``; ``lease``: the token of this
    request's claim: the commit counts nothing when the key is no longer held under it (the lease ran
    out and a retry took the key over), so a slow request and its retry are never both counted."""

    key_id: str
    digest: str
    payload: bytes
    ttl_ms: int
    lease: str

    def pending(self) -> bytes:
        return pending_value(self.digest, self.lease)

    def done(self) -> bytes:
        """The stored value once committed: what a retry with the same key and body is answered."""
        return DONE + f"{self.digest}|".encode() + self.payload


@dataclass(frozen=True)
class IdempotencyClaim:
    """``new``: this request holds the key (a lease) and runs; ``pending``: another request with the key
    is running; ``done``: one committed, ``payload`` is its answer; ``mismatch``: the key was used for
    another body."""

    state: Literal["new", "pending", "done", "mismatch"]
    payload: bytes = b""


PENDING, DONE = b"pending|", b"done|"


def pending_value(digest: str, lease: str) -> bytes:
    """The stored value of a running request's claim."""
    return PENDING + f"{digest}|{lease}".encode()


def read_claim(value: bytes | None, digest: str) -> IdempotencyClaim:
    """The claim a stored idempotency value gives a request with body ``digest`` (None: no value)."""
    if value is None:
        return IdempotencyClaim("new")
    if value.startswith(PENDING):
        same = value[len(PENDING):].split(b"|", 1)[0].decode() == digest
        return IdempotencyClaim("pending" if same else "mismatch")
    stored, _, payload = value[len(DONE):].partition(b"|")
    return IdempotencyClaim("done", payload) if stored.decode() == digest else IdempotencyClaim("mismatch")


@dataclass
class RequestRecord:
    """What one served request adds to its account (committed atomically, all or nothing).

    ``counters``: extra per-account counters that defences add to (PoW bits paid, similar hits, ...);
    ``gauges``: per-account defence values overwritten by each request (coverage, sigma, ...);
    ``history``: projections appended to the account's history stream (similar-query defence);
    ``coverage_bits``: bit offsets set in the account's coverage bitmap (B4B SimHash buckets);
    ``sybil_pairs``: ``"acct_a|acct_b"`` members bumped in the global sybil-pair ranking;
    ``idempotent``: the answer kept for retries of the same ``Idempotency-Key``.
    """

    images: int
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    history: HistoryAppend | None = None
    coverage_bits: list[int] = field(default_factory=list)
    sybil_pairs: list[str] = field(default_factory=list)
    idempotent: IdempotentAnswer | None = None  # stored with the commit, in the same atomic step

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + int(n)


@dataclass(frozen=True)
class HistoryEntry:
    id: str  # stream entry id ("<ms>-<seq>"), increasing
    account: str
    vector: bytes  # float32 bytes


def entry_after(a: str, b: str) -> bool:
    """Stream id ``a`` comes after ``b`` (ids are "<ms>-<seq>")."""
    am, _, aseq = a.partition("-")
    bm, _, bseq = b.partition("-")
    return (int(am), int(aseq or 0)) > (int(bm), int(bseq or 0))


@dataclass(frozen=True)
class CommitResult:
    """``requests``/``images``: the account's use of its rate-limit window after this commit (or at the
    refusal), ``reset_s``: seconds until that window ends (the ``x-ratelimit-*`` headers)."""

    status: Literal["ok", "rate_limited", "revoked", "missing", "superseded"]
    retry_after: float = 0.0
    requests: int = 0
    images: int = 0
    reset_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def window_state(now: float, window_s: int) -> tuple[int, float]:
    """(window index, seconds until it ends)."""
    idx = math.floor(now / window_s)
    return idx, (idx + 1) * window_s - now


def over_limit(limit: RateLimit, used_requests: int, used_images: int, images: int) -> bool:
    if limit.requests is not None and used_requests + 1 > limit.requests:
        return True
    return limit.images is not None and used_images + images > limit.images


class AccountStore(ABC):
    backend: str

    @abstractmethod
    async def add(self, account: Account) -> None:
        """Create; raises :class:`AccountExists` when the name is taken."""

    @abstractmethod
    async def by_key_hash(self, key_hash: str) -> Account | None: ...

    @abstractmethod
    async def get(self, id_or_name: str) -> Account | None: ...

    @abstractmethod
    async def list(self) -> list[Account]: ...

    @abstractmethod
    async def revoke(self, account_id: str) -> bool: ...

    @abstractmethod
    async def usage(self, account_id: str) -> AccountUsage: ...

    @abstractmethod
    async def rate_check(self, account_id: str, limit: RateLimit, images: int) -> float | None:
        """Read-only: seconds to wait when this request would exceed the limit now, else None."""

    @abstractmethod
    async def commit(self, account_id: str, record: RequestRecord, limit: RateLimit) -> CommitResult:
        """Atomically: re-check revocation and rate limit, then count the request."""

    @abstractmethod
    async def idempotency_claim(self, account_id: str, key_id: str, digest: str, lease: str,
                                lease_ms: int) -> IdempotencyClaim:
        """Atomically: take the key under token ``lease`` for ``lease_ms`` when nobody holds it, else say who does."""

    @abstractmethod
    async def idempotency_release(self, account_id: str, key_id: str, digest: str, lease: str) -> None:
        """Drop this request's claim when it did not end in a commit (the request failed; a retry may run)."""

    @abstractmethod
    async def window(self, account_id: str, limit: RateLimit) -> tuple[int, int, float]:
        """Read-only: (requests, images) counted in the account's current window, seconds until it ends."""

    @abstractmethod
    async def ping(self) -> bool: ...

    # ---- defences ------------------------------------------------------------------------------
    @abstractmethod
    async def history_since(self, account_id: str | None, after: str, count: int = 10000) -> builtins.list[HistoryEntry]:
        """History entries after stream id ``after`` ("0-0" = from the start), oldest first, at most ``count``.

        ``account_id=None`` reads the global stream (every account's projections)."""

    @abstractmethod
    async def coverage_bitmap(self, account_id: str) -> bytes:
        """The account's B4B coverage bitmap (bit i = byte i // 8, MSB first, like Redis SETBIT)."""

    @abstractmethod
    async def spend_token(self, token_id: str, ttl_s: float) -> bool:
        """Spend a PoW token once: True the first time, False on every replay (until it expires)."""

    @abstractmethod
    async def add_counters(self, account_id: str, counters: dict[str, int]) -> None:
        """Bump counters outside a served request (challenges issued, refusals)."""

    @abstractmethod
    async def defence_stats(self, account_id: str) -> dict[str, float]:
        """Gauges the defences wrote (coverage, sigma, ...) plus :data:`HISTORY_LEN` and :data:`COVERAGE_BITS`."""

    @abstractmethod
    async def log_queries(self, account_id: str, images: builtins.list[bytes], keep: int) -> None:
        """Append served images (raw uint8 pixels) to the account's query log, keeping its last ``keep``."""

    @abstractmethod
    async def query_log(self, account_id: str) -> builtins.list[bytes]:
        """The account's logged images, oldest first (empty when none were logged)."""

    @abstractmethod
    async def sybil_pairs(self, limit: int = 20) -> builtins.list[tuple[str, int]]:
        """Most frequent ``"acct_a|acct_b"`` pairs sending the same images, with counts."""

    async def close(self) -> None:
        return None
