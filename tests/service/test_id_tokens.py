"""Google ID tokens verified by the service itself (AUTH_AUDIENCE), over real HTTP.

A test signing key stands in for Google's: its certificate is served on 127.0.0.1 as the
certs URL, and tokens are signed with google-auth's own JWT encoder. Generated per run.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import Server, make_backend, service_env
from google.auth import crypt
from helpers import stored_keys, upload
from id_token_signer import AUDIENCE, KEY_ID, _key_and_cert, token


@pytest.fixture(scope="module")
def signer_and_certs_url():
    private, cert = _key_and_cert()
    body = json.dumps({KEY_ID: cert.decode()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield (
        crypt.RSASigner.from_string(private, key_id=KEY_ID),
        f"http://127.0.0.1:{server.server_port}/certs",
    )
    server.shutdown()


@pytest.fixture(scope="module")
def verifying_services(bentoml_home, signer_and_certs_url, tmp_path_factory):
    _, certs_url = signer_and_certs_url
    tmp = tmp_path_factory.mktemp("id-tokens")
    backend = make_backend("local", tmp, None)
    env = service_env(bentoml_home, backend.env, AUTH_AUDIENCE=AUDIENCE, AUTH_CERTS_URL=certs_url)
    servers = [
        Server("service:Classify", env, tmp / "classify.log").start(),
        Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start(),
    ]
    try:
        yield backend, *(server.wait_ready() for server in servers)
    finally:
        for server in servers:
            server.stop()


def test_only_valid_google_id_tokens_get_in(verifying_services, signer_and_certs_url, photos):
    backend, classify, preprocess = verifying_services
    signer, _ = signer_and_certs_url
    other_signer = crypt.RSASigner.from_string(_key_and_cert()[0], key_id=KEY_ID)
    bad = {
        "none": None,
        "wrong audience": token(signer, audience="https://someone-else.a.run.app"),
        "expired": token(signer, expires_in=-3600),
        "other key": token(other_signer),
        "not google": token(signer, iss="https://evil.example"),
        "garbage": "a.b.c",
        "not valid yet": token(signer, nbf=int(time.time()) + 3600),
        "exp a string": token(signer, exp="tomorrow"),
        "email a list": token(signer, email=["caller@example.iam.gserviceaccount.com"]),
        "aud array without ours": token(signer, audience=["https://someone-else.a.run.app"]),
    }
    before = stored_keys(backend)
    for case, value in bad.items():
        headers = {"Authorization": f"Bearer {value}"} if value else {}
        for response in (
            httpx.post(f"{classify.url}/classify", json={"gcs_path": "x"}, headers=headers),
            httpx.post(f"{classify.url}/predict_batch", json={"images": []}, headers=headers),
            httpx.post(
                f"{preprocess.url}/preprocess", files={"image": photos["cat"]}, headers=headers
            ),
        ):
            assert response.status_code == 401, (case, response.text)
            assert response.json()["code"] == "unauthorized"
    assert stored_keys(backend) == before

    # RFC 7519 4.1.3: an audience array that holds ours
    listed = {"Authorization": f"Bearer {token(signer, audience=['https://x.app', AUDIENCE])}"}
    url = f"{preprocess.url}/preprocess"
    assert httpx.post(url, files={"image": photos["cat"]}, headers=listed).status_code == 200
    good = {"Authorization": f"Bearer {token(signer)}"}
    stored = httpx.post(
        f"{preprocess.url}/preprocess", files={"image": photos["cat"]}, headers=good
    )
    assert stored.status_code == 200, stored.text
    answer = httpx.post(
        f"{classify.url}/classify", json={"gcs_path": stored.json()["gcs_path"]}, headers=good
    )
    assert answer.status_code == 200 and answer.json()["label"] == "Egyptian cat"
    assert upload(preprocess.url, photos["cat"]).status_code == 401


def test_eventarc_delivers_storage_events_with_its_id_token(
    verifying_services, signer_and_certs_url
):
    """The trigger's service account calls /events/storage with a Google ID token: checked like
    any caller's (none: 401, before the event is read), then the event is handled."""
    _, classify, _ = verifying_services
    signer, _ = signer_and_certs_url
    event = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//storage.googleapis.com/projects/_/buckets/b",
        "ce-type": "google.cloud.storage.object.v1.finalized",
        "content-type": "application/json",
    }
    body = b'{"bucket": "b", "name": "uploads/x.jpg", "generation": "1"}'
    url = f"{classify.url}/events/storage"
    assert httpx.post(url, headers=event, content=body).status_code == 401
    eventarc = token(
        signer, email="classify-events-sa@demo.iam.gserviceaccount.com", email_verified=True
    )
    answer = httpx.post(url, headers={**event, "Authorization": f"Bearer {eventarc}"}, content=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "skipped", "reason": "another bucket"}  # local storage


class CertsEndpoint:
    """A certificate endpoint whose behaviour the test changes: serve, fail, or hang."""

    def __init__(self, cert_body: bytes) -> None:
        self.mode = "hang"
        self.requests = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests += 1
                if endpoint.mode == "hang":
                    time.sleep(30)
                    return
                if endpoint.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=600")
                self.end_headers()
                self.wfile.write(cert_body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/certs"


def test_a_failing_certificate_endpoint_never_stalls_the_service(
    bentoml_home, tmp_path_factory, photos
):
    """Hanging, then failing, then back: 503 + Retry-After in bounded time, probes always
    fast, and valid tokens accepted again once the certificates can be fetched."""
    import concurrent.futures

    private, cert = _key_and_cert()
    signer = crypt.RSASigner.from_string(private, key_id=KEY_ID)
    endpoint = CertsEndpoint(json.dumps({KEY_ID: cert.decode()}).encode())
    tmp = tmp_path_factory.mktemp("failing-certs")
    backend = make_backend("local", tmp, None)
    env = service_env(
        bentoml_home, backend.env, AUTH_AUDIENCE=AUDIENCE, AUTH_CERTS_URL=endpoint.url
    )
    server = Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start()
    try:
        server.wait_ready()
        good = {"Authorization": f"Bearer {token(signer)}"}
        url = f"{server.url}/preprocess"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pending = [
                pool.submit(
                    httpx.post, url, files={"image": photos["cat"]}, headers=good, timeout=30
                )
                for _ in range(3)
            ]
            time.sleep(0.5)
            started = time.perf_counter()
            assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
            assert time.perf_counter() - started < 1  # the event loop is not held
            for future in pending:
                response = future.result()
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "auth_unavailable"
                assert int(response.headers["retry-after"]) > 0
        assert endpoint.requests == 1  # one fetch at a time, its failure shared
        endpoint.mode = "fail"
        time.sleep(5.5)  # past the backoff after a failed fetch
        started = time.perf_counter()
        failed = httpx.post(url, files={"image": photos["cat"]}, headers=good)
        assert failed.status_code == 503 and time.perf_counter() - started < 2
        endpoint.mode = "serve"
        time.sleep(5.5)
        assert httpx.post(url, files={"image": photos["cat"]}, headers=good).status_code == 200
        assert httpx.post(url, files={"image": photos["cat"]}, headers=good).status_code == 200
        fetches = endpoint.requests
        endpoint.mode = "fail"  # certificates within their max-age are used without a fetch
        assert httpx.post(url, files={"image": photos["cat"]}, headers=good).status_code == 200
        assert endpoint.requests == fetches
    finally:
        server.stop()
        endpoint.server.shutdown()
