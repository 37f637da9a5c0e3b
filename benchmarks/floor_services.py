"""The request floor's servers: classify's contract with no model and no middleware.

Each reads the stored image named in the request (local storage) and answers a fixed top-5 of
`/classify`'s shape, so what a request costs them is the framework's own request path: HTTP,
routing, validation, serialization. `benchmarks/request_floor.py` measures them beside the
served classify and the bare model.

    bentoml serve benchmarks.floor_services:BareBento --port 3000
    python -m benchmarks.floor_services --port 3000          # the FastAPI floor
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import bentoml
import uvicorn
from fastapi import FastAPI

from common.schemas import ClassifyRequest, ClassifyResponse, Prediction

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
