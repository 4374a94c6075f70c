"""Evaluation: metrics with bootstrap CIs, calibration, external and per-source evaluation, audit, reports."""
