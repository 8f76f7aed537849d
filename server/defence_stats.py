"""Per-account defence state for admins (GET /v1/admin/accounts/{id}/defences, ``accounts show``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from server.accounts import Account
from server.defences.keys import Counters, Gauges
from server.store import AccountStore


class DefenceStats(BaseModel):
    """Per-account defence state for admins (GET /v1/admin/accounts/{id}/defences, accounts show)."""

    account: str
    name: str
    tier: str
    requests: int
    images: int
    coverage: float = Field(description="B4B coverage (share of SimHash buckets hit), after the last request")
    coverage_bits: int
    sigma: float = Field(description="B4B noise sigma of the last request")
    history: int = Field(description="projections kept in the account's history stream")
    similar_hits: int
    sybil_hits: int
    sybil_peers: dict[str, int] = Field(description="other accounts that sent the same images, with counts")
    pow_bits: int = Field(description="difficulty asked at the last request (0 = within the legitimate profile)")
    pow_deviation: float
    pow_challenges: int
    pow_bits_asked: int
    pow_solved: int
    pow_bits_paid: int


async def defence_stats(store: AccountStore, acct: Account) -> DefenceStats:
    """Usage, defence counters and stored defence statistics of ``acct``, with its sybil peers."""
    usage = await store.usage(acct.id)
    stats = await store.defence_stats(acct.id)
    pairs = [(p, n) for p, n in await store.sybil_pairs(1000) if acct.id in p.split("|")]
    c = usage.counters
    return DefenceStats(
        account=acct.id, name=acct.name, tier=acct.tier, requests=usage.requests, images=usage.images,
        coverage=stats.get(Gauges.B4B_COVERAGE, 0.0), coverage_bits=int(stats.get(Gauges.COVERAGE_BITS, 0)),
        sigma=stats.get(Gauges.B4B_SIGMA, 0.0), history=int(stats.get(Gauges.HISTORY_LEN, 0)),
        similar_hits=c.get(Counters.SIMILAR_HITS, 0), sybil_hits=c.get(Counters.SYBIL_HITS, 0),
        sybil_peers={next(x for x in p.split("|") if x != acct.id): n for p, n in pairs},
        pow_bits=int(stats.get(Gauges.POW_BITS, 0)), pow_deviation=stats.get(Gauges.POW_DEVIATION, 0.0),
        pow_challenges=c.get(Counters.POW_CHALLENGES, 0), pow_bits_asked=c.get(Counters.POW_BITS_ASKED, 0),
        pow_solved=c.get(Counters.POW_SOLVED, 0), pow_bits_paid=c.get(Counters.POW_BITS_PAID, 0))
