"""Redis backend (the testbed's real store; shared by every API replica): one Redis (``redis://``,
``rediss://``, ``unix://``) or a Redis Cluster (``redis+cluster://host:port``, any node; the client learns
the slot map from it and follows MOVED/ASK).

Key layout (``P`` = prefix, default ``heist``; per-account keys are hash-tagged ``{id}`` so one
account's keys live in one Redis Cluster slot and its Lua scripts stay single-slot; the same names on
one Redis and on a cluster, so data moves between them unchanged):

- ``P:acct:{id}``            HASH  id name tier key_hash created_at revoked(0/1)
- ``P:acct:{id}:usage``      HASH  requests images <defence counters...>
- ``P:acct:{id}:rl:<n>``     HASH  requests images of fixed window n (expires after 2 windows)
- ``P:key:<sha256(key)>``    STRING account id
- ``P:name:<name>``          STRING account id
- ``P:accounts``             SET   account ids
- ``P:acct:{id}:dstats``     HASH  defence gauges overwritten per request (b4b_coverage, b4b_sigma, pow_bits, ...)
- ``P:acct:{id}:hist``       STREAM head projections of this account, one entry per image (field ``z``:
                                   float32 bytes), ``MAXLEN ~`` bounded; FAISS views catch up with XRANGE
- ``P:acct:{id}:cov``        STRING B4B coverage bitmap: bit ``set * 2**hyperplanes + bucket`` (SETBIT/BITCOUNT)
- ``P:hist``                 STREAM global history (fields ``a`` account id, ``z``), for the sybil index
- ``P:sybil``                ZSET  ``acct_a|acct_b`` -> how many images both sent
- ``P:pow:<sha256(token)>``  STRING spent PoW token (``SET NX`` with TTL until the token expires)
- ``P:acct:{id}:idem:<k>``   STRING ``pending|<body sha256>|<lease>`` while a request with Idempotency-Key
                                   sha256 ``k`` runs (TTL ``idempotency_lease_s``), then
                                   ``done|<body sha256>|<answer>``, written by the commit script itself
                                   (TTL ``idempotency_ttl_s``); the commit counts nothing when the key
                                   is held under another lease

Slots: ``P:acct:{id}*`` (profile, usage, windows, gauges, history, bitmap, idempotency keys) share the slot
of ``{id}``; ``P:key:<sha>``, ``P:name:<name>``, ``P:accounts``, ``P:hist``, ``P:sybil`` and each
``P:pow:<sha>`` have a slot each (single-key commands only, or the steps below); ``list`` pipelines one
``HGETALL`` per account, which a cluster client groups by node.

What is atomic where:

- one Redis: every write of one request (usage, window, gauges, history, bitmap, idempotent answer,
  global stream, sybil pairs) is ONE Lua script; account creation is one script (``_CREATE``);
- cluster: the same commit script, confined to the account's slot (KEYS 5 and 7 repeat the account's
  key and go untouched), stays atomic for everything per account, the rate limit and the idempotent
  answer included; a counted request's global writes (``XADD P:hist``, ``ZINCRBY P:sybil``) follow in a
  second, best-effort step (:meth:`RedisStore._commit_global`). Creation runs in ordered steps with
  ``SET NX`` on the name as its commit point (:meth:`RedisStore._add_clustered`). Scripts and
  transactions whose keys span slots are refused by the client before they are sent (and by the server).

Window numbers come from Redis ``TIME`` so replicas agree on windows without trusting their
clocks. All failures of the connection surface as :class:`StoreUnavailable` (-> 503).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import CrossSlotTransactionError, RedisClusterException, RedisError

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
    StoreUnavailable,
    pending_value,
    read_claim,
)
from shared.schemas import AccountUsage

log = logging.getLogger("heist.store")

# URL schemes of a Redis Cluster (any node of it; the client learns the slot map from it)
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)

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

_USED = _WINDOW + """
return {tostring(rq), tostring(im), tostring(retry)}
"""

_COMMIT = """
local st = redis.call('HGET', KEYS[1], 'revoked')
if not st then return {'missing', '0'} end
if st == '1' then return {'revoked', '0'} end
local na = #ARGV
if ARGV[na] ~= '0' then  -- idempotent: count only while this request still holds its key
  local cur = redis.call('GET', KEYS[8])
  if cur and cur ~= ARGV[na] then return {'superseded', '0'} end
end
""" + _WINDOW + """
if over then return {'rate_limited', tostring(retry), tostring(rq), tostring(im), tostring(retry)} end
redis.call('HINCRBY', rk, 'requests', 1)
redis.call('HINCRBY', rk, 'images', n)
redis.call('EXPIRE', rk, w * 2)
redis.call('HINCRBY', KEYS[2], 'requests', 1)
redis.call('HINCRBY', KEYS[2], 'images', n)
local i = 6
local nc = tonumber(ARGV[i]); i = i + 1
for _ = 1, nc do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
local ng = tonumber(ARGV[i]); i = i + 1
for _ = 1, ng do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
local aid = ARGV[i]; local maxlen = ARGV[i + 1]; local gmax = ARGV[i + 2]; local nv = tonumber(ARGV[i + 3]); i = i + 4
for _ = 1, nv do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*', 'z', ARGV[i])
  if gmax ~= '0' then redis.call('XADD', KEYS[5], 'MAXLEN', '~', gmax, '*', 'a', aid, 'z', ARGV[i]) end
  i = i + 1
end
local nb = tonumber(ARGV[i]); i = i + 1
for _ = 1, nb do redis.call('SETBIT', KEYS[6], ARGV[i], 1); i = i + 1 end
local np = tonumber(ARGV[i]); i = i + 1
for _ = 1, np do redis.call('ZINCRBY', KEYS[7], 1, ARGV[i]); i = i + 1 end
if ARGV[i] == '1' then redis.call('SET', KEYS[8], ARGV[i + 1], 'PX', ARGV[i + 2]) end
return {'ok', '0', tostring(rq + 1), tostring(im + n), tostring(retry)}
"""


_IDEM_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return false end
return v
"""

_IDEM_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def _unavailable(fn):
    @functools.wraps(fn)
    async def wrapper(self, *a, **kw):
        try:
            if self.clustered and not self._initialized:
                await self._initialize()
            return await fn(self, *a, **kw)
        except RedisError as e:
            raise StoreUnavailable(f"redis unavailable: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise StoreUnavailable(f"redis unavailable: {e}") from e
        except RedisClusterException as e:  # not a RedisError: no reachable node, slot not covered, ...
            if isinstance(e, CrossSlotTransactionError) or "same key slot" in str(e):
                raise  # keys of several slots in one script or transaction: a layout bug, not an outage
            raise StoreUnavailable(f"redis cluster unavailable: {type(e).__name__}: {e}") from e

    return wrapper


class RedisStore(AccountStore):
    backend = "redis"

    def __init__(self, url: str, prefix: str = "heist", timeout_s: float = 1.0) -> None:
        self.url = url
        self.p = prefix
        self.clustered = is_cluster_url(url)
        self.global_write_failures = 0  # clustered: second commit steps (global stream, sybil ZSET) that failed
        self._initialized = not self.clustered
        self._init_task: asyncio.Future | None = None
        opts: dict[str, Any] = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 1))
        self.r: aioredis.Redis | RedisCluster
        self.rb: aioredis.Redis | RedisCluster
        if self.clustered:
            node = url.replace("+cluster://", "://", 1)
            self.r = RedisCluster.from_url(node, decode_responses=True, **opts)
            self.rb = RedisCluster.from_url(node, decode_responses=False, **opts)
        else:
            self.r = aioredis.from_url(url, decode_responses=True, health_check_interval=30, **opts)
            # binary-safe twin for streams and bitmaps (float32 bytes are not UTF-8)
            self.rb = aioredis.from_url(url, decode_responses=False, **opts)
        self._create = self.r.register_script(_CREATE)
        self._check = self.r.register_script(_CHECK)
        self._commit = self.r.register_script(_COMMIT)
        self._used = self.r.register_script(_USED)
        self._idem_claim = self.rb.register_script(_IDEM_CLAIM)  # binary: the answer is float32 bytes
        self._idem_release = self.rb.register_script(_IDEM_RELEASE)

    async def _initialize(self) -> None:
        """Clustered: load the slot map once, before the first command, every concurrent caller awaiting the same
        load. redis-py (8.1) sends the commands of a cold RedisCluster client without their slot, and their
        concurrent MOVED answers re-initialise it under each other's feet (found on a real cluster: "Connection
        lost", ``AttributeError`` on a closed connection); after this, commands go straight to their slot's node.
        A failed load is retried by the next call."""
        if self._init_task is None:
            self._init_task = asyncio.ensure_future(asyncio.gather(self.r.initialize(), self.rb.initialize()))
        task = self._init_task
        try:
            await asyncio.shield(task)
        except BaseException:
            if self._init_task is task and task.done():
                self._init_task = None
            raise
        self._initialized = True

    def _acct(self, aid: str) -> str:
        return f"{self.p}:acct:{{{aid}}}"

    def _idem_key(self, aid: str, key_id: str) -> str:
        return f"{self._acct(aid)}:idem:{key_id}"

    @_unavailable
    async def add(self, account: Account) -> None:
        name, key = f"{self.p}:name:{account.name}", f"{self.p}:key:{account.key_hash}"
        if self.clustered:
            return await self._add_clustered(account, name, key)
        flat = [x for kv in account.to_hash().items() for x in kv]
        keys = [name, key, self._acct(account.id), f"{self.p}:accounts"]
        if not await self._create(keys=keys, args=[account.id, "", *flat]):
            raise AccountExists(f"an account named {account.name!r} exists")

    async def _add_clustered(self, account: Account, name: str, key: str) -> None:
        """Creation on a cluster, where the name, key, profile and accounts-set keys lie in four slots:
        no script can hold them all, so it runs in steps ordered for the failures between them.

        1. the profile (``P:acct:{id}``) and the key hash (``P:key:<sha>``): both new and unreachable
           (nobody knows the fresh id, nobody holds the key: it is shown only after ``add`` returns);
        2. ``SET P:name:<name> id NX``, the uniqueness guard and the commit point: a taken name deletes
           the two keys of step 1 and raises :class:`AccountExists`;
        3. ``SADD P:accounts id`` (the admin listing).

        A failure (``StoreUnavailable``) after step 1 leaves unreachable keys; after step 2, an account
        that ``get``/``by_key_hash`` find but ``list`` does not show and whose key nobody received: the
        name stays taken (an admin finds the account by name and can revoke it). Two creations of one
        name race only in step 2, where exactly one ``SET NX`` wins."""
        acct = self._acct(account.id)
        await self.r.hset(acct, items=[x for kv in account.to_hash().items() for x in kv])
        await self.r.set(key, account.id)
        if not await self.r.set(name, account.id, nx=True):
            await self.r.delete(acct)  # one DEL per slot: a multi-key DEL would be CROSSSLOT
            await self.r.delete(key)
            raise AccountExists(f"an account named {account.name!r} exists")
        await self.r.sadd(f"{self.p}:accounts", account.id)

    async def _load(self, aid: str | None) -> Account | None:
        if not aid:
            return None
        h = cast(dict[str, str], await self.r.hgetall(self._acct(aid)))  # self.r decodes: str keys, str values
        return Account.from_hash(h) if h else None

    @_unavailable
    async def by_key_hash(self, key_hash: str) -> Account | None:
        return await self._load(cast(str | None, await self.r.get(f"{self.p}:key:{key_hash}")))

    @_unavailable
    async def get(self, id_or_name: str) -> Account | None:
        acct = await self._load(id_or_name) if id_or_name.startswith("acct_") else None
        return acct or await self._load(cast(str | None, await self.r.get(f"{self.p}:name:{id_or_name}")))

    @_unavailable
    async def list(self) -> list[Account]:
        ids = sorted(cast(set[str], await self.r.smembers(f"{self.p}:accounts")))
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

    def _rate_args(self, account_id: str, limit: RateLimit, images: int) -> builtins.list:
        return [f"{self._acct(account_id)}:rl:", limit.window_s, limit.requests or 0, limit.images or 0, images]

    @_unavailable
    async def rate_check(self, account_id: str, limit: RateLimit, images: int) -> float | None:
        if limit.requests is None and limit.images is None:
            return None
        r = await self._check(keys=[self._acct(account_id)], args=self._rate_args(account_id, limit, images))
        return float(r) if r else None

    @_unavailable
    async def commit(self, account_id: str, record: RequestRecord, limit: RateLimit) -> CommitResult:
        key = self._acct(account_id)
        args: list = self._rate_args(account_id, limit, record.images)
        args += [len(record.counters), *(x for kv in record.counters.items() for x in kv)]
        args += [len(record.gauges), *(x for k, v in record.gauges.items() for x in (k, repr(float(v))))]
        h = record.history
        vecs = [] if h is None else [v.astype("<f4").tobytes() for v in h.vectors]
        gmax = h.global_maxlen if h else 0
        pairs = record.sybil_pairs
        if self.clustered:  # the script stays in the account's slot; the global keys follow in a second step
            gmax, pairs = 0, []
        args += [account_id, h.maxlen if h else 1, gmax, len(vecs), *vecs]
        args += [len(record.coverage_bits), *record.coverage_bits]
        args += [len(pairs), *pairs]
        a = record.idempotent
        args += ["0"] if a is None else ["1", a.done(), a.ttl_ms, a.pending()]
        # clustered: KEYS[5] and KEYS[7] (never touched with gmax 0 and no pairs) repeat the account's key,
        # since a cluster refuses a script whose keys lie in several slots
        hist, sybil = (key, key) if self.clustered else (f"{self.p}:hist", f"{self.p}:sybil")
        keys = [key, f"{key}:usage", f"{key}:dstats", f"{key}:hist", hist, f"{key}:cov", sybil,
                self._idem_key(account_id, a.key_id if a else "-")]
        status, retry, *used = await self._commit(keys=keys, args=args)
        if not used:  # missing or revoked: no window was read
            return CommitResult(status, float(retry))
        if self.clustered and status == "ok":
            await self._commit_global(account_id, vecs if h and h.global_maxlen else [],
                                      h.global_maxlen if h else 0, record.sybil_pairs)
        return CommitResult(status, float(retry), int(used[0]), int(used[1]), float(used[2]))

    async def _commit_global(self, account_id: str, vecs: builtins.list[bytes], gmax: int,
                             pairs: builtins.list[str]) -> None:
        """Clustered: the second step of a counted request, its global writes (``P:hist`` and ``P:sybil``, each
        in its own slot) in one pipeline after the account's script. Best effort: the request is already
        counted and answered, so a failure here is logged and counted (``global_write_failures``), never
        raised; the sybil index then misses these images, and a reader may see the account's entries
        before the global ones."""
        if not vecs and not pairs:
            return
        try:
            async with self.rb.pipeline(transaction=False) as pipe:
                for v in vecs:
                    pipe.xadd(f"{self.p}:hist", {"a": account_id, "z": v}, maxlen=gmax, approximate=True)
                for pair in pairs:
                    pipe.zincrby(f"{self.p}:sybil", 1, pair)
                await pipe.execute()
        except (RedisError, RedisClusterException, OSError) as e:
            self.global_write_failures += 1
            log.warning("global history/sybil write lost for %s (the request is counted): %s: %s",
                        account_id, type(e).__name__, e)

    @_unavailable
    async def idempotency_claim(self, account_id: str, key_id: str, digest: str, lease: str,
                                lease_ms: int) -> IdempotencyClaim:
        value = await self._idem_claim(keys=[self._idem_key(account_id, key_id)],
                                       args=[pending_value(digest, lease), lease_ms])
        return read_claim(value or None, digest)

    @_unavailable
    async def idempotency_release(self, account_id: str, key_id: str, digest: str, lease: str) -> None:
        await self._idem_release(keys=[self._idem_key(account_id, key_id)], args=[pending_value(digest, lease)])

    @_unavailable
    async def window(self, account_id: str, limit: RateLimit) -> tuple[int, int, float]:
        rq, im, reset = await self._used(keys=[self._acct(account_id)], args=self._rate_args(account_id, limit, 0))
        return int(rq), int(im), float(reset)

    @_unavailable
    async def history_since(self, account_id: str | None, after: str, count: int = 10000) -> builtins.list[HistoryEntry]:
        key = f"{self.p}:hist" if account_id is None else f"{self._acct(account_id)}:hist"
        # self.rb does not decode: stream ids, field names and values are bytes
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]],
                    await self.rb.xrange(key, min=f"({after}", max="+", count=count))
        out = []
        for eid, fields in rows:
            out.append(HistoryEntry(eid.decode(), fields.get(b"a", (account_id or "").encode()).decode(), fields[b"z"]))
        return out

    @_unavailable
    async def coverage_bitmap(self, account_id: str) -> bytes:
        return cast(bytes | None, await self.rb.get(f"{self._acct(account_id)}:cov")) or b""

    @_unavailable
    async def spend_token(self, token_id: str, ttl_s: float) -> bool:
        ms = max(1000, int(ttl_s * 1000))
        return bool(await self.r.set(f"{self.p}:pow:{token_id}", "1", nx=True, px=ms))

    @_unavailable
    async def add_counters(self, account_id: str, counters: dict[str, int]) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            for k, v in counters.items():
                pipe.hincrby(f"{self._acct(account_id)}:usage", k, int(v))
            await pipe.execute()

    @_unavailable
    async def log_queries(self, account_id: str, images: builtins.list[bytes], keep: int) -> None:
        key = f"{self._acct(account_id)}:qlog"  # the account's slot on a cluster, like its other keys
        async with self.rb.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *images)
            pipe.ltrim(key, -keep, -1)
            await pipe.execute()

    @_unavailable
    async def query_log(self, account_id: str) -> builtins.list[bytes]:
        raw = await self.rb.lrange(f"{self._acct(account_id)}:qlog", 0, -1)
        return [v if isinstance(v, bytes) else v.encode() for v in raw]  # rb answers bytes

    @_unavailable
    async def defence_stats(self, account_id: str) -> dict[str, float]:
        key = self._acct(account_id)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(f"{key}:dstats")
            pipe.xlen(f"{key}:hist")
            pipe.bitcount(f"{key}:cov")
            gauges, hlen, bits = await pipe.execute()
        stats = {k: float(v) for k, v in gauges.items()}
        stats[HISTORY_LEN] = float(hlen)
        stats[COVERAGE_BITS] = float(bits)
        return stats

    @_unavailable
    async def sybil_pairs(self, limit: int = 20) -> builtins.list[tuple[str, int]]:
        rows = cast(list[tuple[str, float]], await self.r.zrevrange(f"{self.p}:sybil", 0, limit - 1, withscores=True))
        return [(m, int(s)) for m, s in rows]

    async def ping(self) -> bool:
        try:
            if self.clustered and not self._initialized:
                await self._initialize()
            return bool(await self.r.ping())
        except (RedisError, RedisClusterException, OSError):  # a cluster with no reachable node: not ready
            return False

    async def close(self) -> None:
        await self.r.aclose()
        await self.rb.aclose()
