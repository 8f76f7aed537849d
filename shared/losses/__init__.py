"""Contrastive and stealing losses, one per module.

Stealing losses take (stolen outputs S, victim answers V) for the same batch of B queries; the
reference defaults (stealing paper, RESEARCH.md section 3) are the modules' constants.
"""

from shared.losses.barlow import barlow_twins
from shared.losses.infonce import infonce
from shared.losses.mse import mse
from shared.losses.ntxent import nt_xent
from shared.losses.simsiam import simsiam
from shared.losses.softnn import soft_nn
from shared.losses.supcon import supcon
from shared.losses.wasserstein import wasserstein

STEALING_LOSSES = ("mse", "infonce", "softnn", "wasserstein", "supcon", "barlow", "simsiam")

__all__ = ["STEALING_LOSSES", "barlow_twins", "infonce", "mse", "nt_xent", "simsiam", "soft_nn", "supcon", "wasserstein"]
