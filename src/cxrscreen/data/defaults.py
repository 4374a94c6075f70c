"""Defaults the command line shows in ``--help`` and the data modules use, kept free of numpy and Pillow so that
building the parser imports no image library (``cxrscreen --help``, tests/inference/test_startup.py)."""

from __future__ import annotations

# Near-duplicates: pHash Hamming distance, per 64 bits of hash (cxrscreen.data.dedup).
DEFAULT_MAX_DISTANCE = 6
# Side of the square network input when nothing else says: the ``default_img_size`` every registered architecture
# declares (a training run takes its architecture's own, :class:`cxrscreen.training.config.TrainConfig`).
DEFAULT_IMG_SIZE = 224
# Files a folder is searched for by name (cxrscreen.data.imageio also reads other names by content).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
