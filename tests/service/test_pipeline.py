"""Upload -> preprocess -> classify through real servers, on local and GCS-emulator storage."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from helpers import EXPECTED_LABELS, classify, encode, object_version, pixels_of, upload
from PIL import Image

TOLERANCE = 1e-4


@pytest.mark.parametrize("mode", ["resize", "center-crop"])
def test_photos_get_reference_labels_and_keras_confidences(services, photos, keras_reference, mode):
    for name, data in photos.items():
        stored = upload(services.preprocess.url, data, mode)
        assert stored.status_code == 200, stored.text
        body = stored.json()
        scheme = "gs://test-bucket/" if services.backend.name == "gcs" else "file:///"
        assert body["gcs_path"].startswith(scheme)
        assert (body["width"], body["height"]) == (224, 224)
        stored_bytes = services.backend.storage.read_uri(body["gcs_path"], 10**7)
        assert hashlib.sha256(stored_bytes).hexdigest() == body["sha256"]
        assert body["gcs_path"].endswith(f"preprocessed/{body['sha256']}.bmp")
        assert Image.open(io.BytesIO(stored_bytes)).format == "BMP"

        answer = classify(services.classify.url, body["gcs_path"])
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["label"] == EXPECTED_LABELS[mode][name], (name, result)

        reference = keras_reference(pixels_of(stored_bytes))
        assert result["index"] == int(np.argmax(reference))
        assert result["confidence"] == pytest.approx(reference[result["index"]], abs=TOLERANCE)
        assert len(result["top_k"]) == 5
        assert result["top_k"][0]["label"] == result["label"]
        for entry in result["top_k"]:
            assert entry["confidence"] == pytest.approx(reference[entry["index"]], abs=TOLERANCE)
        assert result["model"].startswith("mobilenet_v2_onnx:")  # what ONNX Runtime loads
        assert result["runtime"] == "onnxruntime"  # the default


def test_same_upload_twice_gives_same_path_and_writes_once(services, photos):
    first = upload(services.preprocess.url, photos["bird"]).json()
    version = object_version(services.backend, first["gcs_path"])
    second = upload(services.preprocess.url, photos["bird"]).json()
    assert second == first
    assert object_version(services.backend, first["gcs_path"]) == version


def test_top_k_length_and_order(services, photos):
    path = upload(services.preprocess.url, photos["parrot"]).json()["gcs_path"]
    for k in (1, 10, 1000):
        result = classify(services.classify.url, path, top_k=k).json()
        confidences = [entry["confidence"] for entry in result["top_k"]]
        assert len(confidences) == k
        assert confidences == sorted(confidences, reverse=True)
    everything = classify(services.classify.url, path, top_k=1000).json()["top_k"]
    assert sorted(entry["index"] for entry in everything) == list(range(1000))
    assert sum(entry["confidence"] for entry in everything) == pytest.approx(1.0, abs=1e-3)
    labels = {entry["label"] for entry in everything}
    assert "Labrador retriever" in labels and not any("_" in label for label in labels)


def test_classify_resizes_stored_images_that_are_not_224(services, photos):
    """Any image in the bucket works: a full-size PNG is resized the way preprocess does."""
    full_size = encode(Image.open(io.BytesIO(photos["dragonfly"])), "PNG")
    uri, _ = services.backend.storage.put_if_absent("uploads/dragonfly.png", full_size, "image/png")
    result = classify(services.classify.url, uri)
    assert result.status_code == 200, result.text
    assert result.json()["label"] == "dragonfly"
