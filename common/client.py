"""`image-pipeline`: send image files through preprocess then classify, print a table.

image-pipeline photo.jpg
image-pipeline ../shared/models/images --mode center-crop
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass
class Outcome:
    """What happened to one file: a label and confidence, or the error that stopped it."""

    file: Path
    label: str | None = None
    confidence: float | None = None
    error: str | None = None


class PipelineClient:
    """Calls the two services with explicit timeouts, so an unreachable service fails fast."""

    def __init__(
        self,
        preprocess_url: str,
        classify_url: str,
        timeout_s: float,
        token: str | None = None,
        google_id_token: bool = False,
    ) -> None:
        self.preprocess_url = preprocess_url.rstrip("/")
        self.classify_url = classify_url.rstrip("/")
        self.http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
        self.auth = {
            url: _authorization(url, token, google_id_token)
            for url in (self.preprocess_url, self.classify_url)
        }

    def run(self, file: Path, mode: str | None) -> Outcome:
        try:
            with open(file, "rb") as image:
                data = {"mode": mode} if mode else None
                stored = self._post(
                    self.preprocess_url, "/preprocess", files={"image": image}, data=data
                )
            answer = self._post(
                self.classify_url, "/classify", json={"gcs_path": stored["gcs_path"]}
            )
        except (httpx.HTTPError, OSError, RuntimeError) as exc:
            return Outcome(file, error=str(exc) or type(exc).__name__)
        return Outcome(file, label=answer["label"], confidence=answer["confidence"])

    def _post(self, base_url: str, route: str, **kwargs: object) -> dict:
        url = base_url + route
        response = self.http.post(url, headers=self.auth[base_url], **kwargs)
        if response.is_error:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise RuntimeError(f"{url} answered {response.status_code}: {message}")
        return response.json()


def _authorization(audience: str, token: str | None, google_id_token: bool) -> dict[str, str]:
    """`Authorization` for one service: a shared token, or a Google ID token for its URL.

    Cloud Run services deployed `--no-allow-unauthenticated` accept a Google-signed ID token
    whose audience is the service URL (an access token gets 403).
    """
    if google_id_token:
        import google.auth.transport.requests
        import google.oauth2.id_token

        request = google.auth.transport.requests.Request()
        token = google.oauth2.id_token.fetch_id_token(request, audience)
    return {"Authorization": f"Bearer {token}"} if token else {}


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, plus the image files inside any folder named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--preprocess-url", default="http://127.0.0.1:3001")
    parser.add_argument("--classify-url", default="http://127.0.0.1:3000")
    parser.add_argument("--mode", choices=["resize", "center-crop"], help="default: server's")
    parser.add_argument("--concurrency", type=int, default=4, help="files in flight at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call")
    parser.add_argument(
        "--token", default=os.environ.get("AUTH_TOKEN"), help="shared bearer token ($AUTH_TOKEN)"
    )
    parser.add_argument(
        "--google-id-token",
        action="store_true",
        help="send Google ID tokens for each service URL (Cloud Run, private services)",
    )
    args = parser.parse_args(argv)

    files = image_files(args.paths)
    if not files:
        parser.error("no image files found")
    client = PipelineClient(
        args.preprocess_url, args.classify_url, args.timeout, args.token, args.google_id_token
    )
    console = Console()
    with (
        Progress(console=console, transient=True, disable=len(files) < 2) as progress,
        ThreadPoolExecutor(max(1, args.concurrency)) as pool,
    ):
        task = progress.add_task("classifying", total=len(files))
        outcomes = []
        for outcome in pool.map(lambda f: client.run(f, args.mode), files):
            outcomes.append(outcome)
            progress.advance(task)

    table = Table("file", "label", "confidence")
    for outcome in outcomes:
        if outcome.error:
            table.add_row(str(outcome.file), f"[red]error: {outcome.error}[/red]", "")
        else:
            table.add_row(str(outcome.file), outcome.label, f"{outcome.confidence:.4f}")
    console.print(table)
    return 1 if any(outcome.error for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
