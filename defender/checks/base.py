"""What an ownership check is: a name, what it needs from the shared context, and its rows."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from defender.checks.context import Context
    from defender.config import VerifyConfig


@dataclass
class Verdict:
    method: str
    statistic: str
    value: float | None
    p_value: float | None
    verdict: str
    detail: dict = field(default_factory=dict)


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)


class Check(ABC):
    """One ownership check.

    ``name`` is its method name in :class:`defender.config.VerifyConfig` and in the report's rows;
    ``needs`` names what it reads from the :class:`~defender.checks.context.Context` (the
    resources listed there), so that the context queries and prepares only what the selected
    checks use; a ``decisive`` check's p-value takes part in the overall verdict.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    decisive: ClassVar[bool] = True

    @abstractmethod
    def run(self, ctx: Context) -> list[Verdict]:
        """The check's rows (one, reported as n/a when the check cannot be made)."""

    def material(self, row: Verdict, cfg: VerifyConfig) -> bool:
        """Whether a significant ``row`` is large enough to call the suspect stolen."""
        return True
