"""A tiny HTTP proxy in front of the GCS emulator that records every request and can answer
503/429 instead of forwarding, or drip an answer's body a byte at a time: storage faults on
demand, and a storage-side log of reads."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.failures_left = 0  # how many requests to fail before forwarding again
        self.failure_status = 503
        self.failing_path: str | None = None  # fail every request whose path holds this
        self.drip_interval_s: float | None = None  # send each body byte this long apart
        self.drips_cut = 0  # dripping answers whose client closed the connection mid-body
        self.seen: list[tuple[str, str]] = []  # (method, decoded path) of every request
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def fail_next(self, count: int, status: int = 503) -> None:
        self.failures_left, self.failure_status = count, status

    def drip(self, interval_s: float | None) -> None:
        """Send answer bodies one byte every `interval_s` (None: at once again)."""
        self.drip_interval_s = interval_s

    def close(self) -> None:
        self._server.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                proxy.seen.append((self.command, unquote(urlsplit(self.path).path)))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                failing = proxy.failing_path is not None and proxy.failing_path in self.path
                if proxy.failures_left > 0 or failing:
                    proxy.failures_left -= 0 if failing else 1
                    self.send_response(proxy.failure_status)
                    self.send_header("Content-Type", "application/json")
                    payload = (
                        b'{"error": {"code": %d, "message": "injected"}}' % proxy.failure_status
                    )
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                upstream.close()
                if proxy.drip_interval_s is None or not data:
                    self.wfile.write(data)
                    return
                try:
                    for index in range(len(data)):
                        self.wfile.write(data[index : index + 1])
                        self.wfile.flush()
                        time.sleep(proxy.drip_interval_s)
                except OSError:  # the client cut the connection
                    proxy.drips_cut += 1

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

            def log_message(self, *args: object) -> None:
                pass

        return Handler
