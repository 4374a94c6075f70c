"""DICOM node benchmark: 200 chest X-rays C-STOREd over 3 concurrent associations to ``cxrscreen dicom listen``
(a subprocess, default settings: SR + Grad-CAM SC per image), results sent on to a destination Storage SCP: dcmtk's
``storescp`` (C++, as a PACS is; ``--destination pynetdicom``: a pynetdicom SCP in the benchmark's process).

    .venv/bin/python benchmarks/dicom_node.py [--images 200] [--associations 3] [--association-per-image] [--side 0]
                                              [--destination storescp|pynetdicom] [--stages 30] [--json FILE]

Targets: all screened; >= 10 images/s end to end (first C-STORE sent -> last result stored at the destination);
p95 receive-to-result-sent <= 3 s, measured from the start of the object's C-STORE at the sender (so it counts the
transfer and any time the node holds its response for flow control) to both results stored at the destination.
The C-STORE response times (how long the node held them) are reported too.
Also the CPU time per image of the node (all its processes; its main process apart) and of the senders and the
destination (this process, and storescp's), which does not depend on what else loads the machine. Then "what costs what": each
stage timed alone (wall and CPU) in this process as a screening worker runs it (one thread), on ``--stages`` images
(decode, predict, predict with Grad-CAM, SR, SC, writing the spool file, encoding and sending the results over
loopback).
``--side N`` enlarges every image to N x N first (real radiographs are 2-3k px; the shared ones are 224-256 px).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' DICOM builder and destination SCP
from dicom.conftest import StoreCollector, make_dicom  # noqa: E402
from dicom.orthanc import free_port  # noqa: E402

from cxrscreen.dicom.send import files_sent_as_stored  # noqa: E402

SHARED = Path(os.environ.get("CXRSCREEN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def sources(count: int, side: int, folder: Path) -> list:
    jpegs = sorted((SHARED / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))[: count // 2]
    jpegs += sorted((SHARED / "COVID-19_Radiography_Dataset" / "Normal" / "images").glob("*.jpg"))[: count - len(jpegs)]
    if side:
        enlarged = []
        for i, jpeg in enumerate(jpegs):
            path = folder / f"{i}.png"
            Image.open(jpeg).convert("L").resize((side, side), Image.BILINEAR).save(path)
            enlarged.append(path)
        jpegs = enlarged
    return [make_dicom(np.asarray(Image.open(p).convert("L")) if side else p) for p in jpegs]


def start_node(spool: Path, destination_port: int, log: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrscreen", "dicom", "listen", "--port", "0", "--spool", str(spool),
         "--send-to", f"BENCH@127.0.0.1:{destination_port}"],
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env,
    )
    line = process.stdout.readline()
    if "listen" not in line:
        raise SystemExit(f"node did not start; see {log}")
    return process, int(line.rsplit(":", 1)[1])


def send(files: list[tuple[str, Path]], port: int, acked: dict[str, tuple[float, float]], per_image: bool = False) -> None:
    """C-STORE files as they are stored (encoded before the clock starts, as a modality has them); ``acked``: uid ->
    (when its C-STORE began, when the success response came). ``per_image``: a new association for each file (as
    a PACS routing instance by instance does), counted in its C-STORE's time."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, "1.2.840.10008.1.2.1")
    assoc = None
    for uid, path in files:
        began = time.monotonic()
        if assoc is None:
            assoc = ae.associate("127.0.0.1", port, ae_title="CXRSCREEN")
        with files_sent_as_stored():
            status = assoc.send_c_store(path)
        if status.Status == 0:
            acked[uid] = (began, time.monotonic())
        if per_image:
            assoc.release()
            assoc = None
    if assoc is not None:
        assoc.release()


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid`` itself and by its live descendants (the node's
    screening workers)."""
    own = descendants = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            descendants += sum(sum(cpu_s(int(child))) for child in (task / "children").read_text().split())
    except (OSError, IndexError):
        pass  # ended meanwhile
    return own, descendants


class Storescp:
    """dcmtk's ``storescp`` (C++, as a PACS is) as the destination: it writes what it is sent into ``folder``, where
    each file is noted when first seen (polled every 10 ms). Its CPU is counted with the benchmark's own."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self.process: subprocess.Popen | None = None

    def start(self) -> int:
        self.folder.mkdir(parents=True)
        port = free_port()
        self.process = subprocess.Popen(["storescp", "--fork", "--aetitle", "BENCH", "--output-directory",
                                         str(self.folder), "--filename-extension", ".dcm", str(port)])
        for _ in range(200):  # until it listens
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        threading.Thread(target=self._poll, daemon=True).start()
        return port

    def _poll(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for entry in os.scandir(self.folder):
                self.seen.setdefault(entry.name, now)
            time.sleep(0.01)

    def __len__(self) -> int:
        return len(self.seen)

    def cpu_s(self) -> float:
        return sum(cpu_s(self.process.pid)) if self.process else 0.0

    def stop(self) -> None:
        time.sleep(0.5)  # the last file written whole
        self._stop.set()
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def arrivals(self) -> list[tuple[object, float]]:
        return [(dcmread(self.folder / name), at) for name, at in self.seen.items()]


class Collector(StoreCollector):
    """The tests' pynetdicom Storage SCP as the destination (in this process, so its CPU is this process's)."""

    def __len__(self) -> int:
        return len(self.raw)

    def cpu_s(self) -> float:
        return 0.0

    def arrivals(self) -> list[tuple[object, float]]:
        return [(ds, self.arrival[uid]) for uid, ds in self.received.items()]


def end_to_end(datasets: list, associations: int, work: Path, per_image: bool = False,
               destination_kind: str = "storescp") -> dict:
    destination = Storescp(work / "destination") if destination_kind == "storescp" else Collector("BENCH")
    node, port = start_node(work / "spool", destination.start(), work / "node.log")
    try:
        acked: dict[str, tuple[float, float]] = {}
        files = []
        for i, ds in enumerate(datasets):
            ds.save_as(work / f"source-{i}.dcm", enforce_file_format=True)
            files.append((str(ds.SOPInstanceUID), work / f"source-{i}.dcm"))
        association_cpu_ms = association_cost(node.pid, port)
        node_cpu, own_cpu = cpu_s(node.pid), time.process_time() + destination.cpu_s()
        start = time.monotonic()
        threads = [threading.Thread(target=send, args=(files[i::associations], port, acked, per_image))
                   for i in range(associations)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 600
        spooled = work / "spool" / "received"
        while len(destination) < 2 * len(datasets) and time.monotonic() < deadline:
            if not any(spooled.glob("*.dcm")) and len(acked) == len(datasets):
                break  # nothing left to send: some were not screened (see the node's log)
            time.sleep(0.02)
        node_cpu = [after - before for after, before in zip(cpu_s(node.pid), node_cpu)]
        own_cpu = time.process_time() + destination.cpu_s() - own_cpu
    finally:
        node.terminate()
        node.wait()
        destination.stop()
    done: dict[str, float] = {}
    for ds, arrived in destination.arrivals():  # decoded now, after the clock stopped
        source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) if "SourceImageSequence" in ds else \
            str(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        done[source] = max(done.get(source, 0.0), arrived)
    latencies = sorted(done[uid] - acked[uid][0] for uid in done if uid in acked)
    responses = sorted(answered - began for began, answered in acked.values())
    wall = max(done.values()) - start
    return {
        "images": len(datasets), "acknowledged": len(acked), "screened_and_sent": len(done),
        "wall_s": wall, "images_per_s": len(done) / wall,
        "p50_s": latencies[len(latencies) // 2], "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "max_s": latencies[-1],
        "response_p50_s": responses[len(responses) // 2], "response_max_s": responses[-1],
        "node_cpu_ms_per_image": 1000 * sum(node_cpu) / len(datasets),
        "node_main_process_cpu_ms_per_image": 1000 * node_cpu[0] / len(datasets),
        "sender_and_destination_cpu_ms_per_image": 1000 * own_cpu / len(datasets),
        "load_average_1min_after": os.getloadavg()[0],
        "node_cpu_ms_per_association": association_cpu_ms,
    }


def association_cost(pid: int, port: int, count: int = 10) -> float:
    """The node's CPU ms per association opened and released (a PACS may open one per image)."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    before = sum(cpu_s(pid))
    for _ in range(count):
        ae.associate("127.0.0.1", port, ae_title="CXRSCREEN").release()
    return 1000 * (sum(cpu_s(pid)) - before) / count


def stages(datasets: list, work: Path) -> dict[str, tuple[float, float]]:
    """Mean ms per image of each stage, timed alone as a screening worker runs it (one thread): (wall, CPU)."""
    from cxrscreen.data.dicom import decode_dicom
    from cxrscreen.dicom.screen import DicomScreener
    from cxrscreen.dicom.sc import build_sc
    from cxrscreen.dicom.send import Destination, Sender
    from cxrscreen.dicom.spool import Spool
    from cxrscreen.dicom.workers import ScreenerRecipe
    from cxrscreen.dicom.sr import build_sr
    from cxrscreen.inference.predictor import load_predictor

    screener = ScreenerRecipe.of(DicomScreener(load_predictor())).load()  # as a worker process has it
    predictor, algorithm = screener.predictor, screener.algorithm
    spool = Spool(work / "stage-spool")
    destination = StoreCollector("BENCH")
    sender = Sender(Destination("BENCH", "127.0.0.1", destination.start()), "CXRSCREEN")
    times: dict[str, list[tuple[float, float]]] = {}

    def timed(name, fn, *args):
        begin, cpu = time.perf_counter(), time.process_time()
        value = fn(*args)
        times.setdefault(name, []).append((1000 * (time.perf_counter() - begin), 1000 * (time.process_time() - cpu)))
        return value

    for i, ds in enumerate(datasets):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        timed("spool write (atomic, fsync)", spool.store, data)
        image = timed("decode (pydicom, VOI, MONOCHROME1)", decode_dicom, data, "x")
        timed("predict alone (lungs, classifier, guard)", predictor.predict, image, "x")
        prediction, explanation = timed("predict + Grad-CAM (one forward pass, as screened)",
                                        predictor.predict_and_explain, image, "x", False)
        heatmap = explanation.heatmap
        sr = timed("SR (highdicom TID 1500)", build_sr, ds, prediction, algorithm)
        sc = timed("SC (overlay, banner, highdicom)", build_sc, ds, image, heatmap, prediction, algorithm)
        for kind, result in (("SR", sr), ("SC", sc)):
            path = work / f"{kind}.dcm"
            timed(f"encode {kind} (pydicom)", lambda: result.save_as(path, enforce_file_format=True))
            timed(f"send {kind} (C-STORE, loopback)", sender.send, path)
        if i == 0:
            times.clear()  # the first image pays for loading torch and exporting networks
    sender.close()
    destination.stop()
    spool.close()
    return {name: (statistics.mean(v[0] for v in values), statistics.mean(v[1] for v in values))
            for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--associations", type=int, default=3)
    parser.add_argument("--side", type=int, default=0, help="enlarge images to SIDE x SIDE (0: as stored)")
    parser.add_argument("--destination", choices=("storescp", "pynetdicom"), default="storescp",
                        help="the SCP results are sent to: dcmtk's storescp (C++, as a PACS) or a pynetdicom SCP in "
                             "this process (sharing its GIL and CPU with the senders)")
    parser.add_argument("--association-per-image", action="store_true",
                        help="each sender opens a new association for every image (a PACS routing image by image)")
    parser.add_argument("--stages", type=int, default=30, help="images for the per-stage timing (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-dicom-bench-") as tmp:
        work = Path(tmp)
        datasets = sources(args.images, args.side, work)
        side = f"{datasets[0].Columns}x{datasets[0].Rows}"
        result = end_to_end(datasets, args.associations, work, args.association_per_image, args.destination)
        how = "senders, a new association per image" if args.association_per_image else "associations"
        print(f"| images ({side}, {args.associations} {how}) | screened and sent | wall | images/s | "
              "p50 receive->sent | p95 | max | C-STORE response p50 / max |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {result['images']} | {result['screened_and_sent']} | {result['wall_s']:.1f} s | "
              f"{result['images_per_s']:.1f} | {result['p50_s']:.2f} s | {result['p95_s']:.2f} s | {result['max_s']:.2f} s | "
              f"{result['response_p50_s']:.2f} / {result['response_max_s']:.2f} s |")
        print(f"\nCPU per image: node (all its processes) {result['node_cpu_ms_per_image']:.0f} ms (its main process: "
              f"{result['node_main_process_cpu_ms_per_image']:.0f} ms), senders and destination "
              f"({args.destination}) {result['sender_and_destination_cpu_ms_per_image']:.0f} ms; "
              f"1-minute load average after: {result['load_average_1min_after']:.1f} on {os.cpu_count()} CPUs; "
              f"node CPU per association opened and released: {result['node_cpu_ms_per_association']:.0f} ms")
        costs = stages(datasets[: args.stages + 1], work) if args.stages else {}
        if costs:
            print(f"\n| stage (mean of {args.stages} images, alone, one thread) | ms per image | CPU ms per image |\n|---|---|---|")
            for name, (wall, cpu) in costs.items():
                print(f"| {name} | {wall:.1f} | {cpu:.1f} |")
        if args.json:
            args.json.write_text(json.dumps({"end_to_end": result, "stages_ms": costs, "side": side}, indent=2))


if __name__ == "__main__":
    main()
