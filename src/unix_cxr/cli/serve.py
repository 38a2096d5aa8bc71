"""`unix-cxr serve`: the web app (gradio, `unix_cxr.serve.webapp`) or, with `--api`, the OpenAI-compatible REST
server (FastAPI + uvicorn, `unix_cxr.serve.api`). Both load one model, shared by every visitor behind a bounded
queue, and bind 127.0.0.1 unless `--host` says otherwise."""

from __future__ import annotations

import argparse
import logging
import os

from .options import add_model_options, load_pipeline

log = logging.getLogger(__name__)

API_KEY_ENV = "UNIX_CXR_API_KEY"


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.max_queue < 1:
        raise ValueError(f"--max-queue must be >= 1, got {args.max_queue}")
    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError(f"--max-upload-mb must be in (0, 1024], got {args.max_upload_mb}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    limits = {"max_queue": args.max_queue, "max_upload_mb": args.max_upload_mb}
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines (research use only; not for diagnosis)", args.host)
    if args.api:
        from ..serve.api import run_api

        api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
        pipe = load_pipeline(args, progress=False)
        run_api(pipe, host=args.host, port=args.port if args.port else 8000, api_key=api_key, **limits)
    else:
        from ..serve.webapp import run_webapp

        pipe = load_pipeline(args, progress=False)
        run_webapp(pipe, host=args.host, port=args.port if args.port else 7860, **limits)
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="the web app (read / draw an X-ray) or, with --api, an OpenAI-compatible REST server",
        description="Serve one model to every visitor behind a bounded queue. Without --api: a gradio web app with "
                    "a 'read an X-ray' tab (PNG, JPEG, DICOM upload; streamed report with its findings "
                    "highlighted) and a 'draw an X-ray' tab. With --api: POST /v1/chat/completions, POST "
                    "/v1/images/generations, GET /v1/models, GET /health (docs/usage.md). Research use only; "
                    "not for diagnosis.")
    add_model_options(p, default_batch=1)
    p.add_argument("--api", action="store_true", help="the OpenAI-compatible REST server instead of the web app")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 7860 for the web app, 8000 for --api)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests waiting for the model at most; more are refused (the API answers 503)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload / request body, in MB")
    p.add_argument("--api-key", default=None,
                   help=f"--api only: require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else none)")
    p.set_defaults(func=_cmd_serve)
