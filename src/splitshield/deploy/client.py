"""The edge client: images -> exported encoder (onnxruntime) + device noise -> only features to the server."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from splitshield.deploy import wire
from splitshield.deploy.edge import EdgeEncoder
from splitshield.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    path: str
    label: str
    index: int
    probability: float
    latency_ms: float  # encode + request round trip
    bytes_sent: int  # HTTP body bytes (features only)


def load_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
    """An image file as float32 (C, H, W) in [0, 1], converted to the model's channels and size."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                log.warning("%s is %dx%d, resizing to the model's %dx%d", path, *img.size, w, h)
                img = img.resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path} ({str(exc)[:80]}); pass PNG/JPEG files") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class CloudClient:
    """HTTP side: checks that the server serves the model the export came from, then posts features."""

    def __init__(self, server: str, token: Optional[str] = None, timeout: float = 30.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def _get(self, path: str) -> dict:
        import httpx

        try:
            r = self.http.get(path)
        except httpx.HTTPError as exc:
            raise UserError(f"cannot reach {self.http.base_url} ({exc}); is 'splitshield serve' running?") from None
        if r.status_code != 200:
            raise UserError(f"server answered {r.status_code} for {path}: {_detail(r)}")
        return r.json()

    def check_model(self, encoder: EdgeEncoder) -> dict:
        info = self._get("/v1/model")
        m = encoder.manifest
        if info.get("model_hash") != m.model_hash or list(info.get("feature_shape", [])) != m.feature_shape:
            raise UserError(f"server model {str(info.get('model_hash'))[:12]} is not the one this export came from "
                            f"({m.model_hash[:12]}); serve and export the same run")
        return info

    def predict(self, z: np.ndarray, dtype: str = "float32") -> tuple[dict, int]:
        import httpx

        body = wire.encode(z, dtype)
        try:
            r = self.http.post("/v1/predict", content=body, headers={"Content-Type": wire.CONTENT_TYPE})
        except httpx.HTTPError as exc:
            raise UserError(f"request to {self.http.base_url} failed ({exc})") from None
        if r.status_code != 200:
            raise UserError(f"server answered {r.status_code}: {_detail(r)}")
        return r.json(), len(body)

    def close(self) -> None:
        self.http.close()


def _detail(response) -> str:  # noqa: ANN001
    try:
        return str(response.json().get("detail"))[:200]
    except ValueError:
        return response.text[:200]


def run_client(export: str, server: str, images: Sequence[str], token: Optional[str] = None, noise: bool = True,
               seed: Optional[int] = None, dtype: str = "float32") -> list[ImageResult]:
    """One request per image, so latency and bytes are per image as a device would see them."""
    encoder = EdgeEncoder(export, noise=noise, seed=seed)
    client = CloudClient(server, token)
    try:
        client.check_model(encoder)
        results = []
        for path in images:
            x = load_image(path, encoder.input_shape)[None]
            start = time.perf_counter()
            out, sent = client.predict(encoder.encode(x), dtype)
            ms = (time.perf_counter() - start) * 1000
            results.append(ImageResult(path, out["labels"][0], int(out["predictions"][0]),
                                       float(max(out["probabilities"][0])), ms, sent))
        return results
    finally:
        client.close()
