"""Embedded in-process store: the default for a single server process (nothing survives it)."""

from __future__ import annotations

import builtins
import heapq
import threading
import time
from collections import defaultdict, deque

from server.accounts import Account
from server.config import RateLimit
from server.store.base import (
    COVERAGE_BITS,
    HISTORY_LEN,
    AccountExists,
    AccountStore,
    CommitResult,
    HistoryEntry,
    IdempotencyClaim,
    RequestRecord,
    entry_after,
    over_limit,
    pending_value,
    read_claim,
    window_state,
)
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
        self._windows: dict[str, tuple[int, list[int]]] = {}  # account -> (window index, [requests, images])
        self._gauges: dict[str, dict[str, float]] = defaultdict(dict)
        self._history: dict[str, deque[HistoryEntry]] = {}
        self._idem: dict[tuple[str, str], tuple[float, bytes]] = {}  # (account, key id) -> (expiry, value)
        self._global: deque[HistoryEntry] = deque()
        self._seq = 0
        self._bitmaps: dict[str, bytearray] = defaultdict(bytearray)
        self._spent: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expiry, token) over _spent
        self._pairs: dict[str, int] = defaultdict(int)
        self._qlog: dict[str, deque[bytes]] = {}

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

    def _window(self, account_id: str, limit: RateLimit) -> tuple[builtins.list[int], float]:
        idx, retry = window_state(self._clock(), limit.window_s)
        current = self._windows.get(account_id)
        if current is None or current[0] != idx:  # a new window: the old one is dropped
            current = self._windows[account_id] = (idx, [0, 0])
        return current[1], retry

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
            if record.idempotent is not None:
                held = self._idem.get((account_id, record.idempotent.key_id))
                if held is not None and held[0] > self._clock() and held[1] != record.idempotent.pending():
                    return CommitResult("superseded")
            used, retry = self._window(account_id, limit)
            if over_limit(limit, used[0], used[1], record.images):
                return CommitResult("rate_limited", retry, used[0], used[1], retry)
            used[0] += 1
            used[1] += record.images
            u = self._usage[account_id]
            u["requests"] += 1
            u["images"] += record.images
            for k, v in record.counters.items():
                u[k] += v
            self._gauges[account_id].update({k: float(v) for k, v in record.gauges.items()})
            if record.history is not None:
                self._append(account_id, record.history)
            bm = self._bitmaps[account_id]
            for off in record.coverage_bits:
                byte = off >> 3
                if byte >= len(bm):
                    bm.extend(b"\0" * (byte + 1 - len(bm)))
                bm[byte] |= 0x80 >> (off & 7)
            for pair in record.sybil_pairs:
                self._pairs[pair] += 1
            if record.idempotent is not None:
                a = record.idempotent
                self._idem[(account_id, a.key_id)] = (self._clock() + a.ttl_ms / 1000, a.done())
            return CommitResult("ok", 0.0, used[0], used[1], retry)

    async def idempotency_claim(self, account_id: str, key_id: str, digest: str, lease: str,
                                lease_ms: int) -> IdempotencyClaim:
        with self._lock:
            now = self._clock()
            if len(self._idem) > 4096:  # drop expired entries now and then
                self._idem = {k: v for k, v in self._idem.items() if v[0] > now}
            held = self._idem.get((account_id, key_id))
            value = held[1] if held is not None and held[0] > now else None
            if value is None:
                self._idem[(account_id, key_id)] = (now + lease_ms / 1000, pending_value(digest, lease))
            return read_claim(value, digest)

    async def idempotency_release(self, account_id: str, key_id: str, digest: str, lease: str) -> None:
        with self._lock:
            held = self._idem.get((account_id, key_id))
            if held is not None and held[1] == pending_value(digest, lease):
                del self._idem[(account_id, key_id)]

    async def window(self, account_id: str, limit: RateLimit) -> tuple[int, int, float]:
        with self._lock:
            used, retry = self._window(account_id, limit)
            return used[0], used[1], retry

    def _append(self, account_id: str, h) -> None:
        hist = self._history.get(account_id)
        if hist is None or hist.maxlen != h.maxlen:
            hist = self._history[account_id] = deque(hist or (), maxlen=h.maxlen)
        ms = int(self._clock() * 1000)
        for v in h.vectors:
            self._seq += 1
            e = HistoryEntry(f"{ms}-{self._seq}", account_id, v.astype("<f4").tobytes())
            hist.append(e)
            if h.global_maxlen:
                self._global.append(e)
                while len(self._global) > h.global_maxlen:
                    self._global.popleft()

    async def history_since(self, account_id: str | None, after: str, count: int = 10000) -> builtins.list[HistoryEntry]:
        with self._lock:
            src = self._global if account_id is None else self._history.get(account_id, ())
            out = []
            for e in reversed(src):  # newest first: stop at the first entry already seen
                if not entry_after(e.id, after):
                    break
                out.append(e)
            out.reverse()
            return out[:count]

    async def coverage_bitmap(self, account_id: str) -> bytes:
        with self._lock:
            return bytes(self._bitmaps.get(account_id, b""))

    async def spend_token(self, token_id: str, ttl_s: float) -> bool:
        with self._lock:
            now = self._clock()
            if token_id in self._spent and self._spent[token_id] > now:
                return False
            self._spent[token_id] = now + max(1.0, ttl_s)
            heapq.heappush(self._expiry, (self._spent[token_id], token_id))
            while self._expiry and self._expiry[0][0] <= now:  # forget expired tokens, oldest first
                exp, tok = heapq.heappop(self._expiry)
                if self._spent.get(tok) == exp:
                    del self._spent[tok]
            return True

    async def add_counters(self, account_id: str, counters: dict[str, int]) -> None:
        with self._lock:
            u = self._usage[account_id]
            for k, v in counters.items():
                u[k] += int(v)

    async def defence_stats(self, account_id: str) -> dict[str, float]:
        with self._lock:
            stats = dict(self._gauges.get(account_id, {}))
            stats[HISTORY_LEN] = float(len(self._history.get(account_id, ())))
            stats[COVERAGE_BITS] = float(int.from_bytes(self._bitmaps.get(account_id, b""), "big").bit_count())
            return stats

    async def log_queries(self, account_id: str, images: builtins.list[bytes], keep: int) -> None:
        with self._lock:
            log = self._qlog.get(account_id)
            if log is None or log.maxlen != keep:
                log = self._qlog[account_id] = deque(log or (), maxlen=keep)
            log.extend(images)

    async def query_log(self, account_id: str) -> builtins.list[bytes]:
        with self._lock:
            return list(self._qlog.get(account_id, ()))

    async def sybil_pairs(self, limit: int = 20) -> builtins.list[tuple[str, int]]:
        with self._lock:
            return sorted(self._pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    async def ping(self) -> bool:
        return True
