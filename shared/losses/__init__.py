"""Contrastive and stealing losses, one per module."""

from shared.losses.ntxent import nt_xent

__all__ = ["nt_xent"]
