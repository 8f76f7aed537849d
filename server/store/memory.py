"""Embedded in-process store: the default for a single server process (nothing survives it)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from server.accounts import Account
from server.config import RateLimit
from server.store.base import AccountExists, AccountStore, CommitResult, RequestRecord, over_limit, window_state
from shared.schemas import AccountUsage


class MemoryStore(AccountStore):
    backend = "embedded"

    def __init__(self, clock=time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._accounts: dict[str, Account] = {}
        self._by_key: dict[str, str] = {}
        self._by_name: dict[str, str] = {}
        self._usage: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._windows: dict[tuple[str, int], list[int]] = {}

    async def add(self, account: Account) -> None:
        with self._lock:
            if account.name in self._by_name:
                raise AccountExists(f"an account named {account.name!r} exists")
            self._accounts[account.id] = account
            self._by_key[account.key_hash] = account.id
            self._by_name[account.name] = account.id

    async def by_key_hash(self, key_hash: str) -> Account | None:
        aid = self._by_key.get(key_hash)
        return self._accounts.get(aid) if aid else None

    async def get(self, id_or_name: str) -> Account | None:
        aid = id_or_name if id_or_name in self._accounts else self._by_name.get(id_or_name)
        return self._accounts.get(aid) if aid else None

    async def list(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: (a.created_at, a.name))

    async def revoke(self, account_id: str) -> bool:
        with self._lock:
            acct = self._accounts.get(account_id)
            if acct is None:
                return False
            acct.revoked = True
            return True

    async def usage(self, account_id: str) -> AccountUsage:
        u = dict(self._usage.get(account_id, {}))
        return AccountUsage(requests=u.pop("requests", 0), images=u.pop("images", 0), counters=u)

    def _window(self, account_id: str, limit: RateLimit) -> tuple[list[int], float]:
        idx, retry = window_state(self._clock(), limit.window_s)
        for k in [k for k in self._windows if k[0] == account_id and k[1] < idx]:
            del self._windows[k]
        return self._windows.setdefault((account_id, idx), [0, 0]), retry

    async def rate_check(self, account_id: str, limit: RateLimit, images: int) -> float | None:
        with self._lock:
            used, retry = self._window(account_id, limit)
            return retry if over_limit(limit, used[0], used[1], images) else None

    async def commit(self, account_id: str, record: RequestRecord, limit: RateLimit) -> CommitResult:
        with self._lock:
            acct = self._accounts.get(account_id)
            if acct is None:
                return CommitResult("missing")
            if acct.revoked:
                return CommitResult("revoked")
            used, retry = self._window(account_id, limit)
            if over_limit(limit, used[0], used[1], record.images):
                return CommitResult("rate_limited", retry)
            used[0] += 1
            used[1] += record.images
            u = self._usage[account_id]
            u["requests"] += 1
            u["images"] += record.images
            for k, v in record.counters.items():
                u[k] += v
            return CommitResult("ok")

    async def ping(self) -> bool:
        return True
