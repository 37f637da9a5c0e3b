"""`image-pipeline --google-id-token` keeps working for hours: Google ID tokens expire (after an
hour on Google; after 2 seconds here), and the client fetches a new one before each expires.

A local token endpoint stands in for Google's: google-auth's own service-account flow posts its
signed assertion there (the key file's `token_uri`) and gets back an ID token for the asked
audience, signed by the test key whose certificate the services verify against.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from conftest import PHOTOS, REPO, Server, make_backend, service_env
from google.auth import crypt, jwt
from id_token_signer import KEY_ID, _key_and_cert, service_account_key_file, token
from PIL import Image

from common.http.id_tokens import CLOCK_SKEW_S

LIFETIME_S = 2
USER_ACCESS_TOKEN = "ya29.a-gcloud-login"
# google-auth asks the metadata server when nothing else is configured: a closed local port
NO_METADATA = {"GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9"}
# Long enough that a token kept from the start would be refused: past its life and the skew.
RUN_S = LIFETIME_S + CLOCK_SKEW_S + 6


@pytest.fixture(scope="module")
def token_service(tmp_path_factory):
    """Google's certificate and token endpoints, on 127.0.0.1, with a key file pointing there."""
    private, cert = _key_and_cert()
    signer = crypt.RSASigner.from_string(private, key_id=KEY_ID)
    issued: Counter[str] = Counter()

    class Google(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the certificates
            self._json({KEY_ID: cert.decode()})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.endswith(":generateIdToken"):  # IAM, for an impersonating login
                if self.headers.get("Authorization") != f"Bearer {USER_ACCESS_TOKEN}":
                    self._json({"error": "not your login"}, 403)
                    return
                audience = json.loads(body)["audience"]
                issued[audience] += 1
                self._json({"token": token(signer, audience, expires_in=LIFETIME_S)})
                return
            form = parse_qs(body.decode())
            claims = jwt.decode(form["assertion"][0], verify=False)
            if "target_audience" not in claims:  # the impersonating login's access token
                self._json({"access_token": USER_ACCESS_TOKEN, "expires_in": 3600})
                return
            # the token endpoint: an ID token for the asked audience
            audience = claims["target_audience"]
            issued[audience] += 1
            self._json({"id_token": token(signer, audience, expires_in=LIFETIME_S)})

        def _json(self, body: dict, status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Google)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    key_file = service_account_key_file(
        tmp_path_factory.mktemp("key") / "service-account.json",
        private,
        f"{base}/token",
        "pipeline@demo-project.iam.gserviceaccount.com",
    )
    yield f"{base}/certs", key_file, issued, base
    server.shutdown()


@pytest.fixture(scope="module")
def services_for_their_own_audience(bentoml_home, token_service, tmp_path_factory):
    """Each service accepts ID tokens whose audience is its own URL, as on Cloud Run."""
    certs_url, _, _, _ = token_service
    tmp = tmp_path_factory.mktemp("client-tokens")
    backend = make_backend("local", tmp, None)
    servers = []
    targets = (("service:Classify", "classify"), ("preprocess.service:Preprocess", "preprocess"))
    for target, name in targets:
        server = Server(target, {}, tmp / f"{name}.log")
        server.env = service_env(
            bentoml_home, backend.env, AUTH_AUDIENCE=server.url, AUTH_CERTS_URL=certs_url
        )
        servers.append(server.start())
    try:
        yield [server.wait_ready() for server in servers]
    finally:
        for server in servers:
            server.stop()


def test_a_run_longer_than_many_token_lifetimes_has_no_auth_errors(
    services_for_their_own_audience, token_service, tmp_path
):
    classify, preprocess = services_for_their_own_audience
    _, key_file, issued, _ = token_service
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(2000):  # more than the run gets through: it stops at RUN_S
        image = Image.effect_noise((48, 48), 40 + number % 50).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG")
        (photos / f"{number:04d}.jpg").write_bytes(buffer.getvalue())
    out = tmp_path / "results.jsonl"
    command = [
        sys.executable,
        "-m",
        "client",
        str(photos),
        "--preprocess-url",
        preprocess.url,
        "--classify-url",
        classify.url,
        "--google-id-token",
        "--concurrency",
        "2",
        "--output",
        str(out),
    ]
    env = {**os.environ, "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(RUN_S)
    process.terminate()  # stops like Ctrl-C would not from a script: the rows so far are kept
    process.communicate(timeout=60)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert len(rows) > 50, "the run got through too few photos to span many token lifetimes"
    assert [row for row in rows if row.get("error")] == []
    for url in (preprocess.url, classify.url):
        assert issued[url] >= RUN_S // LIFETIME_S // 2, issued  # fetched again and again


def _gcloud_login(config, impersonation_url: str | None, source_key=None) -> dict[str, str]:
    """What `gcloud auth application-default login [--impersonate-service-account SA]` writes,
    its endpoints here, and the environment a laptop then has (no key file). gcloud's source is
    your user login, whose token endpoint google-auth never lets a file change; with an
    impersonation URL the source here is a key file's account, whose `token_uri` is local."""
    user = {
        "type": "authorized_user",
        "client_id": "client-id",
        "client_secret": "client-secret",
        "refresh_token": "refresh-token",
    }
    adc = user
    if impersonation_url:
        adc = {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": impersonation_url,
            "source_credentials": json.loads(source_key.read_text()),
            "delegates": [],
        }
    config.mkdir()
    (config / "application_default_credentials.json").write_text(json.dumps(adc))
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    return {**env, **NO_METADATA, "CLOUDSDK_CONFIG": str(config)}


def _client_with_id_tokens(services, env: dict[str, str], *extra: str):
    classify, preprocess = services
    command = [sys.executable, "-m", "client", str(PHOTOS), "--google-id-token", *extra]
    command += ["--preprocess-url", preprocess.url, "--classify-url", classify.url]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_laptop_login_impersonating_a_service_account_gets_id_tokens(
    services_for_their_own_audience, token_service, tmp_path
):
    """`gcloud auth application-default login --impersonate-service-account SA` on a laptop:
    google-auth's fetch_id_token reads only a key file or the metadata server, so the client asks
    IAM's generateIdToken itself, with the login's own access token."""
    classify, preprocess = services_for_their_own_audience
    _, key_file, issued, base = token_service
    sa = "pipeline@demo-project.iam.gserviceaccount.com"
    url = f"{base}/v1/projects/-/serviceAccounts/{sa}:generateAccessToken"
    env = _gcloud_login(tmp_path / "gcloud", url, key_file)
    before = issued[preprocess.url] + issued[classify.url]
    out = tmp_path / "results.jsonl"
    result = _client_with_id_tokens(services_for_their_own_audience, env, "--output", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(row.get("label") and not row.get("error") for row in rows)
    assert issued[preprocess.url] + issued[classify.url] > before


def test_a_plain_user_login_is_told_how_to_get_an_id_token(
    services_for_their_own_audience, tmp_path
):
    env = _gcloud_login(tmp_path / "gcloud", None)
    result = _client_with_id_tokens(services_for_their_own_audience, env)
    assert result.returncode == 2
    assert "--impersonate-service-account" in result.stderr and "Traceback" not in result.stderr
