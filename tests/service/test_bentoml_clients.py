"""BentoML's own clients against both services, as a BentoML user calls them: the file input is
declared the BentoML way, so the clients send multipart, and the upload still goes through the
streaming parser and its guards (a file over the limit is refused as with curl)."""

from __future__ import annotations

import asyncio

import bentoml
import pytest
from bentoml.exceptions import BentoMLException
from helpers import EXPECTED_LABELS

pytestmark = pytest.mark.slow


def test_sync_client_preprocesses_a_path_and_classifies_it(services, photos, tmp_path):
    photo = tmp_path / "parrot.jpg"
    photo.write_bytes(photos["parrot"])
    with bentoml.SyncHTTPClient(services.preprocess.url) as preprocess:
        stored = preprocess.preprocess(image=photo)
        cropped = preprocess.preprocess(image=photo, mode="center-crop")
    with bentoml.SyncHTTPClient(services.classify.url) as classify:
        answer = classify.classify(gcs_path=stored["gcs_path"], top_k=3)
    assert (stored["width"], stored["height"]) == (224, 224)
    assert cropped["sha256"] != stored["sha256"]  # the mode reached the service
    assert answer["label"] == EXPECTED_LABELS["resize"]["parrot"]
    assert len(answer["top_k"]) == 3


def test_async_client_preprocesses_and_classifies(services, photos, tmp_path):
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photos["cat"])

    async def run() -> tuple[dict, dict]:
        async with bentoml.AsyncHTTPClient(services.preprocess.url) as preprocess:
            stored = await preprocess.preprocess(image=photo)
        async with bentoml.AsyncHTTPClient(services.classify.url) as classify:
            return stored, await classify.classify(gcs_path=stored["gcs_path"])

    stored, answer = asyncio.run(run())
    assert stored["gcs_path"].endswith(".bmp")
    assert answer["label"] == EXPECTED_LABELS["resize"]["cat"]


def test_a_url_in_place_of_the_file_is_refused_not_fetched(services):
    """BentoML's clients send a string as a plain form value (BentoML's own server would fetch
    a URL): refused as no multipart upload, and nothing is fetched."""
    client = bentoml.SyncHTTPClient(services.preprocess.url)
    with client, pytest.raises(BentoMLException, match="expected_multipart"):
        client.preprocess(image="http://127.0.0.1:9/photo.jpg")


@pytest.mark.parametrize(
    ("content", "mode", "code"),
    [("plain text", None, "not_an_image"), (None, "stretch", "invalid_request")],
)
def test_the_clients_get_the_services_errors(services, photos, tmp_path, content, mode, code):
    upload = tmp_path / "photo.jpg"
    upload.write_bytes(content.encode() if content else photos["cat"])
    client = bentoml.SyncHTTPClient(services.preprocess.url)
    with client, pytest.raises(BentoMLException, match=code):
        client.preprocess(image=upload, mode=mode)
