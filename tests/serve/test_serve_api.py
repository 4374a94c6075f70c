"""The REST API on a real Predictor and real X-rays: results, model card, every error as JSON."""

from __future__ import annotations

import base64
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen import SCREENING_NOTICE
from cxrscreen.data.imageio import MAX_PIXELS
from cxrscreen.serve.app import create_app
from cxrscreen.serve.settings import ServeSettings

with warnings.catch_warnings():
    # Starlette asks for the httpx2 fork; the httpx installed works the same for these tests.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(max_upload_mb=2)))


def upload(client: TestClient, name: str, data: bytes, query: str = "") -> tuple[int, dict]:
    response = client.post(f"/v1/predict{query}", files={"file": (name, data, "application/octet-stream")})
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()


def decoded_png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def assert_error(status: int, body: dict, expected_status: int, *words: str) -> None:
    assert status == expected_status, body
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"]
    for word in words:
        assert word in body["error"]


def test_predict_real_jpeg(client, predictor, covid_jpeg: Path) -> None:
    status, body = upload(client, covid_jpeg.name, covid_jpeg.read_bytes())
    assert status == 200, body
    assert set(body["probabilities"]) == set(predictor.classes)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    expected = predictor.predict(covid_jpeg)
    assert body["label"] == expected.label
    assert body["decision"]["rule"] == "most_probable" and body["decision"]["most_probable"] == expected.top_class
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["model"] == {"name": "serve-test-model", "version": "7", "arch": "efficientnet_lite0"}
    assert body["notice"] == SCREENING_NOTICE
    assert body["in_distribution"] is True and body["ood_score"] is None
    assert body["format"] == "jpeg" and body["source"] == covid_jpeg.name
    assert "explanation" not in body and "image_png" not in body


def test_predict_with_explanation_and_image_keeps_input_size(client, predictor, ieee_jpeg: Path) -> None:
    status, body = upload(client, ieee_jpeg.name, ieee_jpeg.read_bytes(), "?explain=true&image=true")
    assert status == 200, body
    original = Image.open(ieee_jpeg)
    overlay = decoded_png(body["explanation"]["overlay_png"])
    assert overlay.size == original.size and overlay.mode == "RGB"
    red, _, blue = np.asarray(overlay, dtype=np.int16).transpose(2, 0, 1)
    assert np.abs(red - blue).max() > 50  # a coloured heatmap over the grey X-ray
    assert body["explanation"]["target"] in predictor.classes
    shown = decoded_png(body["image_png"])
    assert shown.size == original.size and shown.mode == "L"


def test_type_is_read_from_bytes_not_name(client, covid_jpeg: Path, png_of) -> None:
    status, body = upload(client, "scan.txt", png_of(covid_jpeg))
    assert status == 200 and body["format"] == "png"
    status, body = upload(client, "scan.png", b"GIF89a" + bytes(200))
    assert_error(status, body, 415, "scan.png", "not a PNG, JPEG or DICOM")


def test_sixteen_bit_png(client, covid_jpeg: Path, png_of) -> None:
    status, body = upload(client, "x16.png", png_of(covid_jpeg, bits=16))
    assert status == 200 and body["format"] == "png"


def test_dicom_is_predicted_rendered_and_kept_out_of_logs(
    client, covid_jpeg: Path, dicom_of, patient_name: str, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    family_name = patient_name.split("^")[0]
    status, body = upload(client, f"{family_name}_chest.dcm", dicom_of(covid_jpeg), "?image=true&explain=true")
    assert status == 200, body
    assert body["format"] == "dicom"
    assert decoded_png(body["image_png"]).size == Image.open(covid_jpeg).size
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "predict: " in logged and "dicom" in logged
    assert family_name not in logged and "SERVE-PRIVACY" not in logged


@pytest.mark.filterwarnings("ignore:.*VR:UserWarning")
def test_undecodable_files_are_422(client, covid_jpeg: Path) -> None:
    data = covid_jpeg.read_bytes()
    assert_error(*upload(client, "cut.jpg", data[: len(data) // 3]), 422, "cut.jpg")
    assert_error(*upload(client, "empty.png", b""), 422, "empty.png", "empty")
    assert_error(*upload(client, "bad.dcm", bytes(128) + b"DICM" + b"\x02\x00garbage"), 422, "bad.dcm")


def test_upload_over_the_limit_is_413(client, covid_jpeg: Path, png_of) -> None:
    big = png_of(covid_jpeg, size=1600, compress_level=0)
    assert len(big) > 2 * 2**20
    assert_error(*upload(client, "big.png", big), 413, "2 MB")


def test_request_errors_are_json(client) -> None:
    response = client.post("/v1/predict", content=b"\x89PNG\r\n\x1a\n", headers={"content-type": "image/png"})
    assert_error(response.status_code, response.json(), 415, "multipart/form-data")
    response = client.post("/v1/predict", files={"image": ("a.png", b"\x89PNG\r\n\x1a\n")})
    assert_error(response.status_code, response.json(), 422, "'file'")
    response = client.post("/v1/predict?explain=perhaps", files={"file": ("a.png", b"\x89PNG")})
    assert_error(response.status_code, response.json(), 422, "explain")
    body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG"
    response = client.post("/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert_error(response.status_code, response.json(), 400, "malformed multipart")
    response = client.get("/v1/nothing-here")
    assert_error(response.status_code, response.json(), 404, "/v1/nothing-here")
    response = client.get("/v1/predict")
    assert_error(response.status_code, response.json(), 405, "GET")
    assert response.headers["allow"] == "POST"


def test_model_card(client) -> None:
    card = client.get("/v1/model").json()
    assert card["classes"] == ["covid", "normal", "viral"] and card["input_size"] == 64
    assert card["name"] == "serve-test-model" and card["version"] == "7"
    assert card["metrics"]["val"] == {"accuracy": 0.5, "auroc_covid": None}  # NaN is not JSON
    assert card["notice"] == SCREENING_NOTICE and card["ood_guard"] is False


def test_health_page_and_docs(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert SCREENING_NOTICE in page.text and "{{" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and "https://" not in response.text
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["required"] == ["file"]


def test_api_key(predictor, covid_jpeg: Path) -> None:
    client = TestClient(create_app(predictor, ServeSettings(api_key="s3cret")))
    data = covid_jpeg.read_bytes()
    assert_error(*upload(client, "a.jpg", data), 401, "API key")
    response = client.get("/v1/model", headers={"X-API-Key": "wrong"})
    assert_error(response.status_code, response.json(), 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    response = client.post("/v1/predict", files={"file": ("a.jpg", data)}, headers={"X-API-Key": "s3cret"})
    assert response.status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200


def test_a_guarded_model_flags_a_photograph_through_the_api(guarded_predictor, photo_png: bytes, covid_jpeg: Path) -> None:
    from cxrscreen.inference.predictor import OUT_OF_DISTRIBUTION_LABEL

    guarded = TestClient(create_app(guarded_predictor, ServeSettings()))
    status, body = upload(guarded, "holiday.png", photo_png)
    assert status == 200, body
    assert body["label"] == OUT_OF_DISTRIBUTION_LABEL and body["in_distribution"] is False
    assert body["ood_score"] > guarded_predictor.meta.ood["threshold"]
    assert body["known_limits"] == guarded_predictor.known_limits != []
    card = guarded.get("/v1/model").json()
    assert card["ood_guard"] is True and card["known_limits"] == guarded_predictor.known_limits


def test_an_oversized_image_is_refused_from_its_header(client, monkeypatch) -> None:
    """A 90-megapixel black PNG (86 KB: under the upload cap) gets 422 naming it, its size and the limit, and is
    never decoded (the one that held the server for half a minute)."""
    from PIL import ImageFile

    buffer = io.BytesIO()
    Image.new("L", (9400, 9400)).save(buffer, format="PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded before the size check"))
    status, body = upload(client, "black.png", buffer.getvalue())
    assert_error(status, body, 422, "black.png", "9400x9400 pixels", f"{MAX_PIXELS / 10**6:g}-megapixel limit")
