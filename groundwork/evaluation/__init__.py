"""Evaluation helpers shared by both projects."""

from groundwork.evaluation.confidence import mean_ci95
from groundwork.evaluation.batched import map_in_batches
