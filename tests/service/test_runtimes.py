"""Runtime acceptance: an FP32 runtime may serve only if it agrees with Keras.

Top-1 must equal Keras' and every probability must be within 1e-4, on the shipped photos (both
preprocessing modes) and on a held-out sample: 64 seeded random crops, flips, rotations and
colour changes of the photos (no other labelled images are available offline). The opt-in
reduced-precision runtimes (BF16, INT8) instead keep the photos' top-1 and stay within 1 point of
FP32's top-1 accuracy on a labelled held-out sample (scripts/heldout.py).
"""

from __future__ import annotations

import io
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from classify.runtime_table import FP32_RUNTIMES as RUNTIMES
from classify.runtime_table import REDUCED_PRECISION_RUNTIMES, spec
from classify.runtimes import class_names, load_runtime
from common.images.decode import decode_image, normalize
from common.schemas import ResizeMode
from scripts.heldout import labelled_views, top1_accuracy

TOLERANCE = 1e-4


def held_out_sample(photos: dict[str, bytes], count: int = 64) -> np.ndarray:
    rng = random.Random(2026)
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in photos.values()]
    sample = []
    for _ in range(count):
        image = rng.choice(images)
        width, height = image.size
        side = int(min(width, height) * rng.uniform(0.5, 1.0))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        image = image.crop((left, top, left + side, top + side)).rotate(rng.choice([0, 90, 180]))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        sample.append(np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR)))
    return np.stack(sample)


def photo_batch(photos: dict[str, bytes]) -> np.ndarray:
    return np.stack(
        [
            np.asarray(normalize(decode_image(data, 10**8), mode))
            for data in photos.values()
            for mode in ResizeMode
        ]
    )


@pytest.fixture(scope="module")
def model_dir(bentoml_home: Path):
    """The folder of the stored model a runtime loads, in the tests' BentoML store."""

    def folder(runtime_name: str) -> Path:
        name = spec(runtime_name).stored_model
        (version,) = [p for p in (bentoml_home / "models" / name).iterdir() if p.is_dir()]
        return version

    return folder


@pytest.fixture(scope="module")
def keras_model(model_assets: Path):
    import tensorflow as tf

    return tf.keras.applications.MobileNetV2(weights=str(model_assets / "mobilenet_v2_imagenet.h5"))


@pytest.fixture(scope="module")
def keras_on(keras_model):
    """Keras' probabilities for a named sample, computed once per module (the reference every
    runtime is compared with)."""
    computed: dict[str, np.ndarray] = {}

    def probabilities(name: str, pixels: np.ndarray) -> np.ndarray:
        if name not in computed:
            computed[name] = _keras_probabilities(keras_model, pixels)
        return computed[name]

    return probabilities


# ONNX Runtime serves a lone call with every core and overlapping calls single-threaded: both
# paths are accepted separately ("onnxruntime:1" is the path overlapping calls take).
RUNTIME_VARIANTS = [*RUNTIMES, "onnxruntime:1"]


@pytest.mark.parametrize("runtime_spec", RUNTIME_VARIANTS)
@pytest.mark.parametrize("sample", ["photos", "held-out"])
def test_runtime_agrees_with_keras(runtime_spec, sample, model_dir, keras_on, photos):
    runtime_name, _, threads = runtime_spec.partition(":")

    pixels = photo_batch(photos) if sample == "photos" else held_out_sample(photos)
    expected = keras_on(sample, pixels)
    runtime = load_runtime(
        spec(runtime_name), model_dir(runtime_name), int(threads) if threads else None
    )
    # batch sizes the batcher forms, not just one
    actual = np.concatenate(
        [runtime.predict(pixels[i : i + 16]) for i in range(0, len(pixels), 16)]
    )
    assert actual.shape == (len(pixels), 1000)
    np.testing.assert_array_equal(actual.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(actual - expected).max() <= TOLERANCE


def test_unknown_runtime_is_refused(model_dir):
    with pytest.raises(ValueError, match="unknown runtime"):
        load_runtime(spec("caffe"), model_dir("onnxruntime"))


def _in_batches(runtime, pixels: np.ndarray, size: int = 32) -> np.ndarray:
    return np.concatenate(
        [runtime.predict(pixels[i : i + size]) for i in range(0, len(pixels), size)]
    )


def _keras_probabilities(keras_model, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    scaled = tf.keras.applications.mobilenet_v2.preprocess_input(pixels.astype("float32"))
    return np.concatenate(
        [keras_model(scaled[i : i + 64], training=False).numpy() for i in range(0, len(scaled), 64)]
    )


@pytest.mark.parametrize("runtime_name", REDUCED_PRECISION_RUNTIMES)
def test_reduced_precision_keeps_top1_within_one_point_of_fp32(
    runtime_name, model_dir, keras_on, model_assets, photos
):
    runtime = load_runtime(spec(runtime_name), model_dir(runtime_name))
    import openvino as ov

    layers = runtime.layer_precisions()  # really reduced, not a silent FP32 fallback
    if runtime_name == "openvino-int8":
        assert runtime.precision == "int8"
        assert layers["u8"] + layers["i8"] == 53, layers  # 52 convolutions and the classifier
    elif "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert runtime.precision == "bf16"
        assert layers["bf16"] == 53, layers
    names = class_names(model_dir(runtime_name))

    views, labels = labelled_views(model_assets / "images")
    reduced = _in_batches(runtime, views)
    # FP32 is ONNX Runtime here: the test above holds it within 1e-4 of Keras, at a tenth of
    # Keras' time on these 600 views
    fp32 = _in_batches(load_runtime(spec("onnxruntime"), model_dir("onnxruntime")), views)
    assert len(views) == 600
    assert abs(top1_accuracy(reduced, labels, names) - top1_accuracy(fp32, labels, names)) <= 0.01

    pixels = photo_batch(photos)
    np.testing.assert_array_equal(
        runtime.predict(pixels).argmax(axis=1), keras_on("photos", pixels).argmax(1)
    )


@pytest.mark.parametrize(
    "runtime_name", ["onnxruntime", "openvino", "openvino-bf16", "openvino-int8"]
)
def test_overlapping_calls_each_get_their_own_answer(runtime_name, model_dir, photos):
    """Calls from several threads at once (ONNX Runtime: wide and single-threaded sessions
    mixed; OpenVINO: one infer request per thread) give every caller the probabilities of its
    own image, equal to a lone call's."""
    pixels = held_out_sample(photos, count=8)
    runtime = load_runtime(spec(runtime_name), model_dir(runtime_name))
    alone = [runtime.predict(pixels[i : i + 1])[0] for i in range(len(pixels))]

    def predict_repeatedly(index: int) -> list[np.ndarray]:
        return [runtime.predict(pixels[index : index + 1])[0] for _ in range(10)]

    with ThreadPoolExecutor(len(pixels)) as pool:
        results = list(pool.map(predict_repeatedly, range(len(pixels))))
    for index, outputs in enumerate(results):
        for output in outputs:
            assert output.argmax() == alone[index].argmax()
            assert np.abs(output - alone[index]).max() <= 1e-5
