"""The brief's design, for comparison only: FastAPI + uvicorn, Keras called once per request.

    python benchmarks/naive_fastapi.py --port 8000 --weights mobilenet_v2_imagenet.h5 \
        [--call predict_on_batch|predict]

It reads the same stored images (local `file://` paths) the real service reads, decodes and
resizes them the same way, and calls Keras on a batch of one per request in a sync FastAPI
endpoint (requests run in FastAPI's thread pool, so several calls overlap). Two ways to call:
`predict_on_batch` (the default, the stronger baseline: ~88 req/s at concurrency 32 here, like
the ~75 the issue quotes) and `model.predict` (~21 req/s: it builds a data pipeline per call).
`model(x)` eagerly was slower still (~7 req/s at concurrency 1). Nothing here is hardened; do
not deploy it.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import tensorflow as tf
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel


class ClassifyRequest(BaseModel):
    gcs_path: str


def create_app(weights: str, call: str = "predict_on_batch") -> FastAPI:
    model = tf.keras.applications.MobileNetV2(weights=weights)
    if call == "predict":
        predict = lambda x: model.predict(x, verbose=0)  # noqa: E731
    else:
        predict = model.predict_on_batch
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/classify")
    def classify(request: ClassifyRequest) -> dict[str, object]:
        data = Path(request.gcs_path.removeprefix("file://")).read_bytes()
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR)
        x = tf.keras.applications.mobilenet_v2.preprocess_input(np.asarray(image, "float32")[None])
        probabilities = predict(x)[0]
        index = int(probabilities.argmax())
        return {"index": index, "confidence": float(probabilities[index])}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--weights", required=True)
    parser.add_argument(
        "--call", choices=("predict_on_batch", "predict"), default="predict_on_batch"
    )
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.weights, args.call), host="127.0.0.1", port=args.port, log_level="warning"
    )
