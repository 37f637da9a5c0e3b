"""LitServe peer: a LitAPI on CPU, with LitServe's batching when `--max-batch-size` > 1.

LitServe runs `decode_request -> batch -> predict -> unbatch -> encode_response` in its inference
worker processes (`workers_per_device` of them on the one CPU "device"; its docs: for CPU, one per
core), and the HTTP side in `num_api_servers` uvicorn processes (default: one per worker) that
hand requests over by queue (ZeroMQ with `--fast-queue`, which its docs suggest above ~100 req/s).

    python peer_litserve.py --port 8000 --workers 2 --max-batch-size 4 --batch-timeout 0.005 \
        --threads 1 [--fast-queue]
"""

from __future__ import annotations

import argparse

import contract
import litserve as ls
import numpy as np
from fastapi import HTTPException


class ClassifyAPI(ls.LitAPI):
    def __init__(self, threads: int | None, **kwargs) -> None:
        super().__init__(api_path="/classify", **kwargs)
        self.threads = threads

    def setup(self, device) -> None:
        self.session = contract.onnx_session(self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self.labels = contract.class_names()
        self.root = contract.storage_root()

    def decode_request(self, request):
        try:
            path, top_k = contract.parse_request(request)
            return contract.load_pixels(path, self.root), top_k
        except contract.ContractError as exc:
            raise HTTPException(exc.status, exc.message) from exc

    def batch(self, inputs):
        pixels, top_ks = zip(*inputs, strict=True)
        return np.stack(pixels), list(top_ks)

    def predict(self, x):
        pixels, top_k = x
        if pixels.ndim == 3:  # unbatched: one image
            return self.session.run(None, {self.input_name: pixels[None]})[0][0], top_k
        return self.session.run(None, {self.input_name: pixels})[0], top_k

    def unbatch(self, output):
        probabilities, top_ks = output
        return list(zip(probabilities, top_ks, strict=True))

    def encode_response(self, output):
        probabilities, top_k = output
        return contract.answer(probabilities, top_k, self.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="workers_per_device")
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout", type=float, default=0.0, help="seconds")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--fast-queue", action="store_true", help="ZeroMQ between processes")
    parser.add_argument("--api-servers", type=int, default=None, help="num_api_servers")
    args = parser.parse_args()
    api = ClassifyAPI(
        args.threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=args.workers,
        fast_queue=args.fast_queue,
        timeout=60,
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
