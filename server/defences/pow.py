"""Calibrated proof of work (Dziedzic et al., ICLR 2022), adapted to encoders.

Gate, before inference: the account's difficulty in bits comes from how far its behaviour deviates
from the LEARNED legitimate profile (:mod:`server.defences.profile`):

    dev = w_coverage * max(0, 100 * (C - C_hat(Q)) - slack)          (percentage points of coverage)
        + w_similar  * max(0, 100 * (r - r_hat))                       (points of similar-query rate)
        + w_volume   * max(0, log2(Q / V_hat))                         (doublings past a legit volume)
    bits = 0 if dev <= 0 else clip(min_bits + slope * dev, min_bits, max_bits)

with Q the account's images so far, C its B4B coverage, r its similar-query hit rate (both written
by the ``b4b`` and ``similar_query`` defences into the store). ``fixed_bits`` instead asks the same
difficulty of everyone (tests, a flat tax). A request without a valid ``X-PoW-Solution`` gets 428 +
the contract's challenge (shared/pow.py); a valid one is spent once in the store (SET NX + TTL).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from server.defences.base import Defence, DefenceParams, Rejection
from server.defences.keys import Counters, Gauges
from server.defences.profile import LegitProfile
from shared import pow as hashcash


@dataclass(frozen=True)
class Calibration:
    """Defaults of the calibrated difficulty, for the ``pow`` defence's params and :func:`calibrated_bits`."""

    w_coverage: float = 1.0
    w_similar: float = 1.0
    w_volume: float = 1.0
    coverage_slack: float = 2.0  # percentage points of coverage tolerated above the profile
    slope: float = 1.0  # bits per unit of deviation
    min_bits: int = 20
    max_bits: int = 28


DEFAULTS = Calibration()


def calibrated_bits(profile: LegitProfile, images: int, coverage: float, similar_hits: int, *,
                    w_coverage: float = DEFAULTS.w_coverage, w_similar: float = DEFAULTS.w_similar,
                    w_volume: float = DEFAULTS.w_volume, coverage_slack: float = DEFAULTS.coverage_slack,
                    slope: float = DEFAULTS.slope, min_bits: int = DEFAULTS.min_bits,
                    max_bits: int = DEFAULTS.max_bits) -> tuple[int, float]:
    """(bits, deviation) for an account with this behaviour; 0 bits within the legitimate profile."""
    if images <= 0:
        return 0, 0.0
    cov = max(0.0, 100 * (coverage - profile.expected_coverage(images)) - coverage_slack)
    sim = max(0.0, 100 * (similar_hits / images - profile.similar_rate))
    vol = max(0.0, math.log2(images / profile.volume))
    dev = w_coverage * cov + w_similar * sim + w_volume * vol
    if dev <= 0:
        return 0, 0.0
    return int(min(max_bits, max(min_bits, round(min_bits + slope * dev)))), dev


class PowGate(Defence):
    name = "pow"
    params: Params  # the validated Params below (Defence.__init__ stores it)

    class Params(DefenceParams):
        profile: Path | None = Field(default=None, description="legitimate profile JSON (python -m testbed.profile)")
        fixed_bits: int | None = Field(default=None, ge=1, le=hashcash.MAX_BITS, description="same difficulty for everyone")
        min_bits: int = Field(default=DEFAULTS.min_bits, ge=1, le=hashcash.MAX_BITS)
        max_bits: int = Field(default=DEFAULTS.max_bits, ge=1, le=hashcash.MAX_BITS)
        slope: float = Field(default=DEFAULTS.slope, gt=0, description="bits per unit of deviation")
        w_coverage: float = Field(default=DEFAULTS.w_coverage, ge=0)
        w_similar: float = Field(default=DEFAULTS.w_similar, ge=0)
        w_volume: float = Field(default=DEFAULTS.w_volume, ge=0)
        coverage_slack: float = Field(default=DEFAULTS.coverage_slack, ge=0,
                                      description="percentage points of coverage tolerated above the profile")
        ttl_s: float = Field(default=120.0, ge=5, le=3600)

        @model_validator(mode="after")
        def _mode(self):
            if (self.profile is None) == (self.fixed_bits is None):
                raise ValueError("give exactly one of profile (calibrated) or fixed_bits")
            if self.min_bits > self.max_bits:
                raise ValueError("min_bits cannot exceed max_bits")
            return self

    def __init__(self, ctx, params) -> None:
        super().__init__(ctx, params)
        self.profile = LegitProfile.load(params.profile) if params.profile is not None else None

    def check(self, tier, others) -> None:
        if self.profile is None:
            return
        b4b = next((d for d in others if d.name == "b4b"), None)
        sim = next((d for d in others if d.name == "similar_query"), None)
        if self.params.w_coverage > 0:
            if b4b is None:
                raise ValueError("calibrated pow needs the b4b defence in the same tier (coverage), or w_coverage = 0")
            lsh = self.profile.lsh
            if (b4b.params.hyperplanes, b4b.params.hash_sets) != (lsh.hyperplanes, lsh.hash_sets):
                raise ValueError(f"profile was recorded with {lsh.hyperplanes} hyperplanes x {lsh.hash_sets} sets; "
                                 f"b4b uses {b4b.params.hyperplanes} x {b4b.params.hash_sets}")
            same = (b4b.center is None and lsh.center is None) or (
                b4b.center is not None and lsh.center is not None and len(lsh.center) == len(b4b.center)
                and bool(np.allclose(b4b.center, lsh.center)))
            if not same:
                raise ValueError("profile's lsh.center differs from b4b's (set b4b center_from to the profile file)")
        if self.params.w_similar > 0:
            if sim is None:
                raise ValueError("calibrated pow needs the similar_query defence in the same tier, or w_similar = 0")
            ps = self.profile.similarity
            if (sim.params.space, sim.params.metric, sim.params.tau) != (ps.space, ps.metric, ps.tau):
                raise ValueError(f"profile was recorded with similarity {ps.space}/{ps.metric}/tau={ps.tau}; "
                                 f"similar_query uses {sim.params.space}/{sim.params.metric}/tau={sim.params.tau}")

    async def difficulty(self, account_id: str) -> tuple[int, float]:
        p = self.params
        if p.fixed_bits is not None:
            return p.fixed_bits, 0.0
        assert self.profile is not None  # Params: exactly one of fixed_bits and profile
        usage = await self.ctx.store.usage(account_id)
        stats = await self.ctx.store.defence_stats(account_id)
        return calibrated_bits(self.profile, usage.images, stats.get(Gauges.B4B_COVERAGE, 0.0), usage.counters.get(Counters.SIMILAR_HITS, 0),
                               w_coverage=p.w_coverage, w_similar=p.w_similar, w_volume=p.w_volume,
                               coverage_slack=p.coverage_slack, slope=p.slope, min_bits=p.min_bits, max_bits=p.max_bits)

    async def gate(self, account, request) -> Rejection | None:
        bits, dev = await self.difficulty(account.id)
        request.record.gauges.update({Gauges.POW_BITS: bits, Gauges.POW_DEVIATION: round(dev, 4)})
        if bits == 0:
            self.ctx.count(self.name, "free")
            return None
        header = request.headers.get(hashcash.HEADER.lower())
        if not header:
            return await self._challenge(account.id, request, bits, "proof of work required")
        try:
            stamp = hashcash.verify_solution(self.ctx.secret, header, account.id, request.body)
        except hashcash.PowError as e:
            return await self._challenge(account.id, request, bits, f"invalid proof of work ({e.reason}): {e}", e.reason)
        if not await self.ctx.store.spend_token(stamp.token_id, stamp.expires_at - time.time() + 1):
            return await self._challenge(account.id, request, bits, "invalid proof of work (replayed): this solution was already spent",
                                         "replayed")
        request.record.count(Counters.POW_BITS_PAID, stamp.bits)
        request.record.count(Counters.POW_SOLVED)
        self.ctx.count(self.name, "paid")
        if self.ctx.metrics is not None:
            self.ctx.metrics.pow_bits_paid.inc(stamp.bits)
        return None

    async def _challenge(self, account_id: str, request, bits: int, message: str, reason: str = "missing") -> Rejection:
        ch = hashcash.make_challenge(self.ctx.secret, account_id, request.body, bits, ttl_s=self.params.ttl_s)
        await self.ctx.store.add_counters(account_id, {Counters.POW_CHALLENGES: 1, Counters.POW_BITS_ASKED: bits})
        self.ctx.count(self.name, f"challenge_{reason}")
        self.ctx.observe(Counters.POW_BITS_ASKED, bits)
        return Rejection(428, "pow_required", f"{message}; solve the challenge and resend the same body with "
                         f"{hashcash.HEADER}: <token>:<nonce>", param=hashcash.HEADER, extra={"challenge": ch.as_dict()})
