"""Verify Google-signed ID tokens in the service itself (defence in depth behind Cloud Run IAM).

Cloud Run's front end already checks callers' ID tokens for private services; with
`AUTH_AUDIENCE` set, the service also checks signature, expiry, issuer and audience (and,
with `AUTH_ALLOWED_EMAILS`, the caller), so a misconfigured `--allow-unauthenticated` does
not open it. Google's signing certificates are fetched once and cached for an hour.
"""

from __future__ import annotations

import time

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
CERTS_TTL_S = 3600
CLOCK_SKEW_S = 10


class InvalidIdToken(ValueError):
    """The token is not a valid Google ID token for this service."""


class IdTokenVerifier:
    def __init__(
        self,
        audience: str,
        certs_url: str = GOOGLE_CERTS_URL,
        allowed_emails: set[str] = frozenset(),
    ) -> None:
        self.audience = audience
        self.certs_url = certs_url
        self.allowed_emails = allowed_emails
        self._certs: dict[str, str] = {}
        self._fetched_at = 0.0

    def verify(self, token: str) -> dict:
        """The token's claims, or InvalidIdToken saying why not."""
        from google.auth import exceptions, jwt

        try:
            claims = jwt.decode(
                token,
                certs=self._signing_certs(),
                audience=self.audience,
                clock_skew_in_seconds=CLOCK_SKEW_S,
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise InvalidIdToken(str(exc).splitlines()[0]) from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise InvalidIdToken(f"issuer {claims.get('iss')!r} is not Google")
        if self.allowed_emails and claims.get("email") not in self.allowed_emails:
            raise InvalidIdToken(f"caller {claims.get('email')!r} is not allowed")
        return claims

    def _signing_certs(self) -> dict[str, str]:
        if not self._certs or time.monotonic() - self._fetched_at > CERTS_TTL_S:
            import httpx  # here: only a service checking ID tokens pays for it at start

            response = httpx.get(self.certs_url, timeout=5)
            response.raise_for_status()
            self._certs = response.json()
            self._fetched_at = time.monotonic()
        return self._certs
