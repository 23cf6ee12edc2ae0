"""The cloud part behind HTTP: a FastAPI app (served by uvicorn) that turns transmitted features into class
probabilities. Only the cloud part stays in memory (cloud.py: onnxruntime or PyTorch); concurrent requests are
batched into one forward pass (batcher.py) and a full queue is refused with 503 instead of growing latency.

Status codes: 400 malformed body, 401 missing/wrong token, 413 body or batch over the limit, 415 unsupported
content type, 422 well-formed but wrong shape, dtype or non-finite values, 503 queue full (with Retry-After).
Every error is JSON ``{"detail": ...}`` with one line saying what was wrong and what to send instead.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from splitshield._version import __version__
from splitshield.deploy import wire
from splitshield.deploy.auth import token_matches
from splitshield.deploy.background import BackgroundServer
from splitshield.deploy.batcher import MicroBatcher, QueueFull
from splitshield.deploy.cloud import CloudModel
from splitshield.deploy.serving import ServingConfig
from splitshield.deploy.shedding import ShedLoad

__all__ = ["BackgroundServer", "CloudModel", "Limits", "create_app"]

log = logging.getLogger(__name__)


@dataclass
class Limits:
    max_batch: int = 256  # features per request
    max_body_bytes: int = 8 << 20
    max_json_batch: int = 16  # JSON lists are ~10x larger and slower to parse than the binary encoding


class PredictJSON(BaseModel):
    features: list[list[list[list[float]]]] = Field(
        description="batch of features, shape (N, C, H, W) as in GET /v1/model; small batches only")


class Prediction(BaseModel):
    probabilities: list[list[float]]
    predictions: list[int]
    labels: list[str]


class ServingInfo(BaseModel):
    backend: str = Field(description="runtime of the cloud forward: onnx (onnxruntime) or torch")
    threads: int = Field(description="intra-op threads of the cloud forward")
    batch_window_ms: float = Field(description="extra wait for rows once requests queue up")
    max_batch_rows: int = Field(description="rows in one batched forward")
    max_queue: int = Field(description="requests allowed to wait; beyond it 503 with Retry-After")
    retry_after_s: int


class BatchingStats(BaseModel):
    waiting: int = Field(description="requests in the queue now")
    requests: int
    rows: int
    rejected: int = Field(description="503s since start (queue full)")
    failed: int
    forwards: int
    mean_batch_rows: float
    batch_rows_histogram: dict[str, int] = Field(description="rows per forward -> number of forwards")


class Stats(BaseModel):
    batching: BatchingStats
    serving: ServingInfo


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
    serving: ServingInfo
    version: str


class Health(BaseModel):
    status: str


class Problem(BaseModel):
    detail: str = Field(description="one line: what was wrong and what to send instead")


_ERRORS = {400: "malformed body", 401: "missing or wrong bearer token", 413: "body or batch over the limit",
           415: "unsupported content type", 422: "wrong shape or dtype, or non-finite values",
           503: "queue full: retry after the Retry-After header's seconds"}


def _responses(*codes: int) -> dict:
    out: dict = {code: {"model": Problem, "description": _ERRORS[code]} for code in codes}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return out


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


def create_app(model: CloudModel, token: Optional[str] = None, limits: Optional[Limits] = None,
               serving: Optional[ServingConfig] = None) -> FastAPI:
    limits = limits or Limits()
    serving = serving or ServingConfig()
    serving.check()
    batcher = MicroBatcher(model.predict, window_ms=serving.batch_window_ms, max_rows=serving.max_batch_rows,
                           max_queue=serving.max_queue)
    # What this process really runs (the backend "auto" resolved, the model's thread count).
    served = {**asdict(serving), "backend": model.backend, "threads": model.threads}
    retry_after = {"Retry-After": str(serving.retry_after_s)}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        yield
        batcher.close()

    app = FastAPI(title="splitshield cloud", version=__version__, lifespan=lifespan,
                  description="The cloud part of a split model: features in, class probabilities out.")
    app.add_middleware(ShedLoad, batcher=batcher, token=token, retry_after_s=serving.retry_after_s)
    bearer = HTTPBearer(auto_error=False, description="SPLITSHIELD_TOKEN of the server")

    # async: a sync dependency would cost a thread-pool hop on every request
    async def authorize(request: Request, _: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
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
                "serving": served, "version": __version__}

    @app.get("/v1/stats", response_model=Stats, dependencies=[Depends(authorize)], responses=_responses(401),
             summary="batching counters of this process: batch sizes formed, 503s")
    async def stats() -> dict:
        return {"batching": batcher.stats.as_dict(batcher.waiting), "serving": served}

    @app.post("/v1/predict", response_model=Prediction, dependencies=[Depends(authorize)],
              openapi_extra=_body_doc(model.feature_shape, limits.max_json_batch),
              responses=_responses(400, 401, 413, 415, 422, 503),
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
        try:
            probs = await batcher.submit(z)
        except QueueFull as exc:
            # The queue filled while this body was read (ShedLoad refuses before reading when it is already full).
            raise HTTPException(503, f"server busy: {exc}; retry after {serving.retry_after_s} s",
                                headers=retry_after) from None
        top = probs.argmax(axis=1)
        names = model.class_names
        # Serialise directly: jsonable_encoder on thousands of floats costs more than the cloud forward pass.
        payload = {"probabilities": probs.tolist(), "predictions": top.tolist(),
                   "labels": [names[i] if i < len(names) else str(i) for i in top.tolist()]}
        return Response(json.dumps(payload), media_type="application/json")

    app.state.batcher = batcher
    return app
