"""Screening in worker processes: the same results as in-process, and a worker that dies is replaced."""

from __future__ import annotations

import os
import signal

import pytest

from cxrscreen.dicom.workers import LocalScreening, ScreeningPool, ScreenerRecipe
from cxrscreen.errors import CxrError
from dicom.conftest import chest_jpegs, make_dicom, write_dicom


def test_a_worker_screens_as_this_process_does_and_a_dead_one_is_replaced(bundled_screener, shared_data, tmp_path) -> None:
    path = write_dicom(make_dicom(chest_jpegs(shared_data, 1)[0]), tmp_path / "in.dcm")
    local = LocalScreening(bundled_screener).screen(path, "in.dcm")
    pool = ScreeningPool(ScreenerRecipe.of(bundled_screener), 1)
    pool.start()
    try:
        remote = pool.screen(path, "in.dcm")
        assert remote.outcome.prediction.probabilities == pytest.approx(local.outcome.prediction.probabilities, abs=1e-6)
        assert remote.outcome.results == {} and set(remote.files) == {"sr", "sc"}
        # The SC's pixels are the same picture (the SR differs only in its creation time).
        assert remote.files["sc"][-1000:] == local.files["sc"][-1000:]
        for pid in list(pool._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(CxrError, match="worker process died"):
            pool.screen(path, "in.dcm")
        assert pool.screen(path, "in.dcm").outcome.screened  # a new worker took over
    finally:
        pool.close()
