"""The benchmark itself runs end to end (`benchmarks/classify.py --smoke`, ~3 minutes).

A full run takes ~25 minutes of both cores and is run by hand (docs/performance.md). The smoke
run does every step once with a handful of requests: every runtime raw, every served config the
targets compare (real `bentoml serve` processes, batched and not, and the naive FastAPI app) at
concurrency 1 and 32, the target rounds, preprocess, the held-out accuracy on a tenth of the
views, and the report. Its figures are not checked against any target: only that each step
measured something, without errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.classify_raw import SMOKE_RAW_RUNTIMES
from benchmarks.classify_targets import COMPARED, round_ceiling, targets
from classify.runtime_table import REDUCED_PRECISION_RUNTIMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path, model_assets: Path):
    out = tmp_path_factory.mktemp("benchmark")
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    return out, smoke_study("classify", out, env, timeout_s=720)


def test_every_raw_shape_is_measured(smoke_run):
    _, report = smoke_run
    assert set(report["raw"]) == set(SMOKE_RAW_RUNTIMES)
    for shape, entry in report["raw"].items():
        assert entry["load_s"] > 0, shape
        for batch, figures in entry["batches"].items():
            assert figures["images_per_s"] > 0, (shape, batch)


def test_every_served_config_answers_without_errors(smoke_run):
    _, report = smoke_run
    served = {entry["config"]["name"]: entry for entry in report["served"]}
    assert set(served) == set(COMPARED)
    for name, entry in served.items():
        assert entry["ready_s"] > 0 and entry["peak_rss_mb"] > 0, name
        assert set(entry["levels"]) == {"1", "32"}, name
        for concurrency, level in entry["levels"].items():
            assert level["errors"] == {}, (name, concurrency)
            assert level["throughput"] > 0, (name, concurrency)


def test_batched_configs_form_batches_and_name_their_threads(smoke_run):
    """32 concurrent clients make real batches; the per-thread split finds the service's threads."""
    _, report = smoke_run
    for entry in report["served"]:
        config, level = entry["config"], entry["levels"]["32"]
        if config["naive"]:
            continue
        threads = level["thread_cpu_ms_per_request"]
        assert threads.get("event loop", 0) > 0, config["name"]
        if config["batching"]:
            assert level["mean_batch"] > 1, config["name"]
        else:
            assert level["mean_batch"] is None, config["name"]
        # where the model's work shows up: ONNX Runtime computes on the calling threads (its
        # helper thread runs only for lone calls); TensorFlow and OpenVINO on pools of their own,
        # named after the runtime, while the caller waits (too little CPU to count reliably in a
        # smoke run: /proc counts in 10 ms ticks)
        worker = "classify-model" if config["runtime"] == "onnxruntime" else config["runtime"]
        assert threads.get(worker, 0) > 0, config["name"]


def test_report_has_every_target_round_and_accuracy(smoke_run):
    out, report = smoke_run
    assert report["scale"] == "smoke"
    assert {
        name: len(figures) for name, figures in report["target_rounds"].items()
    } == dict.fromkeys(COMPARED, 1)
    ceilings = report["round_ceilings"]  # raw ceilings measured again in each round
    assert set(ceilings) == {"onnxruntime", "tensorflow, batched"}
    assert min(ceilings["tensorflow, batched"]["shapes"].values()) >= 2
    for ceiling in ceilings.values():
        assert set(ceiling["by_shape"]) == set(ceiling["shapes"])
        assert all(len(figures) == 1 for figures in ceiling["by_shape"].values())
        assert round_ceiling(ceiling)[0] > 0
    assert set(report["reduced_precision"]) == set(REDUCED_PRECISION_RUNTIMES)
    for accuracy in report["reduced_precision"].values():
        assert accuracy["top1_agreement"] > 0.9
    assert len(report["preprocess"]["levels"]) == 3
    assert all(level["errors"] == 0 for level in report["preprocess"]["levels"].values())
    rows = targets(report)
    assert len(rows) == 13 and not any("nan" in measured for _, measured, _, _ in rows)
    results_md = (out / "results.md").read_text()
    assert "A `--smoke` run" in results_md
    assert report["cpu"]["model"] and f"CPU: {report['cpu']['model']}, with" in results_md
    for plot in ("throughput.png", "latency.png"):
        assert (out / plot).stat().st_size > 10_000
