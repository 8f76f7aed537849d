"""Names of the per-account defence state, for the defences that write it and the modules that read
it (the pow gate, the admin statistics, the metrics). The values are the stored field names (Redis
hash fields, embedded-store keys): existing data is read by them, so they never change.

``Counters`` are summed over requests (the account's usage counters); ``Gauges`` are overwritten by
each request (the account's defence statistics), plus two that the store computes itself.
"""

from __future__ import annotations

from typing import Final

from server.store.base import COVERAGE_BITS, HISTORY_LEN


class Counters:
    """Per-account counters (``RequestRecord.counters``, ``AccountStore.add_counters``)."""

    SIMILAR_HITS: Final = "similar_hits"
    SYBIL_HITS: Final = "sybil_hits"
    POW_CHALLENGES: Final = "pow_challenges"
    POW_BITS_ASKED: Final = "pow_bits_asked"
    POW_SOLVED: Final = "pow_solved"
    POW_BITS_PAID: Final = "pow_bits_paid"


class Gauges:
    """Per-account values of the last request (``RequestRecord.gauges``, ``AccountStore.defence_stats``)."""

    B4B_COVERAGE: Final = "b4b_coverage"
    B4B_SIGMA: Final = "b4b_sigma"
    POW_BITS: Final = "pow_bits"
    POW_DEVIATION: Final = "pow_deviation"
    HISTORY_LEN: Final = HISTORY_LEN  # computed by the store: length of the account's history stream
    COVERAGE_BITS: Final = COVERAGE_BITS  # computed by the store: bits set in the account's coverage bitmap


__all__ = ["Counters", "Gauges"]
