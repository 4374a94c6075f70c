"""Slow, independent reference implementations that tests compare cxrscreen's fast code with (a module of its
own, like subsets.py, so that any test folder can import it; never ``from conftest import``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def scipy_clean_mask(mask: np.ndarray) -> np.ndarray:
    """The clean-up as the bundled model's training cache computed it (two largest components >= 10%, holes filled)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:2]
    kept = [i + 1 for i in order if sizes[i] >= 0.1 * sizes[order[0]]]
    return ndimage.binary_fill_holes(np.isin(labels, kept))
