"""Ray Serve peer: one deployment, `@serve.batch` on the model call, on a local one-node Ray.

Each replica reserves `--cpus` of Ray's CPUs (`ray_actor_options.num_cpus`); Ray's docs tie a
replica's framework threads to that (`OMP_NUM_THREADS=num_cpus`), which ONNX Runtime does not
read, so the ORT session gets `--threads` (default: `--cpus`) explicitly. The batched call runs
on a thread (`asyncio.to_thread`) so the replica's event loop keeps taking requests while a batch
computes, as Ray's asyncio guide asks of blocking work (and as its throughput-optimized mode,
`--fast`, requires); `--concurrent-batches` lets that many batches overlap
(`max_concurrent_batches`). `max_ongoing_requests` must be at least
max_batch_size x max_concurrent_batches (Ray warns otherwise).

    python peer_ray.py --port 8000 --replicas 1 --cpus 2 --max-batch-size 8 --wait-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading

import numpy as np


def build_app(args: argparse.Namespace):
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    threads = args.threads or int(args.cpus)

    @serve.deployment(
        num_replicas=args.replicas,
        max_ongoing_requests=args.max_ongoing,
        ray_actor_options={"num_cpus": args.cpus},
    )
    class Classifier:
        def __init__(self) -> None:
            import contract

            self.contract = contract
            self.session = contract.onnx_session(threads)
            self.input_name = self.session.get_inputs()[0].name
            self.labels = contract.class_names()
            self.root = contract.storage_root()

        async def __call__(self, request: Request):
            contract = self.contract
            try:
                path, top_k = contract.parse_request(await request.json())
                pixels = contract.load_pixels(path, self.root)
            except contract.ContractError as exc:
                return JSONResponse(contract.error_body(exc), status_code=exc.status)
            probabilities = await self.predict(pixels)
            return contract.answer(probabilities, top_k, self.labels)

        @serve.batch(
            max_batch_size=args.max_batch_size,
            batch_wait_timeout_s=args.wait_ms / 1000,
            max_concurrent_batches=args.concurrent_batches,
        )
        async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
            batch = np.stack(images)
            probabilities = await asyncio.to_thread(
                self.session.run, None, {self.input_name: batch}
            )
            return list(probabilities[0])

    return Classifier.bind()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--cpus", type=float, default=1, help="num_cpus per replica")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=5.0, help="batch_wait_timeout_s in ms")
    parser.add_argument("--concurrent-batches", type=int, default=1)
    parser.add_argument("--max-ongoing", type=int, default=32, help="max_ongoing_requests")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="Ray's throughput-optimized flags, direct ingress excepted",
    )
    args = parser.parse_args()
    if args.fast:
        # Set before Ray starts, so that the raylet and every actor it spawns inherit them.
        # Direct ingress (replicas listening themselves, no proxy) expects a load balancer in
        # front, which a one-machine deployment does not have; the proxy stays.
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"

    import ray
    from ray import serve

    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here, "STORAGE_DIR": str(_storage())}},
    )
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args), name="classify", route_prefix="/classify", blocking=False)
    print("ready", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    serve.shutdown()
    ray.shutdown()
    sys.exit(0)


def _storage():
    import contract

    return contract.storage_root()


if __name__ == "__main__":
    main()
