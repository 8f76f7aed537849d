"""Account store: one interface, two backends (Redis; embedded in-process)."""

from server.store.base import (
    AccountExists,
    AccountStore,
    CommitResult,
    HistoryAppend,
    HistoryEntry,
    IdempotencyClaim,
    IdempotentAnswer,
    RequestRecord,
    StoreUnavailable,
)


def open_store(redis_url: str | None, prefix: str = "heist", timeout_s: float = 1.0) -> AccountStore:
    """Redis when a URL is given (a Redis Cluster for ``redis+cluster://``), else the embedded in-process store."""
    if redis_url:
        from server.store.redis_backend import RedisStore

        return RedisStore(redis_url, prefix=prefix, timeout_s=timeout_s)
    from server.store.memory import MemoryStore

    return MemoryStore()


__all__ = ["AccountExists", "AccountStore", "CommitResult", "HistoryAppend", "HistoryEntry", "IdempotencyClaim",
           "IdempotentAnswer", "RequestRecord", "StoreUnavailable",
           "open_store"]
