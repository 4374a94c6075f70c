"""``cxrscreen dicom listen``: the DICOM node's flags and its run loop."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from cxrscreen import SCREENING_NOTICE


def register_listen(commands: argparse._SubParsersAction, add_common_arguments: Callable) -> None:
    listen = commands.add_parser(
        "listen", help="run a DICOM node (Storage SCP): screen what a PACS sends, send the results back",
        description="Receive DICOM objects by C-STORE, screen the frontal CR/DX chest X-rays among them and send "
        "the results (SR, Grad-CAM SC) to --send-to and/or write them under --out. Each object is safe in the spool "
        "before it is acknowledged; a restart on the same spool finishes what was left. " + SCREENING_NOTICE,
    )
    listen.add_argument("--port", type=int, default=11112, help="TCP port (0 picks a free one; printed once bound)")
    listen.add_argument("--ae-title", default="CXRSCREEN", metavar="AET", help="this node's AE title")
    listen.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback unless you open it)")
    listen.add_argument("--send-to", metavar="AET@HOST:PORT", help="the PACS to C-STORE results to (default: none; then --out is needed)")
    listen.add_argument("--out", type=Path, metavar="DIR", help="also write results as <SOPInstanceUID>_<kind>.dcm here (default: not written)")
    listen.add_argument("--spool", type=Path, default=Path("cxrscreen-spool"), metavar="DIR",
                        help="received objects and the journal wait here until their results are sent")
    listen.add_argument("--allow", metavar="AET,...", help="accept associations only from these calling AE titles (default: any)")
    listen.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve DICOM over TLS with this certificate (default: no TLS)")
    listen.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key (default: none; needed with --tls-cert)")
    listen.add_argument("--send-associations", type=int, default=2, metavar="N",
                        help="associations that send results to --send-to side by side (default: 2)")
    listen.add_argument("--processes", type=int, metavar="N",
                        help="worker processes that screen, one model each (default: --threads; 0: in the node's own process)")
    listen.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics (C-STOREs by status, screened images by label, guard flags, "
                        "latency, drift) at http://HOST:PORT/metrics, HOST as --host (default: no metrics server)")
    listen.add_argument("--log-level", default="info", choices=("debug", "info", "warning"), help="log detail on stderr")
    add_common_arguments(listen)
    listen.set_defaults(func=run_listen)


def run_listen(args: argparse.Namespace) -> int:
    from cxrscreen.cli.predict import load_for_inference
    from cxrscreen.dicom.node import DicomNode, NodeConfig
    from cxrscreen.dicom.screen import DicomScreener, parse_outputs
    from cxrscreen.dicom.send import Destination
    from cxrscreen.monitoring.metrics import serve_metrics
    from cxrscreen.monitoring.observers import build_monitoring

    config = NodeConfig(
        port=args.port, ae_title=args.ae_title, host=args.host,
        send_to=Destination.parse(args.send_to) if args.send_to else None, out=args.out, spool=args.spool,
        allow=tuple(a.strip() for a in (args.allow or "").split(",") if a.strip()),
        tls_cert=args.tls_cert, tls_key=args.tls_key, processes=args.processes,
        send_associations=args.send_associations,
    )
    config.check()
    outputs = parse_outputs(args.outputs)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)  # its INFO/DEBUG lines can print dataset contents
    predictor = load_for_inference(args)
    monitoring = build_monitoring(predictor, audit_log=args.audit_log, metrics=args.metrics_port is not None)
    if monitoring.metrics is not None:
        serve_metrics(monitoring.metrics, args.metrics_port, config.host)
    if monitoring.drift is None:
        print("cxrscreen dicom listen: the model carries no reference, so no drift is watched", file=sys.stderr)
    on_status = None if monitoring.metrics is None else lambda status: monitoring.metrics.count_request(
        "dicom", "C-STORE", f"0x{status:04X}")
    node = DicomNode(config, DicomScreener(predictor, outputs, observers=monitoring.observers), on_status=on_status)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with monitoring:
        node.start()
        metrics = f", metrics on {config.host}:{args.metrics_port}" if monitoring.metrics is not None else ""
        print(f"cxrscreen dicom listen: {config.ae_title} on {config.host}:{node.port}{metrics}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            node.stop()
    return 0
