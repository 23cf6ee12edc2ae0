"""splitshield serve RUN_DIR: the cloud part of a trained run behind HTTP (FastAPI under uvicorn), with dynamic
batching, a bounded queue (503 when full) and ``--workers N`` replica processes on one port."""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)
APP_FACTORY = "splitshield.deploy.replicas:app_from_env"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from splitshield.deploy.auth import check_bind, load_token
    from splitshield.deploy.cloud import CloudModel
    from splitshield.deploy.server import Limits, create_app
    from splitshield.deploy.replicas import SPEC_ENV, ServeSpec
    from splitshield.deploy.serving import ServingConfig
    from splitshield.errors import UserError

    for name in ("port", "max_batch", "max_body_bytes", "max_json_batch", "workers"):
        value = getattr(args, name)
        if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
            raise UserError(f"--{name.replace('_', '-')} must be {'0..65535' if name == 'port' else 'positive'}, "
                            f"got {value}")
    serving = ServingConfig(backend=args.backend, threads=args.threads, batch_window_ms=args.batch_window_ms,
                            max_batch_rows=args.max_batch_rows, max_queue=args.max_queue)
    serving.check()  # bad flags fail before anything is loaded
    serving = serving.resolved(args.workers)
    token = load_token(args.token_file)
    check_bind(args.host, token)  # before loading anything: a refused bind should fail fast
    limits = Limits(args.max_batch, args.max_body_bytes, args.max_json_batch)
    # Loaded here even with --workers: a bad run fails in one line, and "auto" is resolved (the cloud exported)
    # once, before N workers could race to write the same file.
    model = CloudModel.from_run(args.run_dir, backend=serving.backend, threads=serving.threads)
    serving.backend = model.backend
    log.info("serving %s (model %s, sigma %g, %s backend, %d threads x %d workers, batch window %g ms, "
             "max %d rows, queue %d) on http://%s:%d%s", args.run_dir, model.model_hash[:12], model.sigma,
             model.backend, serving.threads, args.workers, serving.batch_window_ms, serving.max_batch_rows,
             serving.max_queue, args.host, args.port, "" if token else " WITHOUT a token (loopback only)")
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log}
    if args.workers == 1:
        uvicorn.run(create_app(model, token, limits, serving), **common)
        return 0
    del model  # each worker rebuilds its own from the run directory
    spec = ServeSpec(os.path.abspath(args.run_dir), serving, vars(limits), args.token_file)
    os.environ[SPEC_ENV] = spec.to_env()  # inherited by the worker processes uvicorn spawns
    uvicorn.run(APP_FACTORY, factory=True, workers=args.workers, **common)
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
    p.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"),
                   help="cloud runtime: auto = onnxruntime on RUN_DIR/export/cloud.onnx (exported and checked if "
                        "missing), torch when that is not possible")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (0 = auto: (cores - workers) / workers, at least 1)")
    p.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="extra wait for more rows once requests queue up (a lone request never waits; default 0: "
                        "requests arriving during a forward already batch up)")
    p.add_argument("--max-batch-rows", type=int, default=64, help="rows in one batched cloud forward")
    p.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait; beyond it 503 + Retry-After")
    p.add_argument("--workers", type=int, default=1, help="server processes on the port (replicas, one model each)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(handler=_serve)
