"""cxrscreen: screen chest X-rays for COVID-19 and other pneumonias with deep learning.

A screening aid for readers of chest X-rays, not a diagnosis.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# torch's OpenMP threads sleep while they wait for each other instead of spinning: training gets every CPU the
# process may use (cxrscreen.threads), and on a machine busy with other work, spinning threads waiting at barriers
# for descheduled siblings made a 2-thread training step 2.8x slower than one thread (36-39 s -> 100-109 s for a
# small train, 3x for adapt's fine-tuning); sleeping, 2 threads took what 1 did (35-42 s). Set here, before any
# module imports torch (OpenMP reads it once); a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SCREENING_NOTICE = (
    "Screening aid only, not a diagnosis: a qualified reader must review every X-ray and decide."
)


def load_model(path=None, backend: str = "auto", device: str = "auto", threads=None, thresholds=None):
    """Load a trained classifier (the bundled default when ``path`` is None) as a
    :class:`cxrscreen.inference.predictor.Predictor`; the arguments are those of
    :func:`cxrscreen.inference.predictor.load_predictor`: ``backend`` ``auto`` (ONNX Runtime on the CPU, without
    torch once the model is cached; torch on a CUDA GPU), ``torch`` or ``onnx``; ``device`` ``auto``/``cpu``/``cuda``, ``threads`` (None:
    a default that does not oversubscribe the CPUs), ``thresholds`` {class: probability} (None: the model's
    stored operating point, else the most probable class)."""
    from cxrscreen.inference.predictor import load_predictor

    return load_predictor(path, backend=backend, device=device, threads=threads, thresholds=thresholds)


__all__ = ["__version__", "SCREENING_NOTICE", "load_model"]
