"""Bearer-token check in front of every route that does work.

On Cloud Run, both services are deployed `--no-allow-unauthenticated` and Google's front end
checks the caller's ID token. The service itself can check too: `AUTH_TOKEN` requires
`Authorization: Bearer <AUTH_TOKEN>` (the local set-up), and `AUTH_AUDIENCE` accepts Google ID
tokens for that audience (defence in depth on Cloud Run).

The header is parsed as RFC 9110 and RFC 6750 say (the scheme case-insensitive, one or more
spaces, a b64token); anything else is a 401 that says what is wrong. Nothing here blocks the
event loop: certificates for ID tokens are fetched asynchronously (common/http/id_tokens.py).
"""

from __future__ import annotations

import hmac
import re
from http import HTTPStatus

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from common.config import Settings
from common.errors import ServiceError, error_response
from common.http.id_tokens import IdTokenVerifier, InvalidIdToken

# Probes must work without credentials; the docs describe the API but run nothing, and the
# Swagger UI page loads its scripts and styles from BentoML's static folder.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/docs", "/docs/", "/docs.json", "/"})
OPEN_PREFIXES = ("/static_content/",)
# RFC 6750 2.1: credentials = "Bearer" 1*SP b64token
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) +([A-Za-z0-9\-._~+/]+=*)")
MAX_HEADER_CHARS = 16 * 1024


class Unauthorized(ServiceError):
    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"


def is_open(scope: Scope) -> bool:
    """Routes anyone may call: probes, and the API docs with their static files (GET only)."""
    path = scope["path"]
    if path in OPEN_PATHS:
        return True
    return scope.get("method") in ("GET", "HEAD") and path.startswith(OPEN_PREFIXES)


def bearer_token(headers: Headers) -> str:
    """The token of the request's one `Authorization: Bearer` header, or Unauthorized."""
    values = headers.getlist("authorization")
    if not values:
        raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
    if len(values) > 1:
        raise Unauthorized("more than one Authorization header")
    value = values[0].strip()
    if len(value) > MAX_HEADER_CHARS:
        raise Unauthorized("the Authorization header is too long")
    found = _CREDENTIALS.fullmatch(value)
    if found is None:
        raise Unauthorized("malformed Authorization header: expected 'Bearer <token>'")
    scheme, token = found.groups()
    if scheme.lower() != "bearer":
        raise Unauthorized(f"unsupported authorization scheme {scheme[:32]!r}; use Bearer")
    return token


class BearerAuth:
    """Answer 401 (and do no work) unless the request carries an accepted bearer token."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        token = settings.auth_token
        self.expected = token.encode() if token else None
        self.id_tokens = (
            IdTokenVerifier(
                settings.auth_audience, settings.auth_certs_url, settings.auth_allowed_emails
            )
            if settings.auth_audience
            else None
        )
        self.enabled = bool(self.expected or self.id_tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or is_open(scope):
            await self.app(scope, receive, send)
            return
        try:
            await self._authorize(Headers(scope=scope))
        except Unauthorized as exc:
            response = error_response(exc)
            response.headers["WWW-Authenticate"] = 'Bearer realm="image-services"'
            await response(scope, receive, send)
            return
        except ServiceError as exc:  # the certificates cannot be fetched: 503 + Retry-After
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _authorize(self, headers: Headers) -> None:
        token = bearer_token(headers)
        if self.expected and hmac.compare_digest(token.encode(), self.expected):
            return
        if self.id_tokens and token.count(".") == 2:
            try:
                await self.id_tokens.verify(token)
                return
            except InvalidIdToken as exc:
                raise Unauthorized(f"invalid ID token: {exc}") from exc
        raise Unauthorized("invalid bearer token")
