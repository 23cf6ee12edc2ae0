"""Bearer tokens for the server and the client, and the rule that a public bind needs one."""
from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Optional

from splitshield.errors import UserError

TOKEN_ENV = "SPLITSHIELD_TOKEN"
MIN_TOKEN_CHARS = 16


def load_token(token_file: Optional[str] = None) -> Optional[str]:
    """--token-file wins over $SPLITSHIELD_TOKEN; None when neither is given."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise UserError(f"cannot read token file {token_file} ({exc.strerror}); check the path") from None
        if not token:
            raise UserError(f"token file {token_file} is empty; put the bearer token in it")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UserError(f"the bearer token must be at least {MIN_TOKEN_CHARS} characters without spaces; "
                        "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname could resolve anywhere: treat as public


def check_bind(host: str, token: Optional[str]) -> None:
    if token is None and not is_loopback(host):
        raise UserError(f"refusing to serve on non-loopback address {host} without a token; set {TOKEN_ENV} "
                        "or pass --token-file (or bind 127.0.0.1)")


def token_matches(header: Optional[str], token: str) -> bool:
    """Constant-time comparison of an ``Authorization: Bearer ...`` header against the token."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    # compare_digest on bytes: its time does not depend on where the first differing byte is.
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
