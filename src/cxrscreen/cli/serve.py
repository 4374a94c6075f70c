"""``cxrscreen serve``: the REST API and web page on uvicorn."""

from __future__ import annotations

import argparse

from cxrscreen.cli.predict import add_audit_log_argument, add_backend_argument, add_inference_arguments, add_model_arguments
from cxrscreen.serve.settings import API_KEY_ENV, ServeSettings, resolve_api_key


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve the REST API (/v1/predict, /v1/model, /metrics, /docs) and the web page",
        description="Serve the REST API and the web page. A screening aid, not a diagnosis.",
    )
    defaults = ServeSettings()
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s, loopback)")
    parser.add_argument(
        "--port", type=int, default=defaults.port,
        help="port (default: %(default)s; 0 picks a free one); the address is printed once bound",
    )
    add_model_arguments(parser)
    add_backend_argument(parser)
    add_inference_arguments(parser)  # --device, --threads, --threshold: as predict has them
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
    add_audit_log_argument(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from cxrscreen.inference.options import parse_thresholds
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
        audit_log=args.audit_log,
    )
    return 0
