"""Model runtimes for classify: one interface, uint8 images in, softmax out.

The model is defined and imported with Keras; the import also stores an ONNX export in the
same BentoML model. Each runtime imports its library lazily, so a Bento that serves with ONNX
Runtime does not need TensorFlow installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

MODEL_SIZE = 224
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
RUNTIMES = ("onnxruntime", "tensorflow")
DEFAULT_RUNTIME = "onnxruntime"  # fastest accepted runtime (benchmarks/results.md)


class Runtime(Protocol):
    """Runs MobileNetV2 on a batch of 224x224 RGB uint8 images (NHWC)."""

    name: str

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax probabilities, float32 of shape (N, 1000)."""
        ...


class TensorFlowRuntime:
    """Keras model behind a `tf.function` with a fixed `[None, 224, 224, 3]` signature.

    Eager calls with the varying batch sizes adaptive batching produces grow memory by
    gigabytes; one traced graph for every batch size does not.
    """

    name = "tensorflow"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        model = tf.keras.models.load_model(model_dir / KERAS_FILE, compile=False)
        self._predict = tf.function(
            lambda pixels: model(scale_pixels_tf(pixels), training=False),
            input_signature=[tf.TensorSpec([None, MODEL_SIZE, MODEL_SIZE, 3], tf.uint8)],
        )

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._predict(pixels).numpy()


class OnnxRuntime:
    """The ONNX export (scaling included in the graph) on ONNX Runtime's CPU provider."""

    name = "onnxruntime"

    def __init__(self, model_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: pixels})[0]


def scale_pixels_tf(pixels):  # a tf.Tensor in and out
    """MobileNetV2's `preprocess_input` on uint8 pixels: [0, 255] -> [-1, 1]."""
    import tensorflow as tf

    return tf.cast(pixels, tf.float32) / 127.5 - 1.0


def load_runtime(name: str, model_dir: Path, threads: int | None = None) -> Runtime:
    """The runtime called `name`, loaded from a stored model folder."""
    if name == "tensorflow":
        return TensorFlowRuntime(model_dir, threads)
    if name == "onnxruntime":
        return OnnxRuntime(model_dir, threads)
    raise ValueError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}")
