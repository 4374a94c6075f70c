"""cxrscreen: screen chest X-rays for COVID-19 and other pneumonias with deep learning.

A screening aid for readers of chest X-rays, not a diagnosis.
"""

from __future__ import annotations

__version__ = "0.1.0"

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
