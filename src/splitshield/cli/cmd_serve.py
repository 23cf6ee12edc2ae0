"""splitshield serve RUN_DIR: the cloud part of a trained run behind HTTP (FastAPI under uvicorn)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from splitshield.deploy.auth import check_bind, load_token
    from splitshield.deploy.server import CloudModel, Limits, create_app
    from splitshield.errors import UserError

    for name in ("port", "max_batch", "max_body_bytes", "max_json_batch", "threads"):
        value = getattr(args, name)
        if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
            raise UserError(f"--{name.replace('_', '-')} must be {'0..65535' if name == 'port' else 'positive'}, "
                            f"got {value}")
    token = load_token(args.token_file)
    check_bind(args.host, token)  # before loading anything: a refused bind should fail fast
    torch.set_num_threads(args.threads)
    model = CloudModel.from_run(args.run_dir)
    app = create_app(model, token, Limits(args.max_batch, args.max_body_bytes, args.max_json_batch))
    log.info("serving %s (model %s, sigma %g) on http://%s:%d%s", args.run_dir, model.model_hash[:12],
             model.sigma, args.host, args.port, "" if token else " WITHOUT a token (loopback only)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the cloud part of a run over HTTP (POST /v1/predict)")
    p.add_argument("run_dir", help="a trained run directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs a token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding the bearer token (default: $SPLITSHIELD_TOKEN)")
    p.add_argument("--max-batch", type=int, default=256, help="features per request")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="request body limit in bytes")
    p.add_argument("--max-json-batch", type=int, default=16, help="features per JSON request")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the cloud model")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(handler=_serve)
