"""The account-store interface.

Per account: profile + key hash, usage counters, rate-limit windows. Everything one request
writes goes through :meth:`AccountStore.commit` as *one* atomic operation (a Lua script on Redis,
one critical section in the embedded store) that re-checks revocation and the rate limit, so
concurrent replicas never over-admit and a crash never leaves a half-counted request.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from server.accounts import Account
from server.config import RateLimit
from shared.schemas import AccountUsage


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached; the API answers 503 (fail closed)."""


class AccountExists(ValueError):
    pass


@dataclass
class RequestRecord:
    """What one served request adds to its account (committed atomically).

    ``counters``: extra per-account counters that defences add to (PoW bits paid, flags, ...).
    """

    images: int
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitResult:
    status: Literal["ok", "rate_limited", "revoked", "missing"]
    retry_after: float = 0.0

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
    async def ping(self) -> bool: ...

    async def close(self) -> None:
        return None
