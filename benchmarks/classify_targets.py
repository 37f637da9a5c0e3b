"""The classify study's targets, from its measurements alone: the configs compared, the raw
ceilings they divide by, and each target's measured figure, goal and verdict."""

from __future__ import annotations

from statistics import median

from classify.runtime_table import (
    ALL_RUNTIMES,
    BATCHED_BY_DEFAULT,
    DEFAULT_RUNTIME,
    REDUCED_PRECISION_RUNTIMES,
    Runtime,
)


def served_by_default(runtime: str) -> str:
    """The config name of `runtime` as it serves with the default settings."""
    batching = "on" if Runtime(runtime) in BATCHED_BY_DEFAULT else "off"
    return f"{runtime}, batching {batching}"


DEFAULT = served_by_default(DEFAULT_RUNTIME)
NAIVE = "naive FastAPI (brief's design)"  # predict_on_batch: the stronger naive baseline
# the opt-in reduced-precision runtimes (classify-openvino: INT8 by default), compared
# unbatched: BF16 batches by default since benchmarks/batching.md found it within noise of
# unbatched, and the committed run's rounds measured it unbatched
REDUCED = {name: f"{name}, batching off" for name in REDUCED_PRECISION_RUNTIMES}
TF_ON, TF_OFF = "tensorflow, batching on", "tensorflow, batching off"
# the configs whose throughput the targets compare (benchmarks/classify.py runs them in rounds)
COMPARED = (DEFAULT, TF_ON, TF_OFF, *REDUCED.values(), NAIVE)
# The threads that read, decode and run the model: the service's pools and each runtime's own
# threads, which the service names after the runtime.
WORK_THREADS = ("classify-read", "classify-model", *ALL_RUNTIMES)
# the raw ceilings the targets divide by: name -> (runtime, smallest batch size counted);
# benchmarks/classify.py measures them again in every round (`round_ceilings` in results.json)
ORT_CEILING, TF_CEILING = "onnxruntime", "tensorflow, batched"
CEILINGS = {ORT_CEILING: ("onnxruntime", 1), TF_CEILING: ("tensorflow", 2)}


def _served(report: dict) -> dict[str, dict]:
    return {entry["config"]["name"]: entry for entry in report["served"]}


def _level(entry: dict, concurrency: int) -> dict:
    levels = entry["levels"]
    return levels.get(concurrency) or levels[str(concurrency)]


def _raw_best(report: dict, runtime: str, batched: bool = False) -> float:
    """The runtime's ceiling: its best images/s in any raw shape (threads x side-by-side calls)
    and batch size measured; `batched`: over batches of 2 or more only."""
    return max(
        figures["images_per_s"]
        for name, entry in report["raw"].items()
        if name.partition(":")[0] == runtime
        for batch, figures in entry["batches"].items()
        if not batched or int(batch) > 1
    )


def _raw(report: dict, runtime: str, batch: int) -> dict:
    batches = report["raw"][runtime]["batches"]
    return batches.get(batch) or batches[str(batch)]


def round_ratios(report: dict, numerator: str, denominator: str | float) -> list[float]:
    """Per round of `target_rounds`, numerator's req/s at c=32 over denominator's (a config's,
    measured in the same round, or a fixed figure such as a raw ceiling), sorted."""
    rounds = report["target_rounds"]
    return sorted(
        served / (rounds[denominator][i] if isinstance(denominator, str) else denominator)
        for i, served in enumerate(rounds[numerator])
    )


def round_ceiling(ceiling: dict) -> list[float]:
    """A raw ceiling per round: the best of the shapes that round measured (`round_ceilings`)."""
    return [max(shapes) for shapes in zip(*ceiling["by_shape"].values(), strict=True)]


def raw_round_ratios(report: dict, config: str, ceiling: str, best: float) -> list[float]:
    """Per round, config's req/s at c=32 over the raw ceiling measured in the same round
    (`round_ceilings`), sorted; over the run's best raw figure `best` in runs without them."""
    if "round_ceilings" not in report:
        return round_ratios(report, config, best)
    measured = round_ceiling(report["round_ceilings"][ceiling])
    served = report["target_rounds"][config]
    return sorted(s / raw for s, raw in zip(served, measured, strict=True))


def _ratio_cell(ratios: list[float], one_pass: float, unit: str = "") -> str:
    return (
        f"{median(ratios):.2f}{unit} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}; "
        f"one pass {one_pass:.2f}{unit})"
    )


def _raw_ratio_cell(report: dict, ratios: list[float], config: str, best: float) -> str:
    """The paired ratios, and (where rounds measured their own ceiling) the stricter ratio to
    the best raw figure of the whole run, which the rounds ran up to half an hour from."""
    one_pass = _level(_served(report)[config], 32)["throughput"] / best
    if "round_ceilings" not in report:
        return _ratio_cell(ratios, one_pass)
    strict = round_ratios(report, config, best)
    return (
        f"{median(ratios):.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f}; against the run's "
        f"best raw figure {best:.0f} img/s: median {median(strict):.2f}, one pass {one_pass:.2f})"
    )


Target = tuple[str, str, str, bool]  # (target, measured, goal, met)


def targets(report: dict) -> list[Target]:
    """(target, measured, goal, met) rows, all ratios from this one run.

    Throughput ratios are the median of the interleaved rounds at c=32 (`target_rounds`); the
    cell also gives the rounds' range and the ratio in the single pass over every concurrency.
    """
    return [*_throughput_targets(report), *_service_targets(report), *_reduced_targets(report)]


def _one_pass(report: dict, config: str) -> float:
    """`config`'s req/s at c=32 in the pass over every concurrency."""
    return _level(_served(report)[config], 32)["throughput"]


def _throughput_targets(report: dict) -> list[Target]:
    vs_naive = round_ratios(report, DEFAULT, NAIVE)
    ort_raw = _raw_best(report, "onnxruntime")
    vs_raw = raw_round_ratios(report, DEFAULT, ORT_CEILING, ort_raw)
    tf_raw = _raw_best(report, "tensorflow", batched=True)
    tf_vs_raw = raw_round_ratios(report, TF_ON, TF_CEILING, tf_raw)
    tf_on_off = round_ratios(report, TF_ON, TF_OFF)
    overhead = overhead_ms(report, DEFAULT, 32) or float("nan")
    one_pass_vs_naive = _one_pass(report, DEFAULT) / _one_pass(report, NAIVE)
    return [
        (
            "default runtime at c=32 vs naive baseline",
            _ratio_cell(vs_naive, one_pass_vs_naive, "x"),
            ">= 2.5x (floor 2x)",
            median(vs_naive) >= 2.5,
        ),
        (
            "default runtime at c=32 vs its raw best",
            _raw_ratio_cell(report, vs_raw, DEFAULT, ort_raw),
            ">= 0.70",
            median(vs_raw) >= 0.70,
        ),
        (
            "server CPU outside model + decode (c=32)",
            f"{overhead:.2f} core-ms/req",
            "<= 1.5",
            overhead <= 1.5,
        ),
        (
            "TensorFlow batched at c=32 vs raw batched best",
            _raw_ratio_cell(report, tf_vs_raw, TF_ON, tf_raw),
            ">= 0.85",
            median(tf_vs_raw) >= 0.85,
        ),
        (
            "TensorFlow batching on vs off at c=32",
            _ratio_cell(tf_on_off, _one_pass(report, TF_ON) / _one_pass(report, TF_OFF), "x"),
            "> 1",
            median(tf_on_off) > 1,
        ),
    ]


def _service_targets(report: dict) -> list[Target]:
    default = _served(report)[DEFAULT]
    c1 = _level(default, 1)["p50_ms"]
    raw1 = _raw(report, "onnxruntime", 1)["latency_ms"]
    errors = sum(
        sum(level["errors"].values())
        for entry in report["served"]
        if not entry["config"]["naive"]
        for level in entry["levels"].values()
    )
    return [
        ("p50 at c=1 minus raw batch-1 latency", f"{c1 - raw1:.1f} ms", "<= 5 ms", c1 - raw1 <= 5),
        (
            "errors at every concurrency up to 64 (all served configs)",
            str(errors),
            "0",
            errors == 0,
        ),
        (
            "classify peak RSS (default runtime)",
            f"{default['peak_rss_mb']:.0f} MB",
            "<= 500 MB",
            default["peak_rss_mb"] <= 500,
        ),
        (
            "classify start -> ready (default runtime)",
            f"{default['ready_s']:.1f} s",
            "<= 5 s",
            default["ready_s"] <= 5,
        ),
    ]


def _reduced_targets(report: dict) -> list[Target]:
    rows: list[Target] = []
    naive32 = _one_pass(report, NAIVE)
    for runtime, config in REDUCED.items():
        reduced_vs_naive = round_ratios(report, config, NAIVE)
        precision = report["reduced_precision"][runtime]
        change = precision["reduced_top1"] - precision["fp32_top1"]
        rows += [
            (
                f"opt-in {runtime} at c=32 vs naive baseline",
                _ratio_cell(reduced_vs_naive, _one_pass(report, config) / naive32, "x"),
                ">= 4x",
                median(reduced_vs_naive) >= 4,
            ),
            (
                f"opt-in {runtime} top-1 on the labelled held-out sample vs FP32",
                f"{100 * precision['reduced_top1']:.1f}% vs {100 * precision['fp32_top1']:.1f}% "
                f"({100 * change:+.1f} points)",
                "within 1 point",
                abs(change) <= 0.01,
            ),
        ]
    return rows


def overhead_ms(report: dict, name: str, concurrency: int) -> float | None:
    """Server CPU per request outside reading, decoding and the model, measured per thread.

    The work threads are named at the OS level by the service (common/threads.py): the readers
    (read, and decode when batched), the model callers (decode and model when unbatched) and
    the runtime's own pools (named after it). What is left is HTTP, routing, validation,
    batching and hand-offs. Runs recorded before the stage histograms counted model and decode
    CPU in the service instead (`model_cpu_ms_per_request`); their figures keep that reading.
    None for the naive baseline, whose threads are not named.
    """
    entry = _served(report)[name]
    level = _level(entry, concurrency)
    threads = level.get("thread_cpu_ms_per_request")
    if threads is None or entry["config"]["naive"]:
        return None
    if "model_cpu_ms_per_request" in level:  # a run with the service's former CPU counters
        runtime_ms = sum(threads.get(runtime, 0.0) for runtime in ALL_RUNTIMES)
        counted = level["model_cpu_ms_per_request"] + level["decode_cpu_ms_per_request"]
        return level["server_cpu_ms_per_request"] - counted - runtime_ms
    work = sum(threads.get(group, 0.0) for group in WORK_THREADS)
    return level["server_cpu_ms_per_request"] - work
