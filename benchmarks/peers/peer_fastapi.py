"""The "no framework" floor: FastAPI + uvicorn calling ONNX Runtime once per request, no batching.

The endpoint is a plain `def`, so FastAPI runs it on its worker threadpool (AnyIO, 40 threads);
`InferenceSession.run` releases the GIL and is safe to call from several threads at once, so
concurrent requests overlap on the cores. One uvicorn process, access log off (as the project).

    python peer_fastapi.py --port 8000 --threads 1
"""

from __future__ import annotations

import argparse

import contract
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class ClassifyRequest(BaseModel):
    gcs_path: str = Field(min_length=1, max_length=2048)
    top_k: int = Field(default=5, ge=1, le=contract.MAX_TOP_K)


def build_app(threads: int | None) -> FastAPI:
    app = FastAPI()
    session = contract.onnx_session(threads)
    input_name = session.get_inputs()[0].name
    labels = contract.class_names()
    root = contract.storage_root()

    @app.post("/classify")
    def classify(request: ClassifyRequest):
        try:
            pixels = contract.load_pixels(request.gcs_path, root)
        except contract.ContractError as exc:
            return JSONResponse(contract.error_body(exc), status_code=exc.status)
        probabilities = session.run(None, {input_name: pixels[None]})[0][0]
        return contract.answer(probabilities, request.top_k, labels)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    args = parser.parse_args()
    app = build_app(args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
