"""Helpers of the bucket-path tests: a `classify-bucket` task as Cloud Run runs it, its manifest,
and the two stores (a bucket of the GCS emulator, a local folder) seen from outside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TEST_BUCKET
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from classify.results import ClassificationResult

# Root reads every file whatever its mode; without these two capabilities it is refused as any
# user is (file modes apply), while keeping its own files (the repository, the model store).
AS_AN_ORDINARY_READER = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def task(
    target: str,
    env: dict[str, str],
    *args: str,
    wrapper: tuple[str, ...] = (),
    **task_env: str,
) -> subprocess.Popen:
    command = [
        *wrapper,
        sys.executable,
        "-m",
        "classify.bucket",
        target,
        "--batch-size",
        "4",
        *args,
    ]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env={**env, **task_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(target: str, env: dict[str, str], out: Path) -> subprocess.CompletedProcess:
    """`classify-bucket TARGET --collect OUT`, finished."""
    return subprocess.run(
        [sys.executable, "-m", "classify.bucket", target, "--collect", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def manifest_of(process: subprocess.Popen) -> tuple[int, dict]:
    _, err = process.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert lines, f"no manifest: exit {process.returncode}"
    try:
        return process.returncode, json.loads(lines[-1])
    except ValueError:
        raise AssertionError(f"no manifest (exit {process.returncode}): {err[-2000:]}") from None


class GcsBucket:
    def __init__(self, url: str) -> None:
        client = gcs.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
        )
        self.bucket = client.bucket(TEST_BUCKET)

    def put(self, name: str, data: bytes) -> None:
        self.bucket.blob(name).upload_from_string(data)

    def results(self) -> dict[str, tuple[ClassificationResult, int]]:
        found = {}
        for blob in self.bucket.list_blobs(prefix="results/"):
            if blob.name.endswith(".json"):
                data = blob.download_as_bytes()
                found[blob.name] = (ClassificationResult.model_validate_json(data), blob.generation)
        return found

    def manifests(self) -> list[str]:
        return sorted(b.name for b in self.bucket.list_blobs(prefix="results/_tasks/"))

    def count(self, prefix: str) -> int:
        return sum(1 for _ in self.bucket.list_blobs(prefix=prefix))

    def result_names(self) -> list[str]:
        return [
            b.name for b in self.bucket.list_blobs(prefix="results/") if b.name.endswith(".json")
        ]


class LocalFolder:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def results(self) -> dict[str, tuple[ClassificationResult, int]]:
        return {
            path.relative_to(self.root).as_posix(): (
                ClassificationResult.model_validate_json(path.read_bytes()),
                path.stat().st_mtime_ns,
            )
            for path in (self.root / "results").rglob("*.json")
        }

    def manifests(self) -> list[str]:
        return sorted(p.name for p in (self.root / "results" / "_tasks").glob("*"))

    def count(self, prefix: str) -> int:
        return sum(1 for _ in (self.root / prefix).rglob("*.json"))

    def result_names(self) -> list[str]:
        return [
            p.relative_to(self.root).as_posix() for p in (self.root / "results").rglob("*.json")
        ]
