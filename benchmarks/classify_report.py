"""Turn benchmarks/classify.py's measurements into benchmarks/results.md and two plots (the
targets themselves: classify_targets.py)."""

from __future__ import annotations

from pathlib import Path
from statistics import median

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.classify_targets import (
    _level,
    _raw_best,
    overhead_ms,
    round_ceiling,
    targets,
)
from benchmarks.report import cpu_line, row, table, write


def thread_table(report: dict, concurrency: int) -> list[str]:
    """Server CPU per request by thread at one concurrency, for every BentoML config."""
    entries = [
        e
        for e in report["served"]
        if "thread_cpu_ms_per_request" in _level(e, concurrency) and not e["config"]["naive"]
    ]
    if not entries:
        return []
    groups = sorted(
        {g for e in entries for g in _level(e, concurrency)["thread_cpu_ms_per_request"]}
    )
    stages = ("read", "decode", "model")
    lines = [
        "",
        f"## Server CPU by thread at concurrency {concurrency} (core-ms per request)",
        "",
        "Threads are named at the OS level by the service (`classify-read`, `classify-model`, the",
        "runtime's own pool). The stage columns are wall time from the service's",
        "`stage_duration_seconds` histograms (a batch's model call counted once, shared by its",
        "requests); the last column is CPU outside reading, decoding and the model (runs before",
        "the stage histograms: outside the service's former model and decode CPU counters).",
        "Naive baseline: not split.",
        "",
        row("config", *(f"{s} (wall)" for s in stages), *groups, "outside read+decode+model"),
        row(*["---"] * (len(groups) + len(stages) + 2)),
    ]
    for entry in entries:
        name = entry["config"]["name"]
        level = _level(entry, concurrency)
        threads = level["thread_cpu_ms_per_request"]
        walls = level.get("stage_ms_per_request", {})
        lines.append(
            row(
                name,
                *(_or_dash(walls.get(stage), digits=2) for stage in stages),
                *(f"{threads[g]:.2f}" if g in threads else "-" for g in groups),
                _or_dash(overhead_ms(report, name, concurrency), digits=2),
            )
        )
    return lines


def _or_dash(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_scale(report: dict) -> str:
    """full, quick or smoke (reports written before the scale was recorded: a flag `quick`)."""
    return report.get("scale") or ("quick" if report.get("quick") else "full")


def _scale_warning(report: dict) -> list[str]:
    scale = run_scale(report)
    if scale == "full":
        return []
    return [
        f"**A `--{scale}` run**: "
        + (
            "a handful of requests per step, to check that the benchmark runs; its figures "
            "mean nothing."
            if scale == "smoke"
            else "fewer requests than a full run; its figures are rougher."
        ),
        "",
    ]


def write_report(report: dict, out: Path) -> None:
    """results.json, results.md and the plots (benchmarks/report.py, the one writer)."""
    plots = {"throughput.png": plot_throughput, "latency.png": plot_latency}
    write(out, "results", report, render, plots)


def render(report: dict) -> str:
    sections = (_header, _targets, _rounds, _raw_section, _served_table, _reduced, _preprocess)
    return "\n".join(line for section in sections for line in section(report))


def _header(report: dict) -> list[str]:
    return [
        "# Benchmark results",
        "",
        f"Measured {report['date']} on {report['machine']}; load generator on the same cores.",
        cpu_line(report),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "Rerun: `scripts/ensure-model && .venv/bin/python -m benchmarks.classify` (about 25 minutes;",  # noqa: E501
        "`--quick` for fewer requests, ~8). Timings on a shared 2-core machine are noisy: compare",
        "the ratios within one run, not absolute numbers across runs.",
        "",
        *_scale_warning(report),
        "Where the time goes (profiles), what is left for the targets, container image sizes and",
        "the Cloud Run sizing derived from these figures: [decisions.md](decisions.md).",
        "",
        "![throughput](throughput.png)",
        "",
        "![latency](latency.png)",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]


def _targets(report: dict) -> list[str]:
    return [f"| {t} | {m} | {g} | {'yes' if ok else '**no**'} |" for t, m, g, ok in targets(report)]


def _rounds(report: dict) -> list[str]:
    rounds = report["target_rounds"]
    count = len(next(iter(rounds.values())))
    lines = [
        "",
        "Throughput ratios are the median of interleaved rounds: after the pass over every",
        "concurrency below, the compared configs ran again at c=32, back to back, in each round.",
    ]
    if "round_ceilings" in report:
        lines += [
            "Each round then measured the raw ceilings again: every raw shape of ONNX Runtime",
            "and of TensorFlow at the batch size that was its best in the first raw pass",
            "(TensorFlow's at 2 or more), keeping the round's best. The ratios to raw divide",
            "within a round.",
        ]
    measured = dict(rounds)
    for ceiling_name, ceiling in report.get("round_ceilings", {}).items():
        for shape, figures in ceiling["by_shape"].items():
            measured[f"raw {shape}, batch {ceiling['shapes'][shape]} (images/s)"] = figures
        measured[f"**raw {ceiling_name}: the round's best** (images/s)"] = round_ceiling(ceiling)
    header = ("config (req/s at c=32)", *(f"round {n}" for n in range(1, count + 1)), "median")
    cells = [
        (name, *(f"{f:.1f}" for f in figures), f"{median(figures):.1f}")
        for name, figures in measured.items()
    ]
    return [*lines, "", *table(header, cells)]


def _raw_section(report: dict) -> list[str]:
    raw = report["raw"]
    return [
        "",
        "## Raw model, in-process",
        "",
        "`runtime:T` runs each call on T threads (all cores otherwise; 0: the runtime's "
        "load-adaptive threading, as the service runs it); `runtime:TxS` runs S such calls side "
        "by side. A runtime's ceiling is its best figure in any of these.",
        "",
        *table(
            ("runtime", "batch", "images/s", "latency (ms)", "CPU ms/image"),
            (
                (runtime, batch, *(f"{b[key]:.1f}" for key in RAW_KEYS))
                for runtime, entry in raw.items()
                for batch, b in entry["batches"].items()
            ),
        ),
        "",
        *table(
            ("runtime", "load + first call (s)", "peak RSS (MB)"),
            ((name, f"{e['load_s']:.2f}", f"{e['peak_rss_mb']:.0f}") for name, e in raw.items()),
        ),
        "",
        "Reading + decoding a stored 224x224 image (BMP, as preprocess stores it): "
        f"{report['decode_cpu_ms']:.2f} CPU-ms/request.",
    ]


RAW_KEYS = ("images_per_s", "latency_ms", "cpu_ms_per_image")
SERVED_COLUMNS = (
    "config",
    "concurrency",
    "req/s",
    "p50",
    "p95",
    "p99 (ms)",
    "errors",
    "mean batch",
    "server CPU ms/req",
    "of which outside model + decode",
    "client CPU share",
)


def _served_level(report: dict, name: str, concurrency: str, lv: dict) -> tuple:
    return (
        name,
        concurrency,
        f"{lv['throughput']:.1f}",
        f"{lv['p50_ms']:.0f}",
        f"{lv['p95_ms']:.0f}",
        f"{lv['p99_ms']:.0f}",
        sum(lv["errors"].values()),
        f"{lv['mean_batch']:.1f}" if lv.get("mean_batch") else "-",
        f"{lv['server_cpu_ms_per_request']:.1f}",
        _or_dash(overhead_ms(report, name, int(concurrency))),
        f"{lv['client_cpu_share']:.2f}",
    )


def _served_table(report: dict) -> list[str]:
    served = report["served"]
    return [
        "",
        "## Served /classify (local storage, 32 distinct stored images)",
        "",
        *table(
            SERVED_COLUMNS,
            (
                _served_level(report, entry["config"]["name"], concurrency, lv)
                for entry in served
                for concurrency, lv in entry["levels"].items()
            ),
        ),
        "",
        *table(
            ("config", "start -> /readyz (s)", "peak RSS (MB)"),
            (
                (e["config"]["name"], f"{e['ready_s']:.1f}", f"{e['peak_rss_mb']:.0f}")
                for e in served
            ),
        ),
        *thread_table(report, 32),
    ]


def _reduced(report: dict) -> list[str]:
    header = (
        "runtime",
        "runs in",
        "views",
        "FP32 top-1",
        "reduced top-1",
        "top-1 agreement",
        "largest probability change",
    )
    cells = (
        (
            p["runtime"],
            p["precision"],
            str(p["images"]),
            *(f"{100 * p[key]:.1f}%" for key in ("fp32_top1", "reduced_top1", "top1_agreement")),
            f"{p['max_probability_change']:.3f}",
        )
        for p in report["reduced_precision"].values()
    )
    return [
        "",
        "## Reduced precision",
        "",
        "Top-1 accuracy on the labelled held-out sample (seeded views of the six photos,",
        "scripts/heldout.py) against FP32 (ONNX Runtime), and how far each runtime moves from it.",
        "",
        *table(header, cells),
    ]


def _preprocess(report: dict) -> list[str]:
    pre = report["preprocess"]
    cells = (
        (
            f"{mp} MP",
            f"{lv['bytes']:,}",
            f"{lv['throughput']:.1f}",
            f"{lv['p50_ms']:.0f}",
            lv["errors"],
        )
        for mp, lv in pre["levels"].items()
    )
    return [
        "",
        "## Preprocess (uploads at concurrency 16)",
        "",
        *table(("JPEG", "bytes", "uploads/s", "p50 (ms)", "errors"), cells),
        "",
        f"Preprocess: start -> /readyz {pre['ready_s']:.1f} s, "
        f"peak RSS {pre['peak_rss_mb']:.0f} MB.",
        "",
    ]


def plot_throughput(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for entry in report["served"]:
        levels = entry["levels"]
        xs = [int(c) for c in levels]
        ax.plot(
            xs,
            [lv["throughput"] for lv in levels.values()],
            marker="o",
            label=entry["config"]["name"],
        )
    for runtime, style in (("onnxruntime", "--"), ("tensorflow", ":")):
        ax.axhline(
            _raw_best(report, runtime),
            linestyle=style,
            color="grey",
            label=f"raw {runtime} (best)",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("client concurrency")
    ax.set_ylabel("requests / s")
    cpu = report.get("cpu", {}).get("model", "CPU not recorded")
    ax.set_title(f"/classify throughput ({cpu}, 2 cores, client on the same machine)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(report: dict, path: Path) -> None:
    entries = report["served"]
    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.6), sharey=True)
    for ax, entry in zip(axes, entries, strict=True):
        levels = entry["levels"]
        xs = [int(c) for c in levels]
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            ax.plot(
                xs, [lv[key] for lv in levels.values()], marker=".", label=key.removesuffix("_ms")
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(entry["config"]["name"], fontsize=8)
        ax.set_xlabel("concurrency")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latency (ms)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
