"""Evaluation: classification metrics and plots, attacks and robustness, the release gate, the report.

May import kdflow.config, kdflow.errors, kdflow.infra, kdflow.data and kdflow.models. One edge goes
forward on purpose: robustness loads an exported form (kdflow.release.export) lazily to attack it.
"""
