"""`image-pipeline`: send image files through preprocess then classify.

image-pipeline photo.jpg
image-pipeline ~/Pictures --output results.csv            # thousands: rows saved as they arrive
image-pipeline ~/Pictures --output results.csv --resume   # after a stop: only the files not done
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from google.auth.exceptions import GoogleAuthError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from client.google_tokens import GoogleIdTokens
from client.results import Outcome, ResultsFile
from common.threads import in_window
from common.tracing import TracingError, configure_tracing, mark_current_failed, photo_trace
from common.tracing import shutdown as shutdown_tracing

# The allowlisted formats' usual names, the rarer ones included (.jfif from browsers, .hif
# from Canon and Fujifilm cameras).
IMAGE_SUFFIXES = {
    *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif"),
    *(".heic", ".heif", ".hif", ".avif"),
}
RETRY_STATUSES = {429, 503}
MAX_RETRY_WAIT_S = 60.0
# Answers a later run may get right (`--resume` redoes their files): credentials, overload,
# outages, a gateway's timeout, and a storage refusal an operator can fix (`access_denied`).
RETRYABLE_STATUSES = {401, 403, 408, 429, 500, 502, 503, 504}
PERMANENT_CODES = {"outside_storage"}  # a 403 no retry changes


class ServiceRefused(RuntimeError):
    """A service answered an error status (after any retries)."""

    def __init__(self, message: str, status: int, code: str | None) -> None:
        super().__init__(message)
        self.retryable = status in RETRYABLE_STATUSES and code not in PERMANENT_CODES


class PipelineClient:
    """Calls the two services with explicit timeouts, so an unreachable service fails fast.

    429 and 503 (overload, storage or decoder busy) are retried after the service's
    Retry-After, at most `retries` times per call; then the file's outcome is that error.
    """

    def __init__(
        self,
        preprocess_url: str,
        classify_url: str,
        timeout_s: float,
        token: str | None = None,
        google_id_token: bool = False,
        retries: int = 5,
    ) -> None:
        self.preprocess_url = preprocess_url.rstrip("/")
        self.classify_url = classify_url.rstrip("/")
        self.retries = retries
        self.retried = 0  # answers retried, for the summary (+= under the GIL is enough here)
        auth = GoogleIdTokens() if google_id_token else SharedToken(token) if token else None
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), auth=auth
        )

    def run(self, file: Path, mode: str | None) -> Outcome:
        """One photo through both services, in one trace (its `traceparent` on both calls)."""
        with photo_trace("photo", {"photo.file": file.name}) as headers:
            trace_id = headers["traceparent"].split("-")[1]
            try:
                answer = self._classify(file, mode, headers)
            except ServiceRefused as exc:
                mark_current_failed(exc)
                return Outcome(
                    file=str(file), error=str(exc), retryable=exc.retryable, trace_id=trace_id
                )
            except (httpx.HTTPError, OSError) as exc:  # the network, or the file itself
                mark_current_failed(exc)
                error = str(exc) or type(exc).__name__
                return Outcome(file=str(file), error=error, retryable=True, trace_id=trace_id)
        fields = {k: answer.get(k) for k in Outcome.model_fields if k not in ("file", "trace_id")}
        return Outcome(file=str(file), trace_id=trace_id, **fields)

    def _classify(self, file: Path, mode: str | None, headers: dict[str, str]) -> dict:
        data = file.read_bytes()
        form = {"mode": mode} if mode else None
        upload = {"image": (file.name, data)}
        stored = self._post(
            self.preprocess_url, "/preprocess", files=upload, data=form, headers=headers
        )
        gcs_path = {"gcs_path": stored["gcs_path"]}
        return self._post(self.classify_url, "/classify", json=gcs_path, headers=headers)

    def _post(self, base_url: str, route: str, **kwargs: object) -> dict:
        """POST, retrying busy answers after their Retry-After and a dropped connection after
        a backoff (both routes are idempotent: preprocess stores by content)."""
        url = base_url + route
        for attempt in range(self.retries + 1):
            try:
                response = self.http.post(url, **kwargs)
            except httpx.TransportError:  # reset, refused, timed out: the network, not the photo
                if attempt == self.retries:
                    raise
                self.retried += 1
                time.sleep(retry_after_s(None, attempt))
                continue
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            self.retried += 1
            time.sleep(retry_after_s(response.headers.get("retry-after"), attempt))
        if response.is_error:
            try:
                body = response.json()
                message, code = body.get("error", response.text), body.get("code")
            except (ValueError, AttributeError):
                message, code = response.text, None
            status = response.status_code
            raise ServiceRefused(f"{url} answered {status}: {message}", status, code)
        return response.json()


def retry_after_s(header: str | None, attempt: int) -> float:
    """Seconds to wait: the Retry-After header (seconds or an HTTP date), else backoff; plus up
    to half again at random, so that files refused together do not all come back together."""
    wait_s = float(2**attempt)
    if header:
        try:
            wait_s = float(header)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                wait_s = parsedate_to_datetime(header).timestamp() - time.time()
    return min(max(wait_s, 0.0) * random.uniform(1.0, 1.5), MAX_RETRY_WAIT_S)


class SharedToken(httpx.Auth):
    """The shared bearer token (`AUTH_TOKEN`) on every request."""

    def __init__(self, token: str) -> None:
        self.header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = self.header
        yield request


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, plus the image files inside any folder named, in a stable order.

    Inside a folder, hidden names are passed over: macOS leaves a `._IMG_0001.JPG` of metadata
    beside every photo copied to a shared drive, and `.thumbnails`-style folders hold copies.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.is_file()
            )
        else:
            found.append(path)
    return found


class RateColumn(ProgressColumn):
    """Files per second, as rich measures the task's speed."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} files/s" if task.speed else "", style="progress.data.speed")


def run_all(
    client: PipelineClient,
    files: list[Path],
    mode: str | None,
    concurrency: int,
    results: ResultsFile | None,
    console: Console,
) -> list[Outcome]:
    """Every file through the pipeline, `concurrency` at a time, each outcome saved at once.

    Only `concurrency` files are submitted ahead, so a stop (Ctrl-C) leaves nothing queued.
    """
    outcomes: list[Outcome] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with (
        Progress(*columns, console=console, transient=True, disable=len(files) < 2) as progress,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        task = progress.add_task("classifying", total=len(files))
        for future in in_window(pool, lambda file: client.run(file, mode), files, concurrency):
            outcome = future.result()
            if results:
                results.write(outcome)
            outcomes.append(outcome)
            progress.advance(task)
    return outcomes


def print_table(console: Console, outcomes: list[Outcome]) -> None:
    table = Table("file", "label", "confidence")
    for outcome in sorted(outcomes, key=lambda o: o.file):
        if outcome.error:
            table.add_row(outcome.file, f"[red]error: {outcome.error}[/red]", "")
        else:
            table.add_row(outcome.file, outcome.label, f"{outcome.confidence:.4f}")
    console.print(table)


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="image-pipeline",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    parser.add_argument("--preprocess-url", default="http://127.0.0.1:3001")
    parser.add_argument("--classify-url", default="http://127.0.0.1:3000")
    parser.add_argument("--mode", choices=["resize", "center-crop"], help="default: server's")
    parser.add_argument("--concurrency", type=int, default=4, help="files in flight at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP call")
    parser.add_argument(
        "--retries", type=int, default=5, help="retries of a 429/503 answer, after Retry-After"
    )
    parser.add_argument(
        "--output", type=Path, help="write a row per file as it finishes (.csv or .jsonl)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip files already in --output, append the rest"
    )
    parser.add_argument(
        "--token", default=os.environ.get("AUTH_TOKEN"), help="shared bearer token ($AUTH_TOKEN)"
    )
    parser.add_argument(
        "--google-id-token",
        action="store_true",
        help="send Google ID tokens for each service URL (Cloud Run, private services)",
    )
    args = parser.parse_args(argv)
    if args.resume and not args.output:
        parser.error("--resume needs --output")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)

    files = image_files(args.paths)
    if not files:
        parser.error("no image files found")
    try:  # its own spans too when OpenTelemetry's variables ask (common/tracing.py)
        configure_tracing("image-pipeline")
    except TracingError as exc:
        parser.error(str(exc))
    try:
        results = ResultsFile(args.output, args.resume) if args.output else None
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    console = Console()
    if results and results.done:
        before = len(files)
        files = [file for file in files if str(file) not in results.done]
        console.print(f"resuming: {before - len(files)} files already in {args.output}")
    client = PipelineClient(
        args.preprocess_url,
        args.classify_url,
        args.timeout,
        args.token,
        args.google_id_token,
        max(0, args.retries),
    )
    if args.google_id_token:  # no credentials, or IAM says no: one line now, not per photo
        try:
            url = httpx.URL(client.preprocess_url)
            client.http.auth.token(f"{url.scheme}://{url.netloc.decode()}")
        except (GoogleAuthError, PermissionError, ValueError) as exc:
            parser.error(f"--google-id-token: {exc}")
    try:
        outcomes = run_all(client, files, args.mode, max(1, args.concurrency), results, console)
    except KeyboardInterrupt:
        console.print("stopped: rerun with --resume to finish" if results else "stopped")
        return 130
    finally:
        if results:
            results.close()
        shutdown_tracing()
    failed = sum(1 for outcome in outcomes if outcome.error)
    if results:
        console.print(f"{len(outcomes) - failed} classified, {failed} failed: {args.output}")
    else:
        print_table(console, outcomes)
    if client.retried:
        console.print(f"{client.retried} busy answers (429/503) retried after their Retry-After")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
