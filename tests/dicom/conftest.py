"""DICOM inputs built in the test from the real shared JPEGs, and a destination SCP that counts what it is sent."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cxrscreen.dicom.select import CR_IMAGE, DX_FOR_PRESENTATION

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_NAME = "SECRETNAME^ALICE"
PATIENT_ID = "PID-7734-SECRET"
BIRTH_DATE = "19610203"


def chest_jpegs(root: Path, count: int) -> list[Path]:
    return sorted((root / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))[:count]


def make_dicom(jpeg: Path | np.ndarray, modality: str = "CR", view: str = "PA", monochrome1: bool = False, bits: int = 8,
               frames: int = 1, pixels: bool = True, study_uid: str | None = None, **extra) -> Dataset:
    """A DICOM image of a real chest X-ray JPEG: CR, DX or CT (by ``modality``), 8 or 16 bits stored."""
    if isinstance(jpeg, np.ndarray):  # a uint8 picture that is no X-ray (noise), to meet the OOD guard
        grey = jpeg.astype(np.uint16)
    else:
        grey = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint16)
    if bits > 8:
        grey = grey * ((2**bits - 1) // 255)  # the same picture in a 12/16-bit range
    if monochrome1:
        grey = (2**bits - 1) - grey
    ds = Dataset()
    ds.SOPClassUID = {"CR": CR_IMAGE, "DX": DX_FOR_PRESENTATION, "CT": CT_IMAGE}[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "F"
    ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime = "ACC-42", "7", "20260301", "101500"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = modality, 1, 1, "Test Modality Inc"
    ds.BodyPartExamined = "CHEST"
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixels:
        stored = grey.astype(np.uint8 if bits == 8 else np.uint16)
        ds.PixelData = np.concatenate([stored] * frames).tobytes()
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_dicom(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def bundled_screener():
    """The bundled default model behind a DicomScreener (SR and SC)."""
    from cxrscreen.dicom.screen import DicomScreener
    from cxrscreen.inference.predictor import load_predictor

    return DicomScreener(load_predictor())


class StoreCollector:
    """A Storage SCP standing in for a PACS: keeps every SR and SC it is sent (stored as received, decoded when
    asked: a benchmark's destination should not eat the CPU it measures), counts C-STOREs per UID, and notes when
    each first arrived (``time.monotonic()``)."""

    def __init__(self, ae_title: str = "PACS"):
        self.ae = AE(ae_title=ae_title)
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_supported_context(sop_class)
        self.raw: dict[str, bytes] = {}
        self._decoded: dict[str, Dataset] = {}
        self.counts: Counter[str] = Counter()
        self.arrival: dict[str, float] = {}
        self.associations = 0  # associations accepted so far
        self.lock = threading.Lock()
        self.server = None

    @property
    def received(self) -> dict[str, Dataset]:
        """{SOPInstanceUID: dataset} of what arrived so far."""
        with self.lock:
            pending = {uid: data for uid, data in self.raw.items() if uid not in self._decoded}
        for uid, data in pending.items():
            self._decoded[uid] = dcmread(io.BytesIO(data))
        return dict(self._decoded)

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        data = event.encoded_dataset()
        with self.lock:
            self.raw[uid] = data
            self._decoded.pop(uid, None)
            self.counts[uid] += 1
            self.arrival.setdefault(uid, time.monotonic())
        return 0x0000

    def _on_accepted(self, event) -> None:
        with self.lock:
            self.associations += 1

    def start(self, port: int = 0) -> int:
        self.server = self.ae.start_server(("127.0.0.1", port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted)])
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def collector():
    scp = StoreCollector()
    scp.start()
    yield scp
    scp.stop()
