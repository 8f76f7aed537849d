"""Similarity: mutual information between the victim's and the suspect's answers to the public
queries, against a random-init encoder of the victim's architecture. Reported, not decided on."""

from __future__ import annotations

from defender.checks.base import Check, Verdict, finite
from defender.checks.context import PUBLIC, Context
from defender.stats import similarity
from shared.train.evaluate import random_init_like


class SimilarityCheck(Check):
    name = "similarity"
    needs = frozenset({PUBLIC})
    decisive = False

    def run(self, ctx: Context) -> list[Verdict]:
        cfg = ctx.cfg
        r_pub = ctx.encode(random_init_like(ctx.victim.config, cfg.seed + 12345).encoder, ctx.public_queries)
        sim = similarity(ctx.victim_public_answers, ctx.public_answers, r_pub, mi_dims=cfg.mi_dims)
        return [Verdict(self.name, "MI normalised", finite(sim.mi_normalised), None, "n/a", sim.as_dict())]
