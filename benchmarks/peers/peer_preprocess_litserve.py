"""LitServe /preprocess: a LitAPI whose `decode_request` takes the multipart form LitServe parses
on its HTTP side and whose `predict` is the image work, in `workers_per_device` worker processes
(one per core, as its docs advise for CPU), no batching (nothing to batch: each image is its own
work).

    python peer_preprocess_litserve.py --port 8000 --workers 2 [--fast-queue]
"""

from __future__ import annotations

import argparse

import contract
import litserve as ls
from fastapi import HTTPException


class PreprocessAPI(ls.LitAPI):
    def __init__(self, **kwargs) -> None:
        super().__init__(api_path="/preprocess", **kwargs)

    def setup(self, device) -> None:
        self.root = contract.storage_root()

    def decode_request(self, request):
        upload = request.get("image") if hasattr(request, "get") else None
        if upload is None or not hasattr(upload, "file"):
            raise HTTPException(400, "expected a multipart upload in field 'image'")
        return upload.file.read()

    def predict(self, data: bytes) -> dict:
        try:
            return contract.preprocess(data, self.root)
        except contract.ContractError as exc:
            raise HTTPException(exc.status, exc.message) from exc

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="workers_per_device")
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ between processes")
    args = parser.parse_args()
    server = ls.LitServer(
        PreprocessAPI(),
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        fast_queue=args.fast_queue,
        timeout=60,
    )
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
