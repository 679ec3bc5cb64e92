"""Shared foundation of the few-shot (`fsl`) and semi-supervised (`semisup`) projects.

Encoders, data, training plumbing and evaluation helpers. Imports neither project.
"""
