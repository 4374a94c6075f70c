"""An explained upload: Grad-CAM of the class the response predicts, without scoring the image a second time."""

from __future__ import annotations

from pathlib import Path

from cxrscreen.serve.app import ModelGate, analyse_upload
from cxrscreen.serve.upload import Upload


def test_the_explanation_is_of_the_predicted_class_and_the_image_is_scored_once(predictor, covid_jpeg: Path,
                                                                               monkeypatch) -> None:
    def scored_again(*args, **kwargs):
        raise AssertionError("explain scored the image again")

    monkeypatch.setattr(predictor, "predict_prepared", scored_again)
    body = analyse_upload(predictor, ModelGate(), Upload(covid_jpeg.name, covid_jpeg.read_bytes()), explain=True,
                          render=False)
    probabilities = body["probabilities"]
    assert body["explanation"]["target"] == max(probabilities, key=probabilities.get)  # no thresholds stored
    assert body["label"] in (body["explanation"]["target"], "not a chest X-ray?")
