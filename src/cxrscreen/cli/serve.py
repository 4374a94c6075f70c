"""``cxrscreen serve``: the REST API and web page on uvicorn."""

from __future__ import annotations

import argparse

from cxrscreen.inference.options import BACKENDS, DEFAULT_BACKEND
from cxrscreen.serve.settings import API_KEY_ENV, ServeSettings, resolve_api_key


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the REST API (/v1/predict, /v1/model, /docs) and the web page",
        description="Serve the REST API and the web page. A screening aid, not a diagnosis.",
    )
    defaults = ServeSettings()
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s, loopback)")
    parser.add_argument(
        "--port", type=int, default=defaults.port,
        help="port (default: %(default)s; 0 picks a free one); the address is printed once bound",
    )
    parser.add_argument("--model", default=None, metavar="MODEL", help="checkpoint .pt, run directory, .onnx or a bundled model's name (`cxrscreen models`; default: the bundled default)")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="inference engine (default: %(default)s = ONNX Runtime on the CPU, torch on a CUDA GPU)")
    parser.add_argument(
        "--device", default="auto", metavar="auto|cpu|cuda",
        help="where the torch network runs (default: %(default)s, a CUDA GPU when torch sees one)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="CPU threads of the model: workers, each with a single-threaded network (default: the usable CPUs, at most 4)",
    )
    parser.add_argument(
        "--threshold", action="append", metavar="CLASS=P",
        help="decision threshold of a class, repeatable, e.g. covid=0.3 (default: the model's own, else argmax)",
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, metavar="N",
        help="predictions run at once, each on its own thread (default: %(default)s)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_mb, metavar="MB",
        help="largest accepted upload in MiB; larger ones get 413 (default: %(default)g)",
    )
    parser.add_argument(
        "--api-key", default=None, metavar="KEY",
        help=f"require this key on /v1/ requests (X-API-Key or Authorization: Bearer); default: ${API_KEY_ENV}",
    )
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cxrscreen.inference.predictor import parse_thresholds
    from cxrscreen.serve.app import serve

    settings = ServeSettings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_upload_mb=args.max_upload_mb,
        api_key=resolve_api_key(args.api_key),
    )
    serve(
        settings,
        model=args.model,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        thresholds=parse_thresholds(args.threshold or []) or None,
    )
    return 0
