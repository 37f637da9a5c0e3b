"""The brief's preprocess design, for comparison only: FastAPI + uvicorn, Pillow, PNG, a folder.

    python benchmarks/naive_preprocess.py --port 8001 --storage-dir /tmp/naive

A sync FastAPI endpoint (FastAPI's thread pool) takes the multipart upload (python-multipart,
spooled to a temporary file past 1 MB), opens it with Pillow (every format Pillow knows, full
size), converts to RGB, resizes to 224x224, encodes PNG and writes it under a random name.
Nothing here is hardened; do not deploy it.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image


def create_app(storage_dir: Path) -> FastAPI:
    storage_dir.mkdir(parents=True, exist_ok=True)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/preprocess")
    def preprocess(image: UploadFile) -> dict[str, str]:
        picture = Image.open(image.file).convert("RGB").resize((224, 224), Image.BILINEAR)
        path = storage_dir / f"{uuid.uuid4().hex}.png"
        picture.save(path, "PNG")
        return {"gcs_path": path.resolve().as_uri()}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--storage-dir", type=Path, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.storage_dir), host="127.0.0.1", port=args.port, log_level="warning")
