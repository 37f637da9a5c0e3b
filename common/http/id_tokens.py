"""Verify Google-signed ID tokens in the service itself (defence in depth behind Cloud Run IAM).

Cloud Run's front end already checks callers' ID tokens for private services; with
`AUTH_AUDIENCE` set, the service also checks them as Google's docs and RFC 7519 say: the
signature against Google's published certificates, `aud`, `iss` (accounts.google.com), `exp`,
`iat` and `nbf`, and with `AUTH_ALLOWED_EMAILS` the caller's `email`, which must be
`email_verified`; each claim with its JSON type. A misconfigured
`--allow-unauthenticated` therefore does not open the service.

The certificates are fetched without blocking the event loop (an async client with a short
timeout), one fetch at a time, kept as long as their `Cache-Control: max-age` says, and kept
past it while a refetch fails. With none to check against, requests get 503 + Retry-After
instead of waiting: a failing certificate endpoint never stalls other routes.
"""

from __future__ import annotations

import asyncio
import re
import time
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import ServiceError

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
CLOCK_SKEW_S = 10
CERTS_TIMEOUT_S = 3.0
CERTS_DEFAULT_TTL_S = 3600
CERTS_MAX_BYTES = 256 * 1024  # Google's document is ~4 KB
RETRY_AFTER_FAILURE_S = 5  # no refetch sooner than this after a failed one
MIN_REFRESH_S = 60  # an unknown key id refetches at most this often (tokens choose their kid)
MAX_TOKEN_BYTES = 8 * 1024  # Google ID tokens are ~1 KB
_MAX_AGE = re.compile(r"max-age=(\d+)")


class InvalidIdToken(ValueError):
    """The token is not a valid Google ID token for this service."""


class CertificatesUnavailable(ServiceError):
    """Google's signing certificates cannot be fetched: nothing can be verified for now."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "auth_unavailable"


class SigningCertificates:
    """Google's certificates by key id, fetched asynchronously and cached."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._certs: dict[str, str] = {}
        self._expires_at = 0.0
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._lock: asyncio.Lock | None = None

    async def get(self, *, refresh: bool = False) -> dict[str, str]:
        """The certificates; `refresh` asks for a refetch (a key id not seen yet)."""
        if self._usable(refresh):
            return self._certs
        if self._lock is None:  # created in the event loop that uses it
            self._lock = asyncio.Lock()
        async with self._lock:  # one fetch at a time; the others find its result
            backing_off = time.monotonic() - self._failed_at < RETRY_AFTER_FAILURE_S
            if not self._usable(refresh) and not backing_off:
                await self._fetch()
        if not self._certs:
            raise CertificatesUnavailable(
                "cannot fetch the certificates to verify ID tokens; retry shortly",
                retry_after_s=RETRY_AFTER_FAILURE_S,
            )
        return self._certs  # kept past their max-age while a refetch fails

    def _usable(self, refresh: bool) -> bool:
        now = time.monotonic()
        if not self._certs or now >= self._expires_at:
            return False
        return not (refresh and now - self._fetched_at >= MIN_REFRESH_S)

    async def _fetch(self) -> None:
        import httpx  # here: only a service checking ID tokens pays for it at start

        try:
            async with httpx.AsyncClient(timeout=CERTS_TIMEOUT_S) as client:
                response = await client.get(self.url)
            response.raise_for_status()
            if len(response.content) > CERTS_MAX_BYTES:
                raise ValueError("the certificate document is too large")
            certs = response.json()
            if not isinstance(certs, dict) or not all(
                isinstance(key, str) and isinstance(value, str) for key, value in certs.items()
            ):
                raise ValueError("the certificate document is not a map of key ids to PEM")
        except Exception:  # unreachable, slow, an error status, not the document expected
            self._failed_at = time.monotonic()
            return
        self._certs = certs
        self._fetched_at = time.monotonic()
        self._expires_at = self._fetched_at + _max_age(response.headers.get("cache-control"))


def _max_age(cache_control: str | None) -> float:
    found = _MAX_AGE.search(cache_control or "")
    return min(int(found.group(1)), 86_400) if found else CERTS_DEFAULT_TTL_S


class IdTokenVerifier:
    def __init__(
        self,
        audience: str,
        certs_url: str = GOOGLE_CERTS_URL,
        allowed_emails: set[str] = frozenset(),
    ) -> None:
        self.audience = audience
        self.allowed_emails = allowed_emails
        self.certificates = SigningCertificates(certs_url)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, InvalidIdToken saying why not, or CertificatesUnavailable."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidIdToken("the token is too long")
        certs = await self.certificates.get()
        if _key_id(token) not in certs:  # Google may have rotated its keys since the fetch
            certs = await self.certificates.get(refresh=True)
        return self.check(token, certs)

    def check(self, token: str, certs: dict[str, str]) -> dict[str, Any]:
        """Signature, expiry and issue time (google-auth), then every claim this service reads
        with its JSON type (a claim of the wrong type is an invalid token, never a crash):
        `aud` a string or an array holding ours (RFC 7519 4.1.3), `nbf` not in the future
        beyond the clock skew `exp` gets (4.1.5), the issuer, and the caller (no I/O)."""
        from google.auth import jwt

        try:
            # audience=None: google-auth refuses an `aud` array; it is checked below instead
            decoded = jwt.decode(token, certs=certs, clock_skew_in_seconds=CLOCK_SKEW_S)
            claims = IdTokenClaims.model_validate(decoded)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise InvalidIdToken(f"claim {where!r}: {problem['msg']}") from exc
        except Exception as exc:  # malformed tokens fail in many ways inside google-auth
            raise InvalidIdToken((str(exc).splitlines() or ["malformed token"])[0][:200]) from exc
        audiences = [claims.aud] if isinstance(claims.aud, str) else claims.aud
        if self.audience not in audiences:
            raise InvalidIdToken(f"the token is not for this service (aud {claims.aud!r})")
        if claims.nbf is not None and claims.nbf > time.time() + CLOCK_SKEW_S:
            raise InvalidIdToken("the token is not valid yet (nbf)")
        if claims.iss not in GOOGLE_ISSUERS:
            raise InvalidIdToken(f"issuer {claims.iss!r} is not Google")
        if self.allowed_emails:
            if claims.email not in self.allowed_emails:
                raise InvalidIdToken(f"caller {claims.email!r} is not allowed")
            if claims.email_verified is not True:
                raise InvalidIdToken("the caller's email is not verified")
        return decoded


class IdTokenClaims(BaseModel):
    """The claims this service reads, each with the JSON type RFC 7519 and Google give it
    (strict: `"exp": "soon"` or `"email": []` is refused, not coerced)."""

    model_config = ConfigDict(strict=True, extra="allow")

    iss: str
    aud: str | list[str]
    exp: int | float
    iat: int | float
    nbf: int | float | None = None
    email: str | None = None
    email_verified: bool | None = None


def _key_id(token: str) -> str | None:
    """The `kid` of a token's header, or None if it has none or is not a JWT at all."""
    import base64
    import json

    try:
        header = token.split(".", 1)[0]
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        kid = decoded.get("kid") if isinstance(decoded, dict) else None
        return kid if isinstance(kid, str) else None
    except Exception:
        return None
