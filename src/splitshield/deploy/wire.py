"""The compact binary feature encoding (content type ``application/x-splitshield-features``).

Layout, all little-endian:
    4 bytes  magic  b"SSF1"
    1 byte   dtype code (1 = float32, 2 = float16)
    1 byte   ndim (1..8)
    2 bytes  reserved, zero
    ndim x uint32  shape
    prod(shape) x itemsize bytes  raw C-order values

Hand-written rather than npy/protobuf/msgpack: an 8 + 4*ndim byte header is all that is needed, the server can
reject a body from its header before touching the payload, and any language can write it in a few lines (no
pickle-capable format such as .npy-with-objects ever reaches the server).
"""
from __future__ import annotations

import struct

import numpy as np

CONTENT_TYPE = "application/x-splitshield-features"
MAGIC = b"SSF1"
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
CODES = {dt: code for code, dt in DTYPES.items()}
MAX_NDIM = 8
_HEAD = struct.Struct("<4sBBH")

# Signatures of things people send by mistake, so the error can say what arrived.
_KNOWN = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"BM": "a BMP image", b"\x93NUMPY": "a .npy file", b"PK\x03\x04": "a zip/.npz/.pt file",
          b"{": "JSON", b"[": "JSON"}


class WireError(ValueError):
    """A body that is not a valid feature message; the text says what is wrong (becomes a 4xx)."""


def encode(array: np.ndarray, dtype: str = "float32") -> bytes:
    dt = np.dtype(dtype).newbyteorder("<")
    if dt not in CODES:
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    arr = np.ascontiguousarray(array, dtype=dt)
    if not 1 <= arr.ndim <= MAX_NDIM:
        raise ValueError(f"ndim must be 1..{MAX_NDIM}, got {arr.ndim}")
    return _HEAD.pack(MAGIC, CODES[dt], arr.ndim, 0) + struct.pack(f"<{arr.ndim}I", *arr.shape) + arr.tobytes()


def describe(body: bytes) -> str:
    for sig, what in _KNOWN.items():
        if body.startswith(sig):
            return what
    return f"{len(body)} bytes starting {body[:8].hex() or '(empty)'}"


def peek_shape(body: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse and check the header only: (dtype, shape, payload offset)."""
    if len(body) < _HEAD.size or not body.startswith(MAGIC):
        raise WireError(f"body is not a splitshield feature message (got {describe(body)}); expected magic "
                        f"{MAGIC!r} header, see docs/deploy.md")
    _, code, ndim, reserved = _HEAD.unpack_from(body)
    if code not in DTYPES:
        raise WireError(f"dtype code {code} is not supported; use 1 (float32) or 2 (float16)")
    if not 1 <= ndim <= MAX_NDIM or reserved != 0:
        raise WireError(f"bad header: ndim {ndim} (must be 1..{MAX_NDIM}), reserved {reserved} (must be 0)")
    offset = _HEAD.size + 4 * ndim
    if len(body) < offset:
        raise WireError(f"header truncated: {ndim} dims need {offset} bytes, got {len(body)}")
    shape = struct.unpack_from(f"<{ndim}I", body, _HEAD.size)
    return DTYPES[code], tuple(int(s) for s in shape), offset


def decode(body: bytes) -> np.ndarray:
    """Header-checked, length-checked array (a read-only view of ``body``, no copy)."""
    dtype, shape, offset = peek_shape(body)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(body) - offset != expected:
        raise WireError(f"payload is {len(body) - offset} bytes but shape {shape} x {dtype.name} needs {expected}")
    return np.frombuffer(body, dtype=dtype, offset=offset).reshape(shape)
