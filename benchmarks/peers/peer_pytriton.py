"""NVIDIA PyTriton peer: the Triton Inference Server binary PyTriton bundles, with dynamic
batching, in front of a Python inference callable; plus a thin HTTP front for the JSON contract.

Triton's own HTTP endpoint speaks the KServe v2 protocol (`POST /v2/models/<m>/infer` with typed
tensors), not `POST /classify {"gcs_path"}`, so a small Starlette app on uvicorn (a separate
process) translates: it sends the path as a BYTES tensor to Triton over gRPC (tritonclient's
asyncio client, one channel) and turns the probabilities Triton returns into the contract's JSON.
The inference callable (`@batch`) reads, decodes and runs ORT on each batch Triton's dynamic
batcher forms. `--instances` binds that many callables (Triton's instance_group count, KIND_CPU),
each with its own ORT session of `--threads` intra-op threads.

    python peer_pytriton.py --port 8000 --instances 2 --threads 1 --max-batch-size 8 --delay-us 2000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time

import contract
import numpy as np

MODEL = "mobilenet_v2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_infer(threads: int | None):
    from pytriton.decorators import batch

    session = contract.onnx_session(threads)
    input_name = session.get_inputs()[0].name
    root = contract.storage_root()

    @batch
    def infer(gcs_path: np.ndarray) -> dict[str, np.ndarray]:
        count = len(gcs_path)
        pixels = np.zeros((count, 224, 224, 3), np.uint8)
        status = np.full((count, 1), 200, np.int32)
        for i, path in enumerate(gcs_path):
            try:
                pixels[i] = contract.load_pixels(bytes(path[0]).decode(), root)
            except contract.ContractError as exc:  # one bad path must not fail the whole batch
                status[i] = exc.status
        probabilities = session.run(None, {input_name: pixels})[0]
        return {"probabilities": probabilities, "status": status}

    return infer


def prefer_own_libpython() -> None:
    """Make Triton's Python backend stub load this interpreter's libpython.

    The bundled stub links `libpython3.X.so.1.0` by soname; on a machine whose system Python is
    another patch release than this (shared-library) interpreter, the loader finds the system
    one, which then runs this interpreter's standard library and fails (e.g. `_thread.RLock`
    lacks `_recursion_count` under 3.11.2 with 3.11.7's multiprocessing).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        current = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + current if current else "")


def serve_triton(args: argparse.Namespace) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    prefer_own_libpython()
    grpc_port = free_port()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=free_port(),
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        allow_metrics=False,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=[make_infer(args.threads) for _ in range(args.instances)],
            inputs=[Tensor(name="gcs_path", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(contract.NUM_CLASSES,)),
                Tensor(name="status", dtype=np.int32, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us),
            ),
            strict=False,
        )
        triton.run()  # returns once the model is loaded
        front = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "front",
                "--host",
                args.host,
                "--port",
                str(args.port),
                "--triton",
                f"127.0.0.1:{grpc_port}",
            ]
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            if front.poll() is not None:
                break
        front.terminate()
        try:
            front.wait(10)
        except subprocess.TimeoutExpired:
            front.kill()


def serve_front(args: argparse.Namespace) -> None:
    import tritonclient.grpc.aio as triton_grpc
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    labels = contract.class_names()
    state: dict = {}

    async def classify(request: Request) -> JSONResponse:
        try:
            path, top_k = contract.parse_request(await request.json())
        except (contract.ContractError, ValueError) as exc:
            error = (
                exc
                if isinstance(exc, contract.ContractError)
                else contract.ContractError(400, "the body is not JSON")
            )
            return JSONResponse(contract.error_body(error), status_code=error.status)
        tensor = triton_grpc.InferInput("gcs_path", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[path.encode()]], dtype=np.object_))
        result = await state["client"].infer(MODEL, [tensor])
        status = int(result.as_numpy("status")[0, 0])
        if status != 200:
            return JSONResponse({"error": "refused", "status": status}, status_code=status)
        probabilities = result.as_numpy("probabilities")[0]
        return JSONResponse(contract.answer(probabilities, top_k, labels))

    async def health(request: Request) -> JSONResponse:
        ready = await state["client"].is_model_ready(MODEL)
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["client"] = triton_grpc.InferenceServerClient(args.triton)
        yield
        await state["client"].close()

    app = Starlette(
        routes=[Route("/classify", classify, methods=["POST"]), Route("/health", health)],
        lifespan=lifespan,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="server", choices=("server", "front"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instances", type=int, default=1, help="model instances (callables)")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads each")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_microseconds")
    parser.add_argument("--triton", default=None, help="(front) Triton gRPC host:port")
    args = parser.parse_args()
    if args.role == "front":
        serve_front(args)
    else:
        started = time.time()
        serve_triton(args)
        print(f"pytriton stopped after {time.time() - started:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
