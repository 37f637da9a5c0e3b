"""The "no framework" /preprocess: FastAPI + uvicorn, the upload parsed by FastAPI's form parser
(python-multipart), the image work in a plain `def` on FastAPI's worker threadpool (Pillow
releases the GIL while it decodes, resizes and encodes). One uvicorn process, access log off.

    python peer_preprocess_fastapi.py --port 8000
"""

from __future__ import annotations

import argparse

import contract
import uvicorn
from fastapi import FastAPI, File
from fastapi.responses import JSONResponse


def build_app() -> FastAPI:
    app = FastAPI()
    root = contract.storage_root()

    @app.post("/preprocess")
    def preprocess(image: bytes = File()):
        try:
            return contract.preprocess(image, root)
        except contract.ContractError as exc:
            return JSONResponse(contract.error_body(exc), status_code=exc.status)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
