"""The cloud part behind HTTP: a FastAPI app (served by uvicorn) that turns transmitted features into class
probabilities. Only the cloud network stays in memory; it runs in eval mode under torch.inference_mode.

Status codes: 400 malformed body, 401 missing/wrong token, 413 body or batch over the limit, 415 unsupported
content type, 422 well-formed but wrong shape, dtype or non-finite values. Every error is JSON ``{"detail": ...}``
with one line saying what was wrong and what to send instead.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from splitshield import __version__
from splitshield.deploy import wire
from splitshield.deploy.auth import token_matches
from splitshield.deploy.manifest import state_hash

log = logging.getLogger(__name__)


@dataclass
class Limits:
    max_batch: int = 256  # features per request
    max_body_bytes: int = 8 << 20
    max_json_batch: int = 16  # JSON lists are ~10x larger and slower to parse than the binary encoding


class CloudModel:
    """The cloud network plus what clients must know to talk to it."""

    def __init__(self, cloud: torch.nn.Module, feature_shape: tuple[int, ...], input_shape: tuple[int, ...],
                 sigma: float, class_names: list[str], model_hash: str, dataset: str) -> None:
        self.cloud = cloud.eval()
        self.feature_shape = tuple(feature_shape)
        self.input_shape = tuple(input_shape)
        self.sigma = sigma
        self.class_names = class_names
        self.model_hash = model_hash
        self.dataset = dataset

    @classmethod
    def from_run(cls, run_dir: str) -> "CloudModel":
        from splitshield.train.build import load_run

        run = load_run(run_dir, "cpu")
        # Hash the full model (what export hashed) before dropping the edge: only the cloud stays referenced.
        return cls(run.model.cloud, run.model.feature_shape, run.info.input_shape, float(run.defenses.noise_std()),
                   list(run.info.class_names), state_hash(run.model), run.info.name)

    def predict(self, z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.cloud(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)))
            return torch.softmax(logits.float(), dim=1).numpy()


class PredictJSON(BaseModel):
    features: list[list[list[list[float]]]] = Field(
        description="batch of features, shape (N, C, H, W) as in GET /v1/model; small batches only")


class Prediction(BaseModel):
    probabilities: list[list[float]]
    predictions: list[int]
    labels: list[str]


class ModelInfo(BaseModel):
    feature_shape: list[int]
    dtype: str
    accepted_dtypes: list[str]
    sigma: float
    class_names: list[str]
    model_hash: str
    dataset: str
    content_types: list[str]
    limits: dict[str, int]
    version: str


class Health(BaseModel):
    status: str


class Problem(BaseModel):
    detail: str = Field(description="one line: what was wrong and what to send instead")


_ERRORS = {400: "malformed body", 401: "missing or wrong bearer token", 413: "body or batch over the limit",
           415: "unsupported content type", 422: "wrong shape or dtype, or non-finite values"}


def _responses(*codes: int) -> dict:
    return {code: {"model": Problem, "description": _ERRORS[code]} for code in codes}


def _fail(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def check_features(z: np.ndarray, model: CloudModel, max_batch: int) -> np.ndarray:
    """Exact shape, float dtype, batch limit, finite values; returns float32 (N, C, H, W)."""
    shape, want = tuple(z.shape), model.feature_shape
    if z.ndim == 4 and shape[1:] == want:
        if shape[0] == 0:
            raise _fail(422, "empty batch: send at least one feature")
        if shape[0] > max_batch:
            raise _fail(413, f"batch of {shape[0]} exceeds the limit of {max_batch}; split it into smaller requests")
        if not np.isfinite(z).all():
            bad = int(z.size - np.isfinite(z).sum())
            raise _fail(422, f"features contain {bad} NaN/Inf values (or beyond float32 range); send finite numbers")
        return z.astype(np.float32)  # a writable copy: the body buffer is read-only
    if shape == want:
        raise _fail(422, f"missing batch dimension: send shape (1, {', '.join(map(str, want))})")
    if shape[-3:] == model.input_shape and model.input_shape != want:
        raise _fail(422, f"this looks like raw images of shape {model.input_shape}; the server accepts only "
                         f"features {want}: run the edge encoder (splitshield client) and send its output")
    raise _fail(422, f"features must have shape (N, {', '.join(map(str, want))}), got {shape}")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _fail(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _fail(413, f"body of {declared} bytes exceeds the limit of {limit}; send a smaller batch")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count as they arrive
        size += len(chunk)
        if size > limit:
            raise _fail(413, f"body exceeds the limit of {limit} bytes; send a smaller batch")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes, limits: Limits) -> np.ndarray:
    try:
        req = PredictJSON.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise _fail(422, f"invalid JSON body at {where}: {err.get('msg', 'invalid')}; send "
                         '{"features": [[[[...]]]]} with shape (N, C, H, W)') from None
    if len(req.features) > limits.max_json_batch:
        raise _fail(413, f"JSON batch of {len(req.features)} exceeds {limits.max_json_batch}; use the binary "
                         f"encoding ({wire.CONTENT_TYPE}) for large batches")
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected as non-finite
            return np.asarray(req.features, dtype=np.float32)
    except ValueError:
        raise _fail(422, "features is a ragged nested list; every feature must have the same (C, H, W)") from None


def _body_doc(feature_shape: tuple[int, ...], max_json_batch: int) -> dict:
    """OpenAPI request body with the exact nesting and sizes this model accepts (clients and fuzzers see them)."""
    schema: dict = {"type": "number"}
    for size in reversed(feature_shape):
        schema = {"type": "array", "items": schema, "minItems": size, "maxItems": size}
    features = {"type": "array", "items": schema, "minItems": 1, "maxItems": max_json_batch,
                "description": f"batch of features, shape (N, {', '.join(map(str, feature_shape))})"}
    return {"requestBody": {"required": True, "content": {
        wire.CONTENT_TYPE: {"schema": {"type": "string", "format": "binary",
                                       "description": "SSF1 header + little-endian float32/float16 (docs/deploy.md)"}},
        "application/json": {"schema": {"type": "object", "required": ["features"],
                                        "properties": {"features": features}}}}}}


def create_app(model: CloudModel, token: Optional[str] = None, limits: Optional[Limits] = None) -> FastAPI:
    limits = limits or Limits()
    app = FastAPI(title="splitshield cloud", version=__version__,
                  description="The cloud part of a split model: features in, class probabilities out.")
    bearer = HTTPBearer(auto_error=False, description="SPLITSHIELD_TOKEN of the server")

    def authorize(request: Request, _: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is not None and not token_matches(request.headers.get("authorization"), token):
            raise HTTPException(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        return JSONResponse({"detail": f"invalid request: {err.get('msg', 'bad input')}"}, status_code=422)

    @app.get("/healthz", response_model=Health, summary="liveness (no token needed)")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(authorize)], responses=_responses(401),
             summary="feature shape, dtype, noise sigma, class names and model hash")
    async def model_info() -> dict:
        return {"feature_shape": list(model.feature_shape), "dtype": "float32",
                "accepted_dtypes": ["float32", "float16"], "sigma": model.sigma, "class_names": model.class_names,
                "model_hash": model.model_hash, "dataset": model.dataset,
                "content_types": [wire.CONTENT_TYPE, "application/json"], "limits": asdict(limits),
                "version": __version__}

    @app.post("/v1/predict", response_model=Prediction, dependencies=[Depends(authorize)],
              openapi_extra=_body_doc(model.feature_shape, limits.max_json_batch), responses=_responses(400, 401, 413, 415, 422),
              summary="class probabilities for a batch of transmitted features")
    async def predict(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (wire.CONTENT_TYPE, "application/octet-stream", "application/json"):
            raise _fail(415, f"unsupported content type {ctype or '(none)'!r}; send {wire.CONTENT_TYPE} "
                             "(binary features) or application/json")
        body = await _read_body(request, limits.max_body_bytes)
        if ctype == "application/json":
            z = _parse_json(body, limits)
        else:
            try:
                dtype, shape, _ = wire.peek_shape(body)
                if len(shape) == 4 and shape[1:] == model.feature_shape and shape[0] > limits.max_batch:
                    raise _fail(413, f"batch of {shape[0]} exceeds the limit of {limits.max_batch}")
                z = wire.decode(body)
            except wire.WireError as exc:
                raise _fail(400, str(exc)) from None
        z = check_features(z, model, limits.max_batch)
        probs = await run_in_threadpool(model.predict, z)
        top = probs.argmax(axis=1)
        names = model.class_names
        # Serialise directly: jsonable_encoder on thousands of floats costs more than the cloud forward pass.
        payload = {"probabilities": probs.tolist(), "predictions": top.tolist(),
                   "labels": [names[i] if i < len(names) else str(i) for i in top.tolist()]}
        return Response(json.dumps(payload), media_type="application/json")

    return app


class BackgroundServer:
    """uvicorn in a thread on a socket bound before start (no port race): for tests and benchmarks."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 20 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
