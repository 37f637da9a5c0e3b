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
from conftest import REPO, Server, make_backend, service_env
from google.auth import crypt, jwt
from id_token_signer import KEY_ID, _key_and_cert, service_account_key_file, token
from PIL import Image

from common.http.id_tokens import CLOCK_SKEW_S

LIFETIME_S = 2
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

        def do_POST(self) -> None:  # the token endpoint: an ID token for the asked audience
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            claims = jwt.decode(form["assertion"][0], verify=False)
            audience = claims["target_audience"]
            issued[audience] += 1
            self._json({"id_token": token(signer, audience, expires_in=LIFETIME_S)})

        def _json(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
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
    yield f"{base}/certs", key_file, issued
    server.shutdown()


@pytest.fixture(scope="module")
def services_for_their_own_audience(bentoml_home, token_service, tmp_path_factory):
    """Each service accepts ID tokens whose audience is its own URL, as on Cloud Run."""
    certs_url, _, _ = token_service
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
    _, key_file, issued = token_service
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
