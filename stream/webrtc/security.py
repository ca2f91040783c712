"""Who may open a stream: loopback by default; any other address needs a token. Origin and Host checks.

- Token: required whenever the server listens beyond loopback (`--host 0.0.0.0`), generated when not
  given, sent by the page as the `X-Token` header (taken from the URL's `?token=`).
- Origin: a browser's POST /offer must come from this server's own page (or an origin allowed with
  --allow-origin), so another website open in the same browser cannot start the camera stream.
- Host: on loopback the Host header must name loopback, which stops DNS-rebinding pages that resolve
  their own name to 127.0.0.1.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from aiohttp import web

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


class AccessDenied(Exception):
    """A request refused by the access policy: `status` 401 or 403, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AccessPolicy:
    """`token` None means no token (loopback only); `loopback` turns on the Host check."""

    token: str | None
    loopback: bool
    allowed_origins: frozenset[str] = frozenset()

    def check(self, request: web.Request) -> None:
        """Raise AccessDenied unless `request` may open a stream."""
        if self.loopback:
            hostname = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else \
                request.host.split("]")[0] + "]"
            if not is_loopback(hostname):
                raise AccessDenied(403, f"Host {request.host!r} is not loopback; open the page at 127.0.0.1")
        origin = request.headers.get("Origin")
        if origin is not None:
            own = f"{request.scheme}://{request.host}"
            if origin != own and origin not in self.allowed_origins:
                raise AccessDenied(403, f"origin {origin} may not use this server (serving {own}); "
                                        "start the server with --allow-origin to permit it")
        if self.token is not None:
            given = request.headers.get("X-Token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise AccessDenied(401, "missing or wrong token; open the URL the server printed (…/?token=…)")
