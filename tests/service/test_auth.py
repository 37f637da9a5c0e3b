"""Token auth over real HTTP: no work is done and nothing is stored without the right token."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from conftest import PHOTOS, REPO, Server, make_backend, service_env
from helpers import batch_histogram, stored_keys

TOKEN = "local-shared-secret"


@pytest.fixture(scope="module")
def protected(bentoml_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    backend = make_backend("local", tmp, None)
    env = service_env(bentoml_home, backend.env, AUTH_TOKEN=TOKEN)
    servers = {
        "classify": Server("service:Classify", env, tmp / "classify.log").start(),
        "preprocess": Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start(),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield backend, servers
    finally:
        for server in servers.values():
            server.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_working_route_needs_the_token(protected, photos):
    backend, servers = protected
    classify, preprocess = servers["classify"].url, servers["preprocess"].url
    metrics = f"{classify}/metrics"
    batches_before = batch_histogram(httpx.get(metrics, headers=_bearer(TOKEN)).text)
    keys_before = stored_keys(backend)
    blank = {"images": [{"pixels": "AAAA"}]}
    for headers in ({}, _bearer("wrong"), {"Authorization": TOKEN}):
        calls = [
            httpx.post(f"{preprocess}/preprocess", files={"image": photos["cat"]}, headers=headers),
            httpx.post(f"{classify}/classify", json={"gcs_path": "x"}, headers=headers),
            httpx.post(f"{classify}/predict_batch", json=blank, headers=headers),
            httpx.get(metrics, headers=headers),
        ]
        for response in calls:
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert stored_keys(backend) == keys_before
    assert batch_histogram(httpx.get(metrics, headers=_bearer(TOKEN)).text) == batches_before

    for server in servers.values():
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert httpx.get(f"{server.url}/livez").status_code == 200


def test_right_token_runs_the_pipeline(protected, photos):
    _, servers = protected
    stored = httpx.post(
        f"{servers['preprocess'].url}/preprocess",
        files={"image": photos["bird"]},
        headers=_bearer(TOKEN),
    )
    assert stored.status_code == 200, stored.text
    answer = httpx.post(
        f"{servers['classify'].url}/classify",
        json={"gcs_path": stored.json()["gcs_path"]},
        headers=_bearer(TOKEN),
    )
    assert answer.status_code == 200 and answer.json()["label"] == "chickadee"


def test_client_command_sends_the_token(protected):
    _, servers = protected
    command = [sys.executable, "-m", "client", str(PHOTOS / "parrot.jpg")]
    command += ["--preprocess-url", servers["preprocess"].url]
    command += ["--classify-url", servers["classify"].url]
    denied = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 1 and "401" in denied.stdout
    allowed = subprocess.run(
        [*command, "--token", TOKEN], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert allowed.returncode == 0 and "macaw" in allowed.stdout, allowed.stdout


def test_tokens_never_reach_the_logs(protected):
    _, servers = protected
    for server in servers.values():
        assert TOKEN not in server.log.read_text(errors="ignore")


def test_headers_are_read_as_the_rfcs_say(protected):
    """The scheme is case-insensitive, spaces may repeat; two headers or another scheme is a 401."""
    _, servers = protected
    url = f"{servers['classify'].url}/classify"
    for value in (f"bearer {TOKEN}", f"BEARER   {TOKEN}"):
        response = httpx.post(url, json={"gcs_path": "x"}, headers={"Authorization": value})
        assert response.status_code == 400, (value, response.text)  # authorized: a bad path
    for headers in (
        [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")],
        [("Authorization", f"Basic {TOKEN}")],
        [("Authorization", f"Bearer{TOKEN}")],
        [("Authorization", f"Bearer {TOKEN} extra")],
        [("Authorization", "Bearer " + "A" * 20_000)],
        [("Authorization", b"Bearer \xe9t\xe9")],
    ):
        response = httpx.post(url, json={"gcs_path": "x"}, headers=headers)
        assert response.status_code == 401, (headers[0][1][:40], response.text)
        assert response.json()["code"] == "unauthorized"


def test_the_docs_work_in_a_browser_with_auth_on(protected):
    """The Swagger UI page and every script and style it loads answer without a token."""
    import re

    for server in protected[1].values():
        page = httpx.get(f"{server.url}/docs", follow_redirects=True)
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="\./([^"]+)"', page.text)
        assert any(asset.endswith(".js") for asset in assets), assets
        for asset in [*assets, "docs.json"]:
            response = httpx.get(f"{server.url}/{asset}")
            assert response.status_code == 200, (asset, response.status_code)
        write = httpx.post(f"{server.url}/static_content/swagger-ui.css")
        assert write.status_code in (401, 405)
