"""The comparison's report: each server's rounds summarized (medians, ratios to the project's
server, latency, cores, answers), rendered to markdown from the JSON alone."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.report import row


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def _median(rounds: list[dict], key: str) -> float | None:
    return statistics.median([e[key] for e in rounds]) if rounds else None


def summarize(rows: dict[str, dict]) -> list[dict]:
    """Per server: the median of its rounds, its ratio to the project's (of the medians, and
    per round), latency over every round's requests, errors, cores, answers."""
    base_rounds = {e["round"]: e.get("rps") for e in rows["bentoml:default"]["rounds"]}
    base = statistics.median([v for v in base_rounds.values() if v] or [float("nan")])
    summary = []
    for entry in rows.values():
        ok = [e for e in entry["rounds"] if "rps" in e]
        rps = [e["rps"] for e in ok]
        latencies = [x for e in ok for x in e["latencies1"]]
        answers = [e["answers"] for e in entry["rounds"] if "answers" in e]
        median_rps = statistics.median(rps) if rps else float("nan")
        summary.append(
            {
                "server": entry["server"],
                "config": entry["config"],
                "rps_median": median_rps,
                "rps_rounds": rps,
                "ratio_to_bentoml": median_rps / base if base else float("nan"),
                "ratio_per_round": [
                    e["rps"] / base_rounds[e["round"]] for e in ok if base_rounds.get(e["round"])
                ],
                "p50_c1_ms": pct(latencies, 50),
                "p99_c1_ms": pct(latencies, 99),
                "p50_c32_ms": _median(ok, "p50_32"),
                "p99_c32_ms": _median(ok, "p99_32"),
                "errors": sum(e["errors32"] + e["errors1"] for e in ok),
                "wrong": sum(e["wrong32"] + e["wrong1"] for e in ok),
                "failed_rounds": [e["failed"] for e in entry["rounds"] if "failed" in e],
                "client_cores": _median(ok, "client_cores"),
                "server_cores": _median(ok, "server_cores"),
                "foreign_cores": _median(ok, "foreign_cores"),
                "foreign_cores_max": max((e["foreign_cores"] for e in ok), default=None),
                "startup_s": _median(ok, "startup_s"),
                **{
                    f"{key}_min": min((a[key] for a in answers), default=None)
                    for key in ("top1_equal", "topk_order_equal")
                },
                **{
                    key: max((a[key] for a in answers), default=None)
                    for key in ("max_top1_conf_diff", "max_topk_conf_diff")
                },
                "max_conf_diff_under_load": max(
                    (e["max_conf_diff_under_load"] for e in ok), default=None
                ),
                "leftover_processes": sum(e.get("leftover_processes", 0) for e in entry["rounds"]),
                "rounds": [
                    {k: v for k, v in e.items() if k != "latencies1"} for e in entry["rounds"]
                ],
            }
        )
    return summary


SERVER_COLUMNS = (
    "server",
    "config",
    "req/s c=32 (median)",
    "rounds min-max",
    "ratio to bentoml (of medians / median per round)",
    "p50 c=1 ms",
    "p99 c=1 ms",
    "p99 c=32 ms",
    "errors",
    "load gen CPU",
    "server cores",
    "server CPU ms/req",
    "foreign cores (max)",
    "top-1 = project",
    "max conf diff: check / under load",
)


def server_row(s: dict, results: dict) -> str:
    rps, ratios = s["rps_rounds"], s.get("ratio_per_round") or [float("nan")]
    ok = [e for e in s["rounds"] if "rps" in e]
    cpu_ms = [e["server_cores"] / e["rps"] * 1000 for e in ok]
    client = s["client_cores"] or 0
    return row(
        s["server"],
        s["config"],
        f"{s['rps_median']:.1f}",
        f"{min(rps):.0f}-{max(rps):.0f}" if rps else "failed",
        f"{s['ratio_to_bentoml']:.2f} / {statistics.median(ratios):.2f}",
        f"{s['p50_c1_ms']:.2f}",
        f"{s['p99_c1_ms']:.2f}",
        f"{(s['p99_c32_ms'] or float('nan')):.0f}",
        s["errors"] + s["wrong"],
        f"{client:.2f} cores ({client / results['cores'] * 100:.1f}%)",
        f"{(s['server_cores'] or 0):.2f}",
        f"{statistics.median(cpu_ms) if cpu_ms else float('nan'):.1f}",
        f"{(s['foreign_cores_max'] or 0):.2f}",
        f"{s['top1_equal_min']}/{results['images']}",
        f"{(s['max_top1_conf_diff'] or 0):.1e} / {(s.get('max_conf_diff_under_load') or 0):.1e}",
    )


def markdown_table(results: dict) -> str:
    """The committed report (results/*.md), from the JSON alone."""
    lines = [
        f"CPU: {results['cpu']} ({results['cores']} cores); model {results['model_tag']};"
        f" {results['rounds']} alternating rounds; c={results['concurrency']} x"
        f" {results['n32']} requests and c=1 x {results['n1']} requests per round;"
        f" load generator: {results['load_generator']}.",
        "",
        row(*SERVER_COLUMNS),
        "|" + "---|" * len(SERVER_COLUMNS),
        *(server_row(s, results) for s in results.get("servers", [])),
    ]
    if results.get("raw_ort"):
        lines += ["", row("raw ORT in-process", "batch", "images/s", "ms per call", "cores")]
        lines.append("|---|---|---|---|---|")
        for r in results["raw_ort"]:
            ms = f"{r['ms_per_call']:.2f}" if r.get("ms_per_call") else ""
            cores = f"{r['cores']:.2f}" if r.get("cores") is not None else ""
            lines.append(row(r["mode"], r["batch"], f"{r['images_per_s']:.0f}", ms, cores))
    return "\n".join(lines) + "\n"


def write(path: Path | None, results: dict) -> None:
    if path is not None:
        report.write(path.parent, path.stem, results, markdown_table)
        print(f"results: {path} (+ .md)")


def preprocess_markdown(results: dict) -> str:
    """compare_preprocess.py's report."""
    lines = [
        f"CPU: {results['cpu']} ({results['cores']} cores); uploads: {results['uploads']}"
        f" photos as {results['upload']}; {results['rounds']} alternating rounds;"
        f" c={results['concurrency']} x {results['n32']} and c=1 x {results['n1']} uploads"
        " per round.",
        "",
        "| server | uploads/s c=32 (median) | rounds min-max | ratio | p50 / p99 c=1 ms"
        " | errors | server cores | server CPU ms/upload | stored bytes = project |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["servers"]:
        lines.append(
            f"| {s['label']} | {s['rps_median']:.1f} | {s['rps_min']:.0f}-{s['rps_max']:.0f}"
            f" | {s['ratio']:.2f} | {s['p50_1']:.2f} / {s['p99_1']:.2f} | {s['errors']}"
            f" | {s['server_cores'] or 0:.2f} | {s['server_ms_per_upload'] or 0:.2f}"
            f" | {s['stored_equal']}/{results['uploads']} |"
        )
    lines += [
        "",
        "| image work alone, in-process | uploads/s | CPU ms per upload |",
        "|---|---|---|",
    ]
    for alone in results["image_work_alone"]:
        lines.append(
            f"| {alone['threads']} thread(s) | {alone['uploads_per_s']:.0f}"
            f" | {alone['cpu_ms_per_upload']:.2f} |"
        )
    return "\n".join(lines) + "\n"
