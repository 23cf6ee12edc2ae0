"""Replicas: the app factory that each ``splitshield serve --workers N`` worker (or any ASGI server) runs.

The parent writes a ``ServeSpec`` as JSON to ``$SPLITSHIELD_SERVE_SPEC``; each worker process imports
``splitshield.deploy.replicas:app_from_env`` and rebuilds the model from the run directory, so no state is shared
and any HTTP load balancer can spread requests over replicas on several machines too (docs/deploy.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from fastapi import FastAPI

from splitshield.deploy.auth import load_token
from splitshield.deploy.cloud import CloudModel
from splitshield.deploy.server import Limits, create_app
from splitshield.deploy.serving import ServingConfig
from splitshield.errors import UserError

SPEC_ENV = "SPLITSHIELD_SERVE_SPEC"


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


def build_app(spec: ServeSpec) -> FastAPI:
    # threads 0 here means 1: a factory cannot know how many workers share the machine (the CLI resolves it).
    serving = ServingConfig(**{**asdict(spec.serving), "threads": spec.serving.threads or 1})
    model = CloudModel.from_run(spec.run_dir, backend=serving.backend, threads=serving.threads)
    return create_app(model, load_token(spec.token_file), Limits(**spec.limits), serving)


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory splitshield.deploy.replicas:app_from_env``): one replica's app."""
    return build_app(ServeSpec.from_env())
