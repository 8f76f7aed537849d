"""HTTP client of the victim API (v1) for customers, the attacker and the defender.

``ApiClient`` is async (httpx) with bounded concurrency. ``embed`` splits images into requests of
at most ``batch_size`` (and the server's ``max_images_per_request``), sends them concurrently,
and returns one float32 matrix in input order. Per request it

- retries 429/503 honouring ``Retry-After`` (plus jittered exponential backoff when the header is
  missing) and transport errors, up to ``max_retries`` tries or ``max_wait_s`` of waiting in total,
  then raises :class:`ApiGiveUp`;
- sends one ``Idempotency-Key`` per logical request, the same on every retry, so a request whose
  answer was lost (a replica killed mid-request, a 502 from a load balancer) is charged once: the
  server replays the committed answer; 502, 504 and 409 ``idempotency_in_progress`` are retried;
- solves 428 proof-of-work challenges (HashCash over SHA-256 from :mod:`shared.pow`; several
  processes search disjoint nonces when ``pow_workers > 1``) and resends the *same* body bytes
  with ``X-PoW-Solution: <token>:<nonce>``;
- raises :class:`ApiAuthError` on 401/403, :class:`ApiRequestError` on other 4xx, and
  :class:`ApiResponseError` when an answer has the wrong number of rows, wrong dimension or
  non-finite values;
- counts everything in :attr:`ApiClient.stats` (requests, images, retries, PoW challenges,
  hashes and seconds, wall time).

``budget`` (images) stops a client before it sends a request that would pass it
(:class:`BudgetExceeded`), so an attack cannot overspend by accident.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np

from shared import pow as pow_mod
from shared.images import encode_image
from shared.schemas import ModelInfo, ModelList, decode_embeddings

POW_CHUNK = 1 << 15  # nonces per worker per round of the multi-process solver


# ---- errors -------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error answer of the API (``{"error": {type, message, param}}``) or a client-side failure."""

    def __init__(self, status: int | None, type: str, message: str, param: str | None = None) -> None:
        where = f"HTTP {status} " if status else ""
        super().__init__(f"{where}{type}: {message}" + (f" (param {param})" if param else ""))
        self.status, self.type, self.message, self.param = status, type, message, param


class ApiAuthError(ApiError):
    """401/403: missing, invalid or revoked key, or an output the tier does not allow."""


class ApiRequestError(ApiError):
    """Another 4xx: the request itself is wrong (bad image, too many images, ...)."""


class ApiResponseError(ApiError):
    """A 200 whose content is not usable (row count, dimension, NaN/inf, not JSON)."""


class ApiGiveUp(ApiError):
    """Retries exhausted (429/503/transport errors/PoW): the server kept refusing."""


class BudgetExceeded(ApiError):
    """The client's image budget would be passed by the next request."""


# ---- stats --------------------------------------------------------------------------------------

@dataclass
class ClientStats:
    requests: int = 0          # HTTP POSTs to /v1/embeddings (every try)
    ok_requests: int = 0       # answered 200
    images: int = 0            # images in 200 answers (what was paid for)
    retries: int = 0           # 429/503/transport retries
    rate_limited: int = 0      # 429 answers
    unavailable: int = 0       # 503 answers
    bad_gateway: int = 0       # 502/504 answers (a load balancer lost the replica)
    replayed: int = 0          # 200 answers replayed by the server for a retried Idempotency-Key
    waited_s: float = 0.0      # seconds slept because of Retry-After/backoff
    pow_challenges: int = 0
    pow_hashes: int = 0
    pow_seconds: float = 0.0
    pow_max_bits: int = 0
    wall: float = 0.0          # seconds spent inside embed()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["waited_s"] = round(self.waited_s, 3)
        d["pow_seconds"] = round(self.pow_seconds, 3)
        d["wall"] = round(self.wall, 3)
        return d


IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "idempotent-replayed"


# ---- PoW ----------------------------------------------------------------------------------------

def _solve_chunk(token: str, bits: int, start: int, step: int, tries: int) -> tuple[int | None, int]:
    r = pow_mod.solve(token, bits, start=start, step=step, max_tries=tries)
    return (r[0], r[1]) if r is not None else (None, tries)


class PowSolver:
    """HashCash solver: in a thread (one worker) or over ``workers`` processes searching disjoint nonces."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"pow_workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: Executor | None = None

    async def solve(self, token: str, bits: int) -> tuple[int, int]:
        """(nonce, hashes tried)."""
        if self.workers == 1:
            r = await asyncio.to_thread(pow_mod.solve, token, bits)
            assert r is not None
            return r
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers)
        loop = asyncio.get_running_loop()
        k, base, total = self.workers, 0, 0
        while True:
            futs = [loop.run_in_executor(self._pool, _solve_chunk, token, bits, base + i, k, POW_CHUNK) for i in range(k)]
            results = await asyncio.gather(*futs)
            total += sum(t for _, t in results)
            found = [n for n, _ in results if n is not None]
            if found:
                return min(found), total
            base += k * POW_CHUNK

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# ---- client -------------------------------------------------------------------------------------

def _retry_after(resp: httpx.Response) -> float | None:
    v = resp.headers.get("retry-after")
    if v is None:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return None


def _error_of(resp: httpx.Response) -> tuple[str, str, str | None, dict]:
    try:
        body = resp.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
        return str(err.get("type", "http_error")), str(err.get("message", resp.text[:200])), err.get("param"), body
    except (json.JSONDecodeError, ValueError):
        return "http_error", resp.text[:200] or resp.reason_phrase, None, {}


class ApiClient:
    def __init__(self, base_url: str, api_key: str, *, concurrency: int = 8, timeout_s: float = 60, max_retries: int = 8,
                 max_wait_s: float = 120, pow_workers: int = 1, budget: int | None = None,
                 backoff_s: float = 0.5, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not api_key:
            raise ValueError("an API key is needed")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.backoff_s = backoff_s
        self.budget = budget
        self.stats = ClientStats()
        self._spent = 0  # images committed to requests (reserved before sending)
        self._sem = asyncio.Semaphore(concurrency)
        self._pow = PowSolver(pow_workers)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport,
                                       headers={"Authorization": f"Bearer {api_key}"},
                                       limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self._info: ModelInfo | None = None
        self._waited_total = 0.0

    # -- lifecycle --
    async def aclose(self) -> None:
        await self._http.aclose()
        self._pow.close()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- endpoints --
    async def models(self) -> ModelInfo:
        try:
            r = await self._http.get("/v1/models")
        except httpx.HTTPError as e:
            raise ApiGiveUp(None, "connection_error", f"cannot reach {self.base_url}: {e}") from e
        if r.status_code != 200:
            t, m, p, _ = _error_of(r)
            raise ApiError(r.status_code, t, m, p)
        models = ModelList.model_validate(r.json()).data
        if not models:
            raise ApiResponseError(200, "no_model", "the server lists no model")
        self._info = models[0]
        return self._info

    async def embed(self, images: np.ndarray, output: str = "representation", batch_size: int = 32,
                    on_batch=None) -> np.ndarray:
        """Embeddings of uint8 (N, H, W, 3) images, float32 (N, D), in input order.

        ``on_batch(start, rows)`` is called as each request's answer arrives (e.g. to store it in a
        cache before anything else uses it); its exceptions propagate.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if output not in ("representation", "projection"):
            raise ValueError(f"output must be 'representation' or 'projection', got {output!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        t0 = time.perf_counter()
        try:
            info = self._info or await self.models()
            dim = info.projection_dim if output == "projection" else info.representation_dim
            if dim is None:
                raise ApiRequestError(None, "invalid_request_error", "this model has no projection head", "output")
            bs = min(batch_size, info.max_images_per_request)
            starts = list(range(0, len(images), bs))
            out = np.empty((len(images), dim), np.float32)

            async def one(s: int) -> None:
                rows = await self._request(images[s : s + bs], output, dim)
                if on_batch is not None:
                    on_batch(s, rows)
                out[s : s + len(rows)] = rows

            tasks = [asyncio.ensure_future(one(s)) for s in starts]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            return out
        finally:
            self.stats.wall += time.perf_counter() - t0

    def embed_sync(self, images: np.ndarray, output: str = "representation", batch_size: int = 32) -> np.ndarray:
        """Blocking convenience: one ``embed`` call in a fresh event loop (closes the client after)."""

        async def go() -> np.ndarray:
            try:
                return await self.embed(images, output, batch_size)
            finally:
                await self.aclose()

        return asyncio.run(go())

    # -- one request with retries and PoW --
    async def _request(self, images: np.ndarray, output: str, dim: int) -> np.ndarray:
        n = len(images)
        if self.budget is not None and self._spent + n > self.budget:
            raise BudgetExceeded(None, "budget_exceeded",
                                 f"query budget of {self.budget} images reached ({self._spent} spent, {n} more asked)")
        self._spent += n
        encoded = await asyncio.to_thread(lambda: [encode_image(im) for im in images])
        body = json.dumps({"input": encoded, "encoding_format": "base64", "output": output}).encode()
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: uuid.uuid4().hex}
        tries = 0
        try:
            while True:
                tries += 1
                async with self._sem:
                    self.stats.requests += 1
                    try:
                        resp = await self._http.post("/v1/embeddings", content=body, headers=headers)
                    except httpx.TransportError as e:
                        resp, transport_err = None, e
                if resp is None:
                    await self._backoff(tries, None, f"transport error: {transport_err}")
                    continue
                st = resp.status_code
                if st == 200:
                    if resp.headers.get(REPLAYED_HEADER) == "true":
                        self.stats.replayed += 1
                    return self._parse(resp, n, dim)
                etype, msg, param, payload = _error_of(resp)
                if st in (502, 504) or (st == 409 and etype == "idempotency_in_progress"):
                    self.stats.bad_gateway += st != 409
                    await self._backoff(tries, _retry_after(resp), f"{st} {etype}: {msg}")
                    continue
                if st == 428 and isinstance(payload.get("challenge"), dict):
                    if tries > self.max_retries:
                        raise ApiGiveUp(st, etype, f"still asked for proof of work after {tries} tries: {msg}")
                    headers = {**headers, pow_mod.HEADER: await self._solve(payload["challenge"])}
                    continue
                if st in (429, 503):
                    if st == 429:
                        self.stats.rate_limited += 1
                    else:
                        self.stats.unavailable += 1
                    await self._backoff(tries, _retry_after(resp), f"{st} {etype}: {msg}")
                    continue
                cls = ApiAuthError if st in (401, 403) else ApiRequestError
                raise cls(st, etype, msg, param)
        except BaseException:
            self._spent -= n  # not paid
            raise

    async def _backoff(self, tries: int, retry_after: float | None, why: str) -> None:
        if tries > self.max_retries:
            raise ApiGiveUp(None, "gave_up", f"gave up after {tries} tries ({self.max_retries} retries); last: {why}")
        wait = retry_after if retry_after is not None else self.backoff_s * (2 ** (tries - 1))
        wait = wait * (1 + 0.1 * random.random())
        if self._waited_total + wait > self.max_wait_s:
            raise ApiGiveUp(None, "gave_up",
                            f"gave up: waiting {wait:.1f} s more would pass max_wait_s={self.max_wait_s} "
                            f"(already waited {self._waited_total:.1f} s); last: {why}")
        self.stats.retries += 1
        self._waited_total += wait
        self.stats.waited_s += wait
        await asyncio.sleep(wait)

    async def _solve(self, challenge: dict) -> str:
        try:
            token, bits = str(challenge["token"]), int(challenge["difficulty"])
        except (KeyError, TypeError, ValueError) as e:
            raise ApiResponseError(428, "bad_challenge", f"malformed PoW challenge: {challenge!r}") from e
        if challenge.get("algorithm", "SHA-256") != pow_mod.ALGORITHM or not 0 < bits <= pow_mod.MAX_BITS:
            raise ApiResponseError(428, "bad_challenge", f"unsupported PoW challenge {challenge.get('algorithm')} / {bits} bits")
        t0 = time.perf_counter()
        nonce, hashes = await self._pow.solve(token, bits)
        self.stats.pow_challenges += 1
        self.stats.pow_hashes += hashes
        self.stats.pow_seconds += time.perf_counter() - t0
        self.stats.pow_max_bits = max(self.stats.pow_max_bits, bits)
        return f"{token}:{nonce}"

    def _parse(self, resp: httpx.Response, n: int, dim: int) -> np.ndarray:
        try:
            rows = decode_embeddings(resp.json())
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad answer
            raise ApiResponseError(200, "bad_response", f"cannot decode the embeddings answer: {e}") from e
        if rows.shape != (n, dim):
            raise ApiResponseError(200, "bad_response", f"expected {n} embeddings of dimension {dim}, got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ApiResponseError(200, "bad_response", "the answer contains NaN or inf")
        self.stats.ok_requests += 1
        self.stats.images += n
        return rows


__all__ = ["ApiAuthError", "ApiClient", "ApiError", "ApiGiveUp", "ApiRequestError", "ApiResponseError", "BudgetExceeded",
           "ClientStats", "PowSolver"]
