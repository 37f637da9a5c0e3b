"""Bearer-token check in front of every route that does work.

On Cloud Run, both services are deployed `--no-allow-unauthenticated` and Google's front end
checks the caller's ID token. The service itself can check too: `AUTH_TOKEN` requires
`Authorization: Bearer <AUTH_TOKEN>` (the local set-up), and `AUTH_AUDIENCE` accepts Google ID
tokens for that audience (defence in depth on Cloud Run).
"""

from __future__ import annotations

import hmac
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from common.config import Settings
from common.errors import ServiceError, error_response
from common.id_tokens import IdTokenVerifier, InvalidIdToken

# Probes must work without credentials; the docs describe the API but run nothing.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs/", "/docs.json", "/"})


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


class BearerAuth:
    """Answer 401 (and do no work) unless the request carries an accepted bearer token."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        token = settings.auth_token
        self.expected = f"Bearer {token}".encode() if token else None
        self.id_tokens = (
            IdTokenVerifier(
                settings.auth_audience, settings.auth_certs_url, settings.auth_allowed_emails
            )
            if settings.auth_audience
            else None
        )
        self.enabled = bool(self.expected or self.id_tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            self._authorize(Headers(scope=scope))
        except Unauthorized as exc:
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="image-services"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorize(self, headers: Headers) -> None:
        given = headers.get("authorization", "")
        if not given:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        if self.expected and hmac.compare_digest(given.encode(), self.expected):
            return
        scheme, _, token = given.partition(" ")
        if self.id_tokens and scheme.lower() == "bearer" and token.count(".") == 2:
            try:
                self.id_tokens.verify(token)
                return
            except InvalidIdToken as exc:
                raise Unauthorized(f"invalid ID token: {exc}") from exc
        raise Unauthorized("invalid bearer token")
