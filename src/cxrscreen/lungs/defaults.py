"""Where the lung segmenter learns and is tested, the defaults of ``cxrscreen segment train`` and of
:class:`cxrscreen.lungs.training.SegmenterTrainConfig` alike; no torch here, so that ``--help`` stays fast."""

from __future__ import annotations

import os
from pathlib import Path

# The published lung collections ($CXRSCREEN_SHARED_DATA moves them): Montgomery + Shenzhen to train, JSRT to test.
LUNG_DATA = Path(os.environ.get("CXRSCREEN_SHARED_DATA", "../shared/data")) / "lung_segmentation"
TRAIN_DATA = LUNG_DATA / "montgomery_shenzhen"
TEST_DATA = LUNG_DATA / "jsrt"
# Where a command-line run writes: not the bundled weights, which it must not overwrite.
CLI_OUT = "lung_unet.pt"
