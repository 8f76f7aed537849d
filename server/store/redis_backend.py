"""Redis backend (the testbed's real store; shared by every API replica).

Key layout (``P`` = prefix, default ``heist``; per-account keys are hash-tagged ``{id}`` so one
account's keys live in one Redis Cluster slot and its Lua scripts stay single-slot):

- ``P:acct:{id}``            HASH  id name tier key_hash created_at revoked(0/1)
- ``P:acct:{id}:usage``      HASH  requests images <defence counters...>
- ``P:acct:{id}:rl:<n>``     HASH  requests images of fixed window n (expires after 2 windows)
- ``P:key:<sha256(key)>``    STRING account id
- ``P:name:<name>``          STRING account id
- ``P:accounts``             SET   account ids

Window numbers come from Redis ``TIME`` so replicas agree on windows without trusting their
clocks. All failures of the connection surface as :class:`StoreUnavailable` (-> 503).
"""

from __future__ import annotations

import functools

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.accounts import Account
from server.config import RateLimit
from server.store.base import AccountExists, AccountStore, CommitResult, RequestRecord, StoreUnavailable
from shared.schemas import AccountUsage

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], unpack(ARGV, 3))
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# shared by check and commit: returns used requests, used images, retry-after, window key
_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local w = tonumber(ARGV[2])
local idx = math.floor(now / w)
local rk = ARGV[1] .. idx
local retry = (idx + 1) * w - now
local used = redis.call('HMGET', rk, 'requests', 'images')
local rq = tonumber(used[1] or '0')
local im = tonumber(used[2] or '0')
local n = tonumber(ARGV[5])
local over = (ARGV[3] ~= '0' and rq + 1 > tonumber(ARGV[3])) or (ARGV[4] ~= '0' and im + n > tonumber(ARGV[4]))
"""

_CHECK = _WINDOW + """
if over then return tostring(retry) end
return false
"""

_COMMIT = """
local st = redis.call('HGET', KEYS[1], 'revoked')
if not st then return {'missing', '0'} end
if st == '1' then return {'revoked', '0'} end
""" + _WINDOW + """
if over then return {'rate_limited', tostring(retry)} end
redis.call('HINCRBY', rk, 'requests', 1)
redis.call('HINCRBY', rk, 'images', n)
redis.call('EXPIRE', rk, w * 2)
redis.call('HINCRBY', KEYS[2], 'requests', 1)
redis.call('HINCRBY', KEYS[2], 'images', n)
for i = 6, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return {'ok', '0'}
"""


def _unavailable(fn):
    @functools.wraps(fn)
    async def wrapper(self, *a, **kw):
        try:
            return await fn(self, *a, **kw)
        except RedisError as e:
            raise StoreUnavailable(f"redis unavailable: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise StoreUnavailable(f"redis unavailable: {e}") from e

    return wrapper


class RedisStore(AccountStore):
    backend = "redis"

    def __init__(self, url: str, prefix: str = "heist", timeout_s: float = 1.0) -> None:
        self.url = url
        self.p = prefix
        self.r = aioredis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                   socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1),
                                   health_check_interval=30)
        self._create = self.r.register_script(_CREATE)
        self._check = self.r.register_script(_CHECK)
        self._commit = self.r.register_script(_COMMIT)

    def _acct(self, aid: str) -> str:
        return f"{self.p}:acct:{{{aid}}}"

    @_unavailable
    async def add(self, account: Account) -> None:
        flat = [x for kv in account.to_hash().items() for x in kv]
        keys = [f"{self.p}:name:{account.name}", f"{self.p}:key:{account.key_hash}", self._acct(account.id), f"{self.p}:accounts"]
        if not await self._create(keys=keys, args=[account.id, "", *flat]):
            raise AccountExists(f"an account named {account.name!r} exists")

    async def _load(self, aid: str | None) -> Account | None:
        if not aid:
            return None
        h = await self.r.hgetall(self._acct(aid))
        return Account.from_hash(h) if h else None

    @_unavailable
    async def by_key_hash(self, key_hash: str) -> Account | None:
        return await self._load(await self.r.get(f"{self.p}:key:{key_hash}"))

    @_unavailable
    async def get(self, id_or_name: str) -> Account | None:
        acct = await self._load(id_or_name) if id_or_name.startswith("acct_") else None
        return acct or await self._load(await self.r.get(f"{self.p}:name:{id_or_name}"))

    @_unavailable
    async def list(self) -> list[Account]:
        ids = sorted(await self.r.smembers(f"{self.p}:accounts"))
        async with self.r.pipeline(transaction=False) as pipe:
            for aid in ids:
                pipe.hgetall(self._acct(aid))
            rows = await pipe.execute()
        return sorted((Account.from_hash(h) for h in rows if h), key=lambda a: (a.created_at, a.name))

    @_unavailable
    async def revoke(self, account_id: str) -> bool:
        key = self._acct(account_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            pipe.hset(key, "revoked", "1")
            exists, _ = await pipe.execute()
        if not exists:
            await self.r.delete(key)  # HSET on a missing key created a stub: drop it
        return bool(exists)

    @_unavailable
    async def usage(self, account_id: str) -> AccountUsage:
        u = {k: int(v) for k, v in (await self.r.hgetall(f"{self._acct(account_id)}:usage")).items()}
        return AccountUsage(requests=u.pop("requests", 0), images=u.pop("images", 0), counters=u)

    def _rate_args(self, account_id: str, limit: RateLimit, images: int) -> list:
        return [f"{self._acct(account_id)}:rl:", limit.window_s, limit.requests or 0, limit.images or 0, images]

    @_unavailable
    async def rate_check(self, account_id: str, limit: RateLimit, images: int) -> float | None:
        if limit.requests is None and limit.images is None:
            return None
        r = await self._check(keys=[self._acct(account_id)], args=self._rate_args(account_id, limit, images))
        return float(r) if r else None

    @_unavailable
    async def commit(self, account_id: str, record: RequestRecord, limit: RateLimit) -> CommitResult:
        extra = [x for kv in record.counters.items() for x in kv]
        key = self._acct(account_id)
        status, retry = await self._commit(keys=[key, f"{key}:usage"],
                                           args=self._rate_args(account_id, limit, record.images) + extra)
        return CommitResult(status, float(retry))

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.r.aclose()
