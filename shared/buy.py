"""Buying embeddings through the API with the resumable cache: one account, as any customer does.

Answers are written to the :class:`shared.cache.QueryCache` *inside* the client's per-request
callback, i.e. durably on disk before anything uses them; a rerun after a crash asks the cache
first and buys only what is missing. ``repeats`` > 1 asks every image again under its own repeat
index (each answer cached separately).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from shared.cache import QueryCache, account_fingerprint, image_ids
from shared.client import ApiClient, ClientStats


@dataclass
class AccountUse:
    account: str  # fingerprint (never the key)
    asked: int = 0
    from_cache: int = 0
    bought: int = 0
    stats: dict = field(default_factory=dict)


@dataclass
class Bought:
    answers: np.ndarray  # (N, D)
    use: AccountUse


async def buy_cached(client: ApiClient, cache: QueryCache, acct: str, images: np.ndarray, ids: list[str], output: str,
                     rep: int, batch_size: int, bar: tqdm | None) -> tuple[np.ndarray, int, int]:
    """Answers for ``images`` from the cache, buying the missing ones (stored before use)."""
    have = cache.get(acct, ids, output, rep)
    missing = [i for i, k in enumerate(ids) if k not in have]
    if bar is not None:
        bar.update(len(ids) - len(missing))
    if missing:
        miss_ids = [ids[i] for i in missing]

        def store(start: int, rows: np.ndarray) -> None:
            cache.put(acct, miss_ids[start : start + len(rows)], rows, output, rep)  # durable before use
            if bar is not None:
                bar.update(len(rows))

        bought = await client.embed(images[missing], output=output, batch_size=batch_size, on_batch=store)
        for j, i in enumerate(missing):
            have[ids[i]] = bought[j]
    return np.stack([have[k] for k in ids]), len(ids) - len(missing), len(missing)


async def buy_account(url: str, key: str, images: np.ndarray, cache: QueryCache, *, ids: list[str] | None = None,
                      output: str = "representation", repeats: int = 1, concurrency: int = 4, batch_size: int = 32,
                      pow_workers: int = 1, max_retries: int = 8, max_wait_s: float = 120,
                      bar: tqdm | None = None) -> tuple[list[np.ndarray], AccountUse]:
    """One account's answers for ``images``, once per repeat index (cache first, the rest bought)."""
    acct = account_fingerprint(url, key)
    ids = image_ids(images) if ids is None else ids
    use = AccountUse(acct, asked=len(images) * repeats)
    client = ApiClient(url, key, concurrency=concurrency, max_retries=max_retries, max_wait_s=max_wait_s,
                       pow_workers=pow_workers)
    reps: list[np.ndarray] = []
    try:
        for r in range(repeats):
            ans, hit, bought = await buy_cached(client, cache, acct, images, ids, output, r, batch_size, bar)
            reps.append(ans)
            use.from_cache += hit
            use.bought += bought
    finally:
        use.stats = client.stats.as_dict()
        await client.aclose()
    return reps, use


async def buy(url: str, key: str, images: np.ndarray, cache: QueryCache, *, output: str = "representation",
              concurrency: int = 4, batch_size: int = 32, pow_workers: int = 1, max_retries: int = 8,
              max_wait_s: float = 120, progress: bool = True) -> Bought:
    """Answers for ``images`` through one account, with a progress bar."""
    bar = tqdm(total=len(images), desc="queries", unit="img", disable=not progress)
    try:
        reps, use = await buy_account(url, key, images, cache, output=output, concurrency=concurrency,
                                      batch_size=batch_size, pow_workers=pow_workers, max_retries=max_retries,
                                      max_wait_s=max_wait_s, bar=bar)
    finally:
        bar.close()
    return Bought(reps[0], use)


def merged_stats(accounts: list[AccountUse]) -> dict:
    """Client statistics summed over accounts."""
    keys = ClientStats().as_dict().keys()
    return {k: round(sum(a.stats.get(k, 0) for a in accounts), 3) for k in keys}
