"""The bad-input corpus through the other entry points: training's image loading and the REST API.

(`load_xray` itself: test_corpus.py; `cxrscreen predict`: tests/inference/test_predict_cli.py.)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from badinputs.corpus import build_corpus
from cxrscreen.data.cache import load_prepared
from cxrscreen.data.transforms import Preprocessing
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def image_cases(tmp_path_factory: pytest.TempPathFactory) -> list:
    return [c for c in build_corpus(tmp_path_factory.mktemp("corpus")) if c.target == "image"]


def test_training_loads_good_files_and_reports_each_bad_one(image_cases, tmp_path: Path) -> None:
    prepared = load_prepared([c.path for c in image_cases], Preprocessing(img_size=32), cache_dir=tmp_path, progress=False)
    good = [i for i, c in enumerate(image_cases) if c.expect == "ok"]
    assert prepared.ok == good
    assert prepared.images.shape == (len(good), 32, 32)
    reasons = dict(prepared.errors)
    for case in image_cases:
        if case.expect == "error":
            assert case.reason_substring in reasons[str(case.path)], (case.name, reasons[str(case.path)])


def uploadable(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and os.access(path, os.R_OK)


def test_api_answers_every_uploadable_case_with_a_result_or_a_json_error(image_cases, tmp_path: Path, checkpoint_factory) -> None:
    predictor = load_predictor(checkpoint_factory(tmp_path / "tiny.pt"))
    client = TestClient(create_app(predictor, ServeSettings(max_upload_mb=20)))
    checked = 0
    for case in (c for c in image_cases if uploadable(c.path)):
        response = client.post("/v1/predict", files={"file": (case.path.name, case.path.read_bytes(), "application/octet-stream")})
        body = response.json()
        if case.expect == "ok":
            assert response.status_code == 200, (case.name, body)
            assert body["label"] and abs(sum(body["probabilities"].values()) - 1) < 1e-4
        else:
            assert response.status_code in (413, 415, 422), (case.name, response.status_code, body)
            assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
        checked += 1
    assert checked >= 25
