"""How the server runs the cloud: the serving knobs (``ServingConfig``) and the app factory for replicas.

``splitshield serve --workers N`` starts N uvicorn worker processes on one port; each imports
``splitshield.deploy.serving:app_from_env`` and rebuilds the model from the run directory named in
``$SPLITSHIELD_SERVE_SPEC`` (JSON written by the parent), so no state is shared and any HTTP load balancer can
spread requests over replicas on several machines too (docs/deploy.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from splitshield.errors import UserError

SPEC_ENV = "SPLITSHIELD_SERVE_SPEC"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class ServingConfig:
    """Batching, backpressure and the cloud runtime of one server process (all reported by GET /v1/model)."""

    backend: str = "auto"  # auto (onnxruntime when available, else torch) | onnx | torch
    threads: int = 0  # intra-op threads of the cloud forward; 0 = auto (see resolved)
    # Extra wait for rows once requests queue up (a lone request never waits). 0 by measurement: requests that
    # arrive during a forward already form the next batch, and waiting only idled the CPU (docs/benchmarks.md).
    batch_window_ms: float = 0.0
    max_batch_rows: int = 64  # rows in one forward (a larger single request runs alone, never split)
    max_queue: int = 64  # requests waiting for a forward; beyond it 503 + Retry-After at once
    retry_after_s: int = 1  # the Retry-After a 503 sends (HTTP counts in whole seconds)

    def check(self) -> None:
        from splitshield.deploy.cloud import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise UserError(f"--batch-window-ms must be 0..1000, got {self.batch_window_ms:g}")
        for name in ("max_batch_rows", "max_queue", "retry_after_s"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise UserError(f"--threads must be 0 (auto) or positive, got {self.threads}")

    def resolved(self, workers: int = 1) -> "ServingConfig":
        """Threads fixed for this machine: one core per worker is left to its event loop (HTTP and JSON cost more
        CPU per request than the batched forward), the rest is split among the workers' forwards."""
        workers = max(1, workers)
        threads = self.threads or max(1, (available_cores() - workers) // workers)
        return ServingConfig(**{**asdict(self), "threads": threads})


@dataclass
class ServeSpec:
    """Everything a worker process needs to rebuild the app (no secrets: the token comes from its own source)."""

    run_dir: str
    serving: ServingConfig
    limits: dict = field(default_factory=dict)  # server.Limits as a dict
    token_file: Optional[str] = None  # else $SPLITSHIELD_TOKEN, inherited from the parent

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeSpec":
        raw = os.environ.get(SPEC_ENV)
        if not raw:
            raise UserError(f"${SPEC_ENV} is not set; start replicas with 'splitshield serve RUN_DIR --workers N'")
        data = json.loads(raw)
        return cls(data["run_dir"], ServingConfig(**data["serving"]), data.get("limits", {}), data.get("token_file"))


def build_app(spec: ServeSpec):  # noqa: ANN201  (FastAPI)
    from splitshield.deploy.auth import load_token
    from splitshield.deploy.cloud import CloudModel
    from splitshield.deploy.server import Limits, create_app

    # threads 0 here means 1: a factory cannot know how many workers share the machine (the CLI resolves it).
    serving = ServingConfig(**{**asdict(spec.serving), "threads": spec.serving.threads or 1})
    model = CloudModel.from_run(spec.run_dir, backend=serving.backend, threads=serving.threads)
    return create_app(model, load_token(spec.token_file), Limits(**spec.limits), serving)


def app_from_env():  # noqa: ANN201  (FastAPI)
    """uvicorn factory (``--factory splitshield.deploy.serving:app_from_env``): one replica's app."""
    return build_app(ServeSpec.from_env())
