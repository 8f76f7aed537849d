"""Output watermark: the API's keyed-region mark (defence ``output_watermark``) read on the suspect's
answers to the public queries, against decoy keys drawn from the same secret (:mod:`shared.output_watermark`).

Every key (the true one and each decoy) fits its own linear map from the victim's principal
coordinates to the suspect's answers, with the key's mark weights as regressors of their own
(``owm_fit="joint"``) or on the images outside the key's regions only (``"outside"``), so the map
learns obfuscations (permuted, padded, affine answers) but not the mark; every key is treated alike. For a suspect that never learnt the mark the true key is
exchangeable with the decoys, and the decoys' spread is the null. No extra queries: the public
queries are the ones alignment and similarity already make.
"""

from __future__ import annotations

from defender.checks.base import Check, Verdict, finite
from defender.checks.context import PUBLIC, Context
from shared.output_watermark import watermark_scores


class OutputWatermarkCheck(Check):
    name = "output_watermark"
    needs = frozenset({PUBLIC})

    def run(self, ctx: Context) -> list[Verdict]:
        if ctx.owm is None:
            return [Verdict(self.name, "z", None, None, "n/a",
                            {"reason": "no output watermark key (heist-defend verify --owm-key FILE, with HEIST_SERVER_SECRET)"})]
        cal, secret = ctx.owm
        cfg = ctx.cfg
        victim, suspect = ctx.victim_public_answers, ctx.public_answers
        assert victim is not None and suspect is not None  # PUBLIC is in needs: the context queried them
        if victim.shape[1] != cal.dim:
            raise ValueError(f"the watermark key is for {cal.dim}-d representations, the victim answers {victim.shape[1]}-d")
        try:
            res = watermark_scores(suspect, victim, secret, cal, decoys=cfg.owm_decoys, ridge=cfg.align_ridge,
                                   shrink=cfg.owm_shrink, fit=cfg.owm_fit)
        except ValueError as e:  # too few public queries for the key's regions or the suspect's dimension
            return [Verdict(self.name, "z", None, None, "n/a", {"reason": f"align_n={len(suspect)}: {e}"})]
        verdict = "stolen" if res.p_value < cfg.alpha else "independent"
        ctx.arrays[f"{self.name}_z"] = res.z
        return [Verdict(self.name, "z", finite(res.z), finite(res.p_value), verdict,
                        {**res.as_dict(), "directions": cal.directions, "rate": cal.rate})]
