"""The request floor's servers: classify's contract with nothing of the project's around it.

`BareBento` and the FastAPI app read the stored image named in the request (local storage) and
answer a fixed top-5 of `/classify`'s shape, so what a request costs them is the framework's own
request path: HTTP, routing, validation, serialization. `ModelBento` adds the model and nothing
else (decode, one ONNX Runtime call, rank): the leanest classify BentoML serves, the measured
floor under the shipped service. `benchmarks/request_floor.py` measures them beside the served
classify and the bare model.

    bentoml serve benchmarks.floor_services:BareBento --port 3000
    bentoml serve benchmarks.floor_services:ModelBento --port 3000
    python -m benchmarks.floor_services --port 3000          # the FastAPI floor
"""

from __future__ import annotations

import argparse
import io
import os
import threading
from pathlib import Path

import bentoml
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image

from classify.model import Classifier
from classify.runtime_table import TABLE
from common.schemas import ClassifyRequest, ClassifyResponse, Prediction
from common.threads import name_thread

# Model calls at once in ModelBento: the shipped service's default (calls_per_core per core).
MODEL_CALLS = TABLE["onnxruntime"].calls_per_core * (os.cpu_count() or 1)

TOP = Prediction(label="tabby", index=281, confidence=0.5)
ANSWER = ClassifyResponse(
    label=TOP.label,
    confidence=TOP.confidence,
    index=TOP.index,
    top_k=[TOP] * 5,
    model="none",
    runtime="none",
)


def read_stored(gcs_path: str) -> bytes:
    """The stored image's bytes (local storage: `file://` URIs under STORAGE_DIR)."""
    root = Path(os.environ["STORAGE_DIR"]).resolve()
    path = Path(gcs_path.removeprefix("file://")).resolve()
    if not path.is_relative_to(root):
        raise ValueError("outside storage")
    return path.read_bytes()


@bentoml.service(
    name="floor-bentoml",
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ".*"},  # as classify's defaults (common/config.py)
)
class BareBento:
    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    async def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse:
        read_stored(gcs_path)
        return ANSWER


@bentoml.service(
    name="floor-bentoml-model",
    threads=MODEL_CALLS,  # BentoML runs a sync API on this many threads
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ".*"},
)
class ModelBento:
    model_ref = bentoml.models.BentoModel(TABLE["onnxruntime"].stored_model)

    def __init__(self) -> None:
        folder = Path(self.model_ref.path)
        self.classifier = Classifier(TABLE["onnxruntime"], folder, "floor", threads=1)
        self.named = threading.local()

    @bentoml.api(route="/classify", input_spec=ClassifyRequest, output_spec=ClassifyResponse)
    def classify(self, gcs_path: str, top_k: int = 5) -> ClassifyResponse:
        if not getattr(self.named, "done", False):  # the request floor splits CPU by name
            name_thread(threading.get_native_id(), "classify-model")
            self.named.done = True
        image = Image.open(io.BytesIO(read_stored(gcs_path))).convert("RGB")
        probabilities = self.classifier.predict(np.asarray(image)[np.newaxis])[0]
        return self.classifier.rank(probabilities, top_k)


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/classify")
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        read_stored(request.gcs_path)
        return ANSWER

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the FastAPI floor server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        fastapi_app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
