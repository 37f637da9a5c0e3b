"""Compare a candidate revision of classify with the serving one on a labelled sample, before any
traffic moves to it (docs/deploy.md, "Rolling out a new model"; scripts/rollout runs it).

    python -m client.rollout SAMPLE --current URL --candidate URL --preprocess-url URL \\
        [--labels labels.csv] [--report rollout.json] [--min-agreement 0.95] ...

Each photo of SAMPLE is stored once through /preprocess, then classified by both revisions, one
request at a time, alternating which goes first (both see the same conditions); each revision
gets a few untimed requests first (a revision with no traffic starts cold). The labels file
holds `file,label` rows: an ImageNet class name as /classify answers it, or its index. Writes
the comparison as JSON and exits 1 when the candidate misses a threshold, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from client.pipeline import SharedToken, image_files

WARM_UP = 3  # untimed requests per revision before measuring


class Thresholds(BaseModel):
    """What the candidate must meet to be promoted (the defaults admit the INT8 runtime, whose
    top-1 agrees with FP32 on 96.3-98.5% of the held-out sample: benchmarks/decisions.md, D11)."""

    min_agreement: float = Field(0.95, ge=0, le=1, description="same top-1 as the current")
    max_accuracy_drop: float = Field(0.01, ge=0, le=1, description="top-1 accuracy, absolute")
    max_p99_ratio: float = Field(1.5, gt=0, description="candidate p99 / current p99")
    max_error_rate: float = Field(0.0, ge=0, le=1, description="non-200 answers")


class RevisionFigures(BaseModel):
    model_config = {"protected_namespaces": ()}

    url: str
    model: str | None  # the model tag every answer names
    runtime: str | None
    answered: int
    errors: int
    first_error: str | None
    accuracy: float | None  # None without labels
    p50_ms: float | None
    p99_ms: float | None


class Comparison(BaseModel):
    """The report scripts/rollout promote reads (it refuses one that did not pass)."""

    compared_at: datetime
    candidate_revision: str | None = None  # the Cloud Run revision the candidate's tag named
    photos: int
    labelled: int
    agreement: float | None  # over the photos both answered
    current: RevisionFigures
    candidate: RevisionFigures
    thresholds: Thresholds
    failures: list[str]  # each threshold missed, in words
    passed: bool


def read_labels(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with path.open(newline="") as file:
        return {row[0].strip(): row[1].strip() for row in csv.reader(file) if len(row) >= 2}


def correct(answer: dict, label: str) -> bool:
    return answer["index"] == int(label) if label.isdigit() else answer["label"] == label


class Revision:
    """One revision's answers and latencies."""

    def __init__(self, http: httpx.Client, url: str) -> None:
        self.http, self.url = http, url.rstrip("/")
        self.answers: dict[str, dict] = {}
        self.errors: list[str] = []
        self.seconds: list[float] = []

    def classify(self, gcs_path: str, photo: str | None = None) -> None:
        started = time.perf_counter()
        try:
            response = self.http.post(f"{self.url}/classify", json={"gcs_path": gcs_path})
        except httpx.HTTPError as exc:
            if photo:
                self.errors.append(f"{photo}: {type(exc).__name__}: {exc}")
            return
        elapsed = time.perf_counter() - started
        if photo is None:
            return  # a warm-up request
        if response.status_code != 200:
            self.errors.append(f"{photo}: {response.status_code} {response.text[:200]}")
            return
        self.seconds.append(elapsed)
        self.answers[photo] = response.json()

    def figures(self, labels: dict[str, str]) -> RevisionFigures:
        first = next(iter(self.answers.values()), {})
        labelled = [photo for photo in self.answers if photo in labels]
        latencies = np.array(self.seconds) * 1000
        return RevisionFigures(
            url=self.url,
            model=first.get("model"),
            runtime=first.get("runtime"),
            answered=len(self.answers),
            errors=len(self.errors),
            first_error=self.errors[0] if self.errors else None,
            accuracy=(
                sum(correct(self.answers[p], labels[p]) for p in labelled) / len(labelled)
                if labelled
                else None
            ),
            p50_ms=round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            p99_ms=round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        )


def compare(
    stored: dict[str, str],
    current: Revision,
    candidate: Revision,
    labels: dict[str, str],
    thresholds: Thresholds,
) -> Comparison:
    """Classify each stored photo (name -> gcs_path) on both revisions and judge the candidate."""
    for revision in (current, candidate):
        for gcs_path in list(stored.values())[:WARM_UP]:
            revision.classify(gcs_path)
    for turn, (photo, gcs_path) in enumerate(stored.items()):
        for revision in (current, candidate) if turn % 2 == 0 else (candidate, current):
            revision.classify(gcs_path, photo)
    both = [photo for photo in current.answers if photo in candidate.answers]
    same = sum(current.answers[p]["index"] == candidate.answers[p]["index"] for p in both)
    now, new = current.figures(labels), candidate.figures(labels)
    result = Comparison(
        compared_at=datetime.now(UTC),
        photos=len(stored),
        labelled=sum(photo in labels for photo in stored),
        agreement=same / len(both) if both else None,
        current=now,
        candidate=new,
        thresholds=thresholds,
        failures=[],
        passed=False,
    )
    result.failures = judge(result)
    result.passed = not result.failures
    return result


def judge(result: Comparison) -> list[str]:
    limits, new, now = result.thresholds, result.candidate, result.current
    failures = []
    error_rate = new.errors / result.photos if result.photos else 1.0
    if error_rate > limits.max_error_rate:
        failures.append(f"candidate errors {new.errors}/{result.photos}: {new.first_error}")
    if result.agreement is None or result.agreement < limits.min_agreement:
        failures.append(f"agreement {result.agreement} < {limits.min_agreement}")
    labelled = now.accuracy is not None and new.accuracy is not None
    if labelled and now.accuracy - new.accuracy > limits.max_accuracy_drop:
        failures.append(f"accuracy {new.accuracy:.3f} vs {now.accuracy:.3f} now")
    if now.p99_ms and new.p99_ms and new.p99_ms / now.p99_ms > limits.max_p99_ratio:
        failures.append(f"p99 {new.p99_ms} ms vs {now.p99_ms} ms now")
    return failures


def store_sample(http: httpx.Client, preprocess_url: str, files: list[Path]) -> dict[str, str]:
    """Each photo through /preprocess once: photo name -> its stored gcs_path."""
    stored = {}
    for file in files:
        response = http.post(
            f"{preprocess_url.rstrip('/')}/preprocess",
            files={"image": (file.name, file.read_bytes())},
        )
        if response.status_code != 200:
            raise SystemExit(f"/preprocess refused {file}: {response.status_code} {response.text}")
        stored[file.name] = response.json()["gcs_path"]
    return stored


def print_comparison(result: Comparison, console: Console) -> None:
    table = Table(title=f"{result.photos} photos, {result.labelled} labelled")
    for column in ("", "current", "candidate"):
        table.add_column(column)
    for name in ("url", "model", "runtime", "answered", "errors", "accuracy", "p50_ms", "p99_ms"):
        table.add_row(
            name, str(getattr(result.current, name)), str(getattr(result.candidate, name))
        )
    console.print(table)
    console.print(f"top-1 agreement: {result.agreement}")
    for failure in result.failures:
        console.print(f"[red]refused:[/red] {failure}")
    if result.passed:
        console.print("[green]passed[/green]: the candidate may be promoted")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m client.rollout", description=__doc__)
    parser.add_argument("sample", nargs="+", type=Path, help="photos or folders")
    parser.add_argument("--current", required=True, help="the serving revision's URL")
    parser.add_argument("--candidate", required=True, help="the candidate's tag URL")
    parser.add_argument("--candidate-revision", help="its revision, recorded for promote")
    parser.add_argument("--preprocess-url", required=True)
    parser.add_argument("--labels", type=Path, help="CSV rows: file,label (name or index)")
    parser.add_argument("--report", type=Path, default=Path("rollout-report.json"))
    parser.add_argument("--token-file", type=Path, help="a bearer token (an ID token) to send")
    parser.add_argument("--timeout", type=float, default=60.0)
    for name, field in Thresholds.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, default=field.default, help=field.description)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = image_files(args.sample)
    if not files:
        print("client.rollout: no photos in the sample", file=sys.stderr)
        return 2
    names = [file.name for file in files]
    if len(set(names)) < len(names):
        print("client.rollout: two photos of the sample share a name", file=sys.stderr)
        return 2
    auth = SharedToken(args.token_file.read_text().strip()) if args.token_file else None
    thresholds = Thresholds(**{name: getattr(args, name) for name in Thresholds.model_fields})
    with httpx.Client(timeout=args.timeout, auth=auth) as http:
        stored = store_sample(http, args.preprocess_url, files)
        result = compare(
            stored,
            Revision(http, args.current),
            Revision(http, args.candidate),
            read_labels(args.labels),
            thresholds,
        )
    result.candidate_revision = args.candidate_revision
    args.report.write_text(result.model_dump_json(indent=2))
    print_comparison(result, Console())
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
