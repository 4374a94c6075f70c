"""Fitting a finished run's out-of-distribution guard again (``cxrscreen refit-guard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from cxrscreen.data.splits import load_split
from cxrscreen.errors import RunDirError
from cxrscreen.guard.fit import GUARD_SIDES, fit_scored_guard
from cxrscreen.metrics.reference import OutputReference
from cxrscreen.models.checkpoint import load_checkpoint, save_checkpoint
from cxrscreen.run_dir import RunDir
from cxrscreen.threads import configure_threads
from cxrscreen.training.config import load_run_config
from cxrscreen.training.run_data import run_dataset


def refit_ood_guard(
    run_dir: str | Path, checkpoint: str | Path | None = None, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Fit the out-of-distribution guard of a finished run again, on the run's own training and validation images
    (its saved config and split), and store it in ``checkpoint`` (default: the run's ``best.pt``).

    For checkpoints from an older cxrscreen, whose guard read the penultimate features, or a copy of a run's model
    (the bundled one). Only the guard (and the guard's part of the drift reference) changes; weights, temperature
    and metrics stay. Returns the guard.
    """
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    cfg = load_run_config(run_dir)
    target = Path(checkpoint) if checkpoint is not None else files.best
    model, meta = load_checkpoint(target)
    if meta.preprocessing != cfg.preprocessing or meta.arch != cfg.model:
        raise RunDirError(f"{target}: not a model of the run in {run_dir} (architecture or preprocessing differ)")
    configure_threads(cfg.num_threads)
    split = load_split(files.split, run_dataset(cfg, log)[2])
    records = [r for side in GUARD_SIDES for r in split.part(side).records]
    meta.ood, scores = fit_scored_guard(records, split.hashes, cfg.dedup_distance, progress)
    if meta.reference:  # its guard part follows the new guard: the validation images' out-of-fold scores
        validation = len(split.part(GUARD_SIDES[-1]).records)
        meta.reference = OutputReference.from_dict(meta.reference).with_guard(
            scores[-validation:], meta.ood["threshold"]).to_dict()
    save_checkpoint(target, model, meta)
    log(f"{target}: guard refitted on {meta.ood['n_fit']} training and validation images, threshold set on their "
        f"{meta.ood['calibration']['set']} scores ({meta.ood['calibration']['accepted']:.1%} accepted)")
    return meta.ood
