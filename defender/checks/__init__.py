"""Ownership checks of ``verify``, one per module (:class:`~defender.checks.base.Check`), and the
order they run in: similarity and the output watermark (on the public queries, made first), then the
rotation watermarks, then dataset inference, then query-log inference (an account's logged queries)."""

from __future__ import annotations

from defender.checks.base import Check, Verdict
from defender.checks.context import Context
from defender.checks.dataset_inference import DatasetInferenceCheck
from defender.checks.dataset_inference_aligned import AlignedDatasetInferenceCheck
from defender.checks.output_watermark import OutputWatermarkCheck
from defender.checks.query_log import QueryLogCheck
from defender.checks.similarity import SimilarityCheck
from defender.checks.watermark import WatermarkCheck
from defender.checks.watermark_aligned import AlignedWatermarkCheck

CHECKS: tuple[Check, ...] = (SimilarityCheck(), OutputWatermarkCheck(), WatermarkCheck(), AlignedWatermarkCheck(), DatasetInferenceCheck(),
                             AlignedDatasetInferenceCheck(), QueryLogCheck())

__all__ = ["CHECKS", "Check", "Context", "Verdict"]
