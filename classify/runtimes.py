"""Model runtimes for classify: one interface, uint8 images in, softmax out.

The model is defined and imported with Keras (scripts/import_model.py), which stores one BentoML
model per runtime family with only the files that family loads. Each runtime imports its library
lazily, so a Bento that serves with ONNX Runtime does not need TensorFlow installed.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from classify.runtime_table import RuntimeSpec
from common.schemas import MODEL_SIZE, NUM_CLASSES

KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
INT8_FILE = "model-int8.xml"  # NNCF's INT8 quantization of the ONNX export (OpenVINO IR)
CLASS_INDEX_FILE = "imagenet_class_index.json"


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

    def __init__(self, spec: RuntimeSpec, model_dir: Path, threads: int | None = None) -> None:
        import tensorflow as tf

        self.name = spec.name
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
    """The ONNX export (scaling included in the graph) on ONNX Runtime's CPU provider.

    With `threads` unset the thread count adapts to load: a call that runs alone uses every
    core (its intra-op threads stop spinning when it returns, so they hold no core afterwards),
    and calls that overlap run single-threaded, each on a core. That gives both the lowest
    latency for a lone image and the most images/s under load (benchmarks/decisions.md, D3).
    """

    def __init__(self, spec: RuntimeSpec, model_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.name = spec.name
        path = str(model_dir / ONNX_FILE)
        cores = os.cpu_count() or 1
        self._narrow = _onnx_session(ort, path, threads or 1)
        if threads or cores == 1:  # a fixed thread count: ONNX Runtime's defaults otherwise
            self._wide = self._narrow
        else:
            self._wide = _onnx_session(ort, path, cores, stop_spinning_after_run=True)
        self._input = self._narrow.get_inputs()[0].name
        self._lock = threading.Lock()
        self._running = 0

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
            session = self._wide if self._running == 1 else self._narrow
        try:
            return session.run(None, {self._input: pixels})[0]
        finally:
            with self._lock:
                self._running -= 1


class OpenVinoRuntime:
    """The ONNX export on OpenVINO's CPU plugin in FP32, or (opt-in) BF16 or INT8.

    - `fp32`: asked for explicitly, because OpenVINO picks BF16 by itself on CPUs that have it.
    - `bf16`: faster on a CPU with AVX-512 BF16 or AMX; on a CPU without BF16 it runs FP32
      (`precision` says so).
    - `int8`: the INT8 quantization stored beside the export (scripts/quantize_int8.py): every
      convolution and the classifier run in INT8, the softmax in FP32; how much faster depends
      on the CPU (VNNI).
    Both reduced precisions keep top-1 accuracy within 1 point of FP32 on the held-out sample,
    but move probabilities further than FP32 runtimes do (benchmarks/decisions.md, D11, D12).
    """

    def __init__(self, spec: RuntimeSpec, model_dir: Path, threads: int | None = None) -> None:
        import openvino as ov

        precision = spec.precision
        core = ov.Core()
        has_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        floating = "bf16" if precision == "bf16" and has_bf16 else "f32"
        config = {"INFERENCE_PRECISION_HINT": floating}
        if threads:  # a fixed thread count inside each call: one stream on that many cores
            config |= {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads)}
        else:
            # one stream per core, so that overlapping calls run side by side (served more
            # than one all-core stream under load: benchmarks/decisions.md, D4)
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
        model_file = INT8_FILE if precision == "int8" else ONNX_FILE
        self._model = core.compile_model(str(model_dir / model_file), "CPU", config)
        self.precision = "int8" if precision == "int8" else floating
        self.name = spec.name
        self._requests = threading.local()  # an infer request is not safe to share

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._model.create_infer_request()
        return request.infer({0: pixels})[0].copy()  # the output buffer is reused per call

    def layer_precisions(self) -> Counter[str]:
        """How many convolution and fully connected layers run in each precision (u8 = INT8)."""
        return Counter(
            op.get_rt_info()["runtimePrecision"].astype(str)
            for op in self._model.get_runtime_model().get_ops()
            if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")
        )


def _onnx_session(
    ort, path: str, threads: int, stop_spinning_after_run: bool = False
):  # -> ort.InferenceSession
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if stop_spinning_after_run:
        # intra-op threads spin while a call runs (fast hand-offs) but not after it: left
        # spinning they would hold a core that the overlapping single-threaded calls need
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def class_names(model_dir: Path) -> list[str]:
    """Human class names by index from the stored Keras `imagenet_class_index.json`."""
    index = json.loads((model_dir / CLASS_INDEX_FILE).read_text())
    return [index[str(i)][1].replace("_", " ") for i in range(NUM_CLASSES)]


def scale_pixels_tf(pixels):  # a tf.Tensor in and out
    """MobileNetV2's `preprocess_input` on uint8 pixels: [0, 255] -> [-1, 1]."""
    import tensorflow as tf

    return tf.cast(pixels, tf.float32) / 127.5 - 1.0


# One loader per model family (the stored model's files), each given the runtime's record.
LOADERS: dict[str, Callable[[RuntimeSpec, Path, int | None], Runtime]] = {
    "keras": TensorFlowRuntime,
    "onnx": OnnxRuntime,
    "openvino": OpenVinoRuntime,
}


def load_runtime(runtime: RuntimeSpec, model_dir: Path, threads: int | None = None) -> Runtime:
    """`runtime` (a record of classify/runtime_table.py) loaded from a stored model folder."""
    return LOADERS[runtime.family](runtime, model_dir, threads)
