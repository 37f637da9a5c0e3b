"""Bearer-token check in front of every route that does work.

On Cloud Run, classify is deployed `--no-allow-unauthenticated` and Google's front end checks
the caller's ID token; locally (and as defence in depth) `AUTH_TOKEN` makes the service itself
require `Authorization: Bearer <AUTH_TOKEN>`. A service's calls to its own routes (the batch
route) carry a per-process secret instead, so they pass without the user's token.
"""

from __future__ import annotations

import hmac
import secrets
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import ServiceError, error_response

INTERNAL_HEADER = "x-internal-call"
# Probes must work without credentials; the docs describe the API but run nothing.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs/", "/docs.json", "/"})

_internal_secret = secrets.token_urlsafe(32)


def internal_headers() -> dict[str, str]:
    """Headers that let this process's own calls through `BearerAuth`."""
    return {INTERNAL_HEADER: _internal_secret}


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class BearerAuth:
    """Answer 401 (and do no work) unless the request carries the configured bearer token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        internal = headers.get(INTERNAL_HEADER, "").encode()
        given = headers.get("authorization", "").encode()
        if hmac.compare_digest(internal, _internal_secret.encode()) or hmac.compare_digest(
            given, self.expected
        ):
            await self.app(scope, receive, send)
            return
        reason = "missing bearer token" if not given else "invalid bearer token"
        response = error_response(Unauthorized(f"{reason}: send Authorization: Bearer <token>"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="image-services"'
        await response(scope, receive, send)
