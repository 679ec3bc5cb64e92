"""Evaluation helpers shared by both projects."""
from groundwork.evaluation.confidence import mean_ci95
