"""The folder of a training run and the name of every file in it.

Training writes a run, evaluation, the report, cross-validation, prediction and the CLI read it: all of them ask
:class:`RunDir` for a file instead of spelling its name, so that renaming one is a one-line change here. Top
level (beside ``errors``), so that every layer can ask it without importing another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Files of folders that are not always in a run (``evaluate --out``, ``audit --out``, the collections of an evaluation).
EVAL_METRICS = "metrics.json"  # an evaluation folder's results, every collection's figures named in it
PREDICTIONS_CSV = "predictions.csv"  # each image's probabilities (an evaluated collection's, an adaptation's)
AUDIT_FILE = "audit.json"  # the shortcut audit's results


@dataclass(frozen=True)
class RunDir:
    """``RunDir("runs/r1").best`` -> ``runs/r1/best.pt``. A plain name: nothing is checked or created."""

    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        """The resolved :class:`cxrscreen.training.config.TrainConfig` (``--resume``, ``refit-guard``)."""
        return self.path / "config.json"

    @property
    def split(self) -> Path:
        """The train/val/test split by patient and near-duplicate group, with each image's pHash."""
        return self.path / "split.csv"

    @property
    def metrics(self) -> Path:
        """One row per epoch (training curves)."""
        return self.path / "metrics.csv"

    @property
    def last(self) -> Path:
        """The latest epoch's weights and training state (``--resume``)."""
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        """The self-describing model of the best epoch: what evaluation and prediction load."""
        return self.path / "best.pt"

    @property
    def summary(self) -> Path:
        """Written last: a run with a summary has finished."""
        return self.path / "summary.json"

    @property
    def eval_dir(self) -> Path:
        """Where ``cxrscreen evaluate RUN`` writes (:data:`EVAL_METRICS`, figures, :data:`PREDICTIONS_CSV`)."""
        return self.path / "eval"

    @property
    def eval_metrics(self) -> Path:
        """The results of ``cxrscreen evaluate RUN``."""
        return self.eval_dir / EVAL_METRICS

    @property
    def audit_dir(self) -> Path:
        """Where ``cxrscreen audit --model RUN`` writes."""
        return self.path / "audit"

    @property
    def audit(self) -> Path:
        """The shortcut audit of the run's model."""
        return self.audit_dir / AUDIT_FILE

    @property
    def report(self) -> Path:
        """The one-page HTML report of the run."""
        return self.path / "report.html"

    @property
    def crossval(self) -> Path:
        """The cross-validation summary, when the folder holds a cross-validation (one run per fold)."""
        return self.path / "crossval.json"

    @property
    def adapt(self) -> Path:
        """What ``cxrscreen adapt`` measured: before and after on the site, threshold, learning curve."""
        return self.path / "adapt.json"

    @property
    def learning_curve(self) -> Path:
        """The adaptation's learning curve (AUROC against labelled images per class)."""
        return self.path / "learning_curve.png"

    @property
    def adapt_predictions(self) -> Path:
        """Each site image's probabilities before and out of fold after adaptation."""
        return self.path / PREDICTIONS_CSV

    def is_run(self) -> bool:
        """Whether the folder holds a trained model (``best.pt``)."""
        return self.best.is_file()
