"""Evaluation: scoring a model on collections (evaluate, results, plots, tables), the shortcut audit and its probe
(audit, probe), leave-one-source-out cross-validation (crossval) and the run's report (report). The metrics and
calibration it reports are in metrics/."""
