"""Google ID tokens for calling the private Cloud Run services: per service URL (the audience),
fetched again before they expire, from whichever credentials this machine has."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class GoogleIdTokens(httpx.Auth):
    """A Google ID token for each service URL (its audience), fetched when first needed, again
    before it expires (they last an hour) and once more if a service still answers 401.

    Cloud Run services deployed `--no-allow-unauthenticated` accept a Google-signed ID token
    whose audience is the service URL (an access token gets 403).
    """

    def __init__(self, fetch: Callable[[str], str] | None = None) -> None:
        self._fetch = fetch or fetch_google_id_token
        self._tokens: dict[str, tuple[str, float, float]] = {}  # audience: (token, exp, life)
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        audience = f"{request.url.scheme}://{request.url.netloc.decode()}"
        request.headers["Authorization"] = f"Bearer {self.token(audience)}"
        response = yield request
        if response.status_code == 401:  # revoked, or a clock ahead of ours: one fresh token
            request.headers["Authorization"] = f"Bearer {self.token(audience, fresh=True)}"
            yield request

    def token(self, audience: str, fresh: bool = False) -> str:
        with self._lock:  # one fetch per audience, whichever thread needs it first
            cached = self._tokens.get(audience)
            if fresh or cached is None or _expiring(*cached[1:]):
                token = self._fetch(audience)
                expires = _expiry(token)
                cached = self._tokens[audience] = (token, expires, expires - time.time())
            return cached[0]


def _expiring(expires: float, lifetime: float) -> bool:
    """Within five minutes of its expiry, or the last quarter of a shorter life."""
    return expires - time.time() < min(300.0, lifetime / 4)


def _expiry(token: str) -> float:
    """A JWT's `exp` (read, not verified: the service verifies it); now if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return time.time()


def fetch_google_id_token(audience: str) -> str:
    """An ID token for `audience`: from a service account's key (`GOOGLE_APPLICATION_CREDENTIALS`)
    or the metadata server (Cloud Run, GCE) as google-auth fetches it, else, on a laptop, from
    `gcloud auth application-default login --impersonate-service-account SA`: your login asks
    IAM for the service account's ID token (you need roles/iam.serviceAccountTokenCreator on
    it). A user's own login cannot mint ID tokens for an audience: pass `--token "$(gcloud auth
    print-identity-token)"` instead (docs/deploy.md, "Calling the private services")."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.auth.transport.requests import Request
    from google.oauth2 import id_token

    try:
        return id_token.fetch_id_token(Request(), audience)
    except DefaultCredentialsError as missing:
        info = _gcloud_adc()
        if info is None or info.get("type") != "impersonated_service_account":
            raise DefaultCredentialsError(
                "no credentials that can mint a Google ID token: set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service account key, run `gcloud auth "
                "application-default login --impersonate-service-account SA`, or pass --token "
                "with your own ID token"
            ) from missing
        return impersonated_id_token(info, audience)


def _gcloud_adc() -> dict | None:
    """The Application Default Credentials file `gcloud auth application-default login` writes
    (in `$CLOUDSDK_CONFIG`, default ~/.config/gcloud), if any."""
    config = Path(os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
    path = config / "application_default_credentials.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def impersonated_id_token(info: dict, audience: str) -> str:
    """IAM's generateIdToken for the impersonated account, called with the source (your own)
    credentials, at the endpoint the credentials file names for its access tokens."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    url = info["service_account_impersonation_url"]
    if not url.endswith(":generateAccessToken"):
        raise ValueError(f"unexpected service_account_impersonation_url: {url}")
    # your login (gcloud writes an authorized_user), or any source google-auth loads
    source, _ = google.auth.load_credentials_from_dict(info["source_credentials"], scopes=[SCOPE])
    body = {"audience": audience, "includeEmail": True, "delegates": info.get("delegates", [])}
    session = AuthorizedSession(source)
    try:
        answer = session.post(
            url.removesuffix(":generateAccessToken") + ":generateIdToken", json=body
        )
    finally:
        session.close()
    if answer.status_code != 200:
        raise PermissionError(f"IAM refused an ID token for {audience}: {answer.text[:300]}")
    return answer.json()["token"]
