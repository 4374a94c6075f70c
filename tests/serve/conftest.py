"""A real Predictor on a small checkpoint, real X-rays as PNG/JPEG/DICOM bytes, and a live loopback server."""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image

from cxrscreen.data.imageio import load_xray
from cxrscreen.inference.predictor import Predictor, load_predictor
from cxrscreen.serve.app import base_url, listen

PATIENT_NAME = "Testpatient^Serveprivacy"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory) -> Path:
    # ImageNet weights (bundled with the package, no download) give Grad-CAM maps with structure.
    return checkpoint_factory(tmp_path_factory.mktemp("serve-model") / "tiny.pt", head_scale=1.0, name="serve-test-model",
                              version="7", metrics={"val": {"accuracy": 0.5, "auroc_covid": float("nan")}})


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint: Path) -> Predictor:
    torch.set_num_threads(1)
    return load_predictor(tiny_checkpoint)


KNOWN_LIMIT = "Lateral views were not in the training data."


@pytest.fixture(scope="session")
def guarded_predictor(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory, radiography_root: Path) -> Predictor:
    """The small model with a whole-image OOD guard fitted on 40 real X-rays, and one known limit."""
    from cxrscreen.guard.ppca import fit_ood_guard
    from cxrscreen.guard.inputs import GUARD_NETWORK, guard_thumbnails
    from cxrscreen.guard.network import torch_guard_features

    files = sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[:40]
    guard = fit_ood_guard(torch_guard_features(guard_thumbnails(files)[0]), features="whole_image", network=GUARD_NETWORK)
    path = checkpoint_factory(tmp_path_factory.mktemp("serve-guarded") / "guarded.pt", head_scale=1.0,
                              name="serve-guarded-model", ood=guard, known_limits=[KNOWN_LIMIT])
    return load_predictor(path, device="cpu", threads=1)


@pytest.fixture(scope="session")
def photo_png() -> bytes:
    """A photograph (skimage's astronaut), not an X-ray, as PNG bytes."""
    from skimage import data as skimage_data

    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def covid_jpeg(radiography_root: Path) -> Path:
    return sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[0]


@pytest.fixture(scope="session")
def ieee_jpeg(shared_data: Path) -> Path:
    """A non-square real X-ray (ieee8023 keeps the aspect ratio)."""
    for path in sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg")):
        with Image.open(path) as image:
            if image.width != image.height:
                return path
    raise AssertionError("no non-square image in covid-chestxray-dataset")


def xray_as_png(path: Path, size: int | None = None, bits: int = 8, compress_level: int = 6) -> bytes:
    """A real X-ray re-encoded as PNG, optionally resized to ``size`` and stored at 16 bits."""
    xray = load_xray(path)
    image = Image.fromarray(np.round(xray * 255).astype(np.uint8), mode="L")
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    if bits == 16:
        image = Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def xray_as_dicom(path: Path) -> bytes:
    """A real X-ray as a 12-bit MONOCHROME2 DICOM carrying a patient name (which must never reach a log)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.round(load_xray(path) * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "SERVE-PRIVACY-0001"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png_of():
    """``png_of(path, size=None, bits=8, compress_level=6)``: a real X-ray re-encoded as PNG bytes."""
    return xray_as_png


@pytest.fixture(scope="session")
def dicom_of():
    """``dicom_of(path)``: a real X-ray as DICOM bytes whose PatientName is :data:`PATIENT_NAME`."""
    return xray_as_dicom


@pytest.fixture(scope="session")
def patient_name() -> str:
    return PATIENT_NAME


@pytest.fixture(scope="session")
def serve_live():
    """``with serve_live(app) as base_url``: the app on uvicorn, in a thread, on a free loopback port."""
    return live_server


@contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread; yields its base URL.

    The listening socket is made here (port 0: the kernel picks a free one), so the URL is known before the server
    starts and a request sent meanwhile waits in the backlog: no polling, no port race.
    """
    listener = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        yield base_url(listener)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
