"""scripts/rollout against a recording gcloud whose service description routes the "stable" and
"candidate" tags to real local services: classify on ONNX Runtime stands in for the serving
revision, classify on OpenVINO (or a misconfigured one) for the candidate, with a real
preprocess in front. compare measures them, promote and rollback move the (recorded) traffic."""

from __future__ import annotations

import csv
import json
import os
import random
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import PHOTOS, REPO, Server, service_env
from PIL import Image

from client.rollout import Comparison, RevisionFigures, Thresholds, judge
from scripts.heldout import PHOTO_LABELS, random_view

STUB = """#!/usr/bin/env bash
printf '%s' "$(basename "$0")" >> "$RECORD"
printf ' %q' "$@" >> "$RECORD"
printf '\\n' >> "$RECORD"
case "$*" in
  "run services describe classify "*"--format json") cat "$STUB_SERVICE_JSON" ;;
  "run services describe preprocess "*) echo "$STUB_PREPROCESS_URL" ;;
  "auth print-identity-token") echo local-id-token ;;
esac
"""
VIEWS_PER_PHOTO = 8


def service_json(stable_url: str, candidate_url: str) -> dict:
    """What `gcloud run services describe classify --format json` says mid-rollout."""
    return {
        "status": {
            "url": stable_url,
            "latestReadyRevisionName": "classify-00002-new",
            "traffic": [
                {
                    "revisionName": "classify-00001-old",
                    "percent": 100,
                    "tag": "stable",
                    "url": stable_url,
                },
                {"revisionName": "classify-00002-new", "tag": "candidate", "url": candidate_url},
            ],
        }
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    """The six photos and seeded views of each (scripts/heldout.py), and their labels file."""
    folder = tmp_path_factory.mktemp("sample")
    rng, rows = random.Random(37), []
    for stem, label in PHOTO_LABELS.items():
        (path,) = PHOTOS.glob(f"{stem}.*")
        photo = Image.open(path).convert("RGB")
        photo.save(folder / f"{stem}.jpg", quality=92)
        rows.append((f"{stem}.jpg", label))
        for n in range(VIEWS_PER_PHOTO):
            Image.fromarray(random_view(photo, rng)).save(folder / f"{stem}-{n}.png")
            rows.append((f"{stem}-{n}.png", label))
    labels = tmp_path_factory.mktemp("labels") / "labels.csv"
    with labels.open("w", newline="") as file:
        csv.writer(file).writerows(rows)
    return folder, labels


@pytest.fixture(scope="module")
def revisions(bentoml_home, tmp_path_factory):
    """preprocess, classify on ONNX Runtime (stable), on OpenVINO FP32 (candidate), and one
    that cannot read the bucket (a candidate deployed with the wrong storage)."""
    logs = tmp_path_factory.mktemp("rollout-logs")
    storage = {"STORAGE_DIR": str(tmp_path_factory.mktemp("storage"))}
    elsewhere = {"STORAGE_DIR": str(tmp_path_factory.mktemp("elsewhere"))}
    servers = {
        "preprocess": Server(
            "preprocess.service:Preprocess",
            service_env(bentoml_home, storage),
            logs / "preprocess.log",
        ),
        "stable": Server(
            "service:Classify", service_env(bentoml_home, storage), logs / "stable.log"
        ),
        "candidate": Server(
            "service:Classify",
            service_env(bentoml_home, storage, CLASSIFY_RUNTIME="openvino"),
            logs / "candidate.log",
        ),
        "misconfigured": Server(
            "service:Classify", service_env(bentoml_home, elsewhere), logs / "misconfigured.log"
        ),
    }
    for server in servers.values():
        server.start()
    try:
        yield {name: server.wait_ready() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def rollout(tmp_path: Path, revisions, candidate: str, *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text(STUB)
    (bin_dir / "gcloud").chmod(0o755)
    described = tmp_path / "service.json"
    described.write_text(
        json.dumps(service_json(revisions["stable"].url, revisions[candidate].url))
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(tmp_path / "record.txt"),
        "STUB_SERVICE_JSON": str(described),
        "STUB_PREPROCESS_URL": revisions["preprocess"].url,
        "PROJECT_ID": "demo-project",
        "REGION": "europe-west1",
        "BUCKET": "demo-images",
    }
    return subprocess.run(
        [str(REPO / "scripts" / "rollout"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )


def traffic_moves(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "record.txt").read_text().splitlines()
    return [shlex.split(line)[5:] for line in lines if "update-traffic" in line]


def test_a_candidate_that_agrees_is_compared_promoted_in_steps_and_rolled_back(
    revisions, sample, tmp_path
):
    folder, labels = sample
    # p99 on a shared CI machine is noise at this sample size: the p99 rule is held in judge()
    compared = rollout(
        tmp_path,
        revisions,
        "candidate",
        "compare",
        str(folder),
        "--labels",
        str(labels),
        "--max-p99-ratio",
        "10",
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    report = Comparison.model_validate_json((tmp_path / "rollout-report.json").read_text())
    assert report.passed and report.photos == 6 * (VIEWS_PER_PHOTO + 1) == report.labelled
    assert report.candidate_revision == "classify-00002-new"  # what promote checks
    assert report.current.runtime == "onnxruntime" and report.candidate.runtime == "openvino"
    assert report.current.model != report.candidate.model  # each answer names its model
    assert report.agreement >= 0.95 and report.current.errors == report.candidate.errors == 0
    assert report.current.accuracy >= 0.8 and report.candidate.accuracy >= 0.8
    assert report.current.p50_ms > 0 and report.candidate.p99_ms >= report.candidate.p50_ms
    assert "passed" in compared.stdout

    assert rollout(tmp_path, revisions, "candidate", "promote", "--percent", "10").returncode == 0
    assert rollout(tmp_path, revisions, "candidate", "promote").returncode == 0
    assert rollout(tmp_path, revisions, "candidate", "rollback").returncode == 0
    where = ["--region", "europe-west1", "--project", "demo-project"]
    assert traffic_moves(tmp_path) == [
        [*where, "--to-tags", "candidate=10"],
        [*where, "--to-latest"],  # the candidate is the latest revision: later deploys follow
        [*where, "--to-tags", "stable=100"],
    ]


def test_a_candidate_that_fails_is_refused_and_cannot_be_promoted(revisions, sample, tmp_path):
    folder, labels = sample
    compared = rollout(
        tmp_path, revisions, "misconfigured", "compare", str(folder), "--labels", str(labels)
    )
    assert compared.returncode == 1, compared.stdout + compared.stderr
    report = Comparison.model_validate_json((tmp_path / "rollout-report.json").read_text())
    assert not report.passed and report.candidate.errors == report.photos
    assert "outside_storage" in report.candidate.first_error and "refused" in compared.stdout
    promoted = rollout(tmp_path, revisions, "misconfigured", "promote")
    assert promoted.returncode == 1 and "comparison failed" in promoted.stderr
    # a passing report of another revision (an earlier candidate under the same tag, whose
    # URL was the same) does not promote this one
    passing = report.model_copy(
        update={"passed": True, "failures": [], "candidate_revision": "classify-00001-earlier"}
    )
    (tmp_path / "rollout-report.json").write_text(passing.model_dump_json())
    promoted = rollout(tmp_path, revisions, "misconfigured", "promote")
    assert promoted.returncode == 1 and "classify-00001-earlier" in promoted.stderr
    assert traffic_moves(tmp_path) == []
    forced = rollout(tmp_path, revisions, "misconfigured", "promote", "--force", "--percent", "5")
    assert forced.returncode == 0 and traffic_moves(tmp_path)[-1][-1] == "candidate=5"


def _figures(**values) -> RevisionFigures:
    base = dict(
        url="u",
        model="m",
        runtime="r",
        answered=100,
        errors=0,
        first_error=None,
        accuracy=0.9,
        p50_ms=10.0,
        p99_ms=20.0,
    )
    return RevisionFigures(**{**base, **values})


@pytest.mark.parametrize(
    ("agreement", "candidate", "missed"),
    [
        (0.99, {}, None),
        (0.90, {}, "agreement"),
        (0.99, {"accuracy": 0.85}, "accuracy"),
        (0.99, {"p99_ms": 31.0}, "p99"),
        (0.99, {"errors": 1, "first_error": "x: 503"}, "errors"),
        (None, {"answered": 0}, "agreement"),
    ],
)
def test_each_threshold_refuses_on_its_own(agreement, candidate, missed):
    result = Comparison(
        compared_at="2026-12-06T00:00:00Z",
        photos=100,
        labelled=100,
        agreement=agreement,
        current=_figures(),
        candidate=_figures(**candidate),
        thresholds=Thresholds(),
        failures=[],
        passed=False,
    )
    failures = judge(result)
    assert (failures == []) if missed is None else (len(failures) == 1 and missed in failures[0])
