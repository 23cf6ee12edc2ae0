"""Binary feature encoding and token/bind rules (no server, no model)."""
import struct

import numpy as np
import pytest

from splitshield.deploy import wire
from splitshield.deploy.auth import TOKEN_ENV, check_bind, is_loopback, load_token, token_matches
from splitshield.errors import UserError


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_roundtrip_keeps_shape_dtype_values(dtype):
    z = np.random.default_rng(0).standard_normal((3, 8, 4, 4)).astype(dtype)
    body = wire.encode(z, dtype)
    assert body[:4] == b"SSF1" and len(body) == 8 + 4 * 4 + z.nbytes
    out = wire.decode(body)
    assert out.dtype == np.dtype(dtype) and out.shape == z.shape
    np.testing.assert_array_equal(out, z)


def test_header_is_little_endian_and_documented_layout():
    body = wire.encode(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert struct.unpack("<4sBBH2I", body[:16]) == (b"SSF1", 1, 2, 0, 2, 3)
    assert np.frombuffer(body[16:], "<f4").tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("body, needle", [
    (b"", "(empty)"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "PNG image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 20, "JPEG image"),
    (b"garbage!garbage!garbage!", "not a splitshield feature message"),
    (b"SSF1\x09\x01\x00\x00" + b"\0" * 8, "dtype code 9"),
    (b"SSF1\x01\x00\x00\x00", "ndim 0"),
    (b"SSF1\x01\x04\x00\x00" + b"\0" * 4, "header truncated"),
    (wire.encode(np.zeros((2, 2), np.float32))[:-1], "payload is 15 bytes"),
    (wire.encode(np.zeros((2, 2), np.float32)) + b"\0", "payload is 17 bytes"),
])
def test_malformed_bodies_raise_wire_error_naming_the_problem(body, needle):
    with pytest.raises(wire.WireError, match=None) as info:
        wire.decode(body)
    assert needle in str(info.value)


def test_loopback_detection_and_bind_rule():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)  # loopback without a token is allowed
    check_bind("0.0.0.0", "t" * 20)
    with pytest.raises(UserError, match="non-loopback"):
        check_bind("0.0.0.0", None)


def test_token_sources_and_validation(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert load_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, "e" * 24)
    assert load_token(None) == "e" * 24
    f = tmp_path / "tok"
    f.write_text("f" * 32 + "\n")
    assert load_token(str(f)) == "f" * 32  # the file wins over the environment
    f.write_text("short")
    with pytest.raises(UserError, match="at least 16"):
        load_token(str(f))
    with pytest.raises(UserError, match="cannot read token file"):
        load_token(str(tmp_path / "missing"))


def test_token_compare():
    tok = "s" * 20
    assert token_matches(f"Bearer {tok}", tok) and token_matches(f"bearer {tok}", tok)
    assert not token_matches(None, tok) and not token_matches(f"Bearer {tok}x", tok)
    assert not token_matches(f"Basic {tok}", tok) and not token_matches("Bearer ", tok)
