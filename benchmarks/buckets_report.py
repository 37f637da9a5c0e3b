"""benchmarks/buckets.md from buckets.json: the targets, where the time goes, photos/s and CPU
per photo of each path, and the cost per million photos on Cloud Run."""

from __future__ import annotations

from benchmarks.report import cpu_line, table

# Cloud Run list prices, Tier 1 (cloud.google.com/run/pricing, read 2026-12-04): jobs (and
# instance-based services) per vCPU-second and GiB-second; request-based services more per
# vCPU-second, plus a fee per request.
PRICES = {
    "job_vcpu_second": 0.000018,
    "job_gib_second": 0.000002,
    "request_vcpu_second": 0.000024,
    "request_gib_second": 0.0000025,
    "per_request": 0.40 / 1e6,
}
PRICES_READ = "2026-12-04"
TARGET_HTTP_RATIO = 2.0  # 1 MP: the job's photos/s over the HTTP path's
TARGET_LIMIT_SHARE = 0.85  # 1 MP: the job's photos/s over the in-process limit


def best_job(figures: dict, where: str, kind: str) -> dict:
    return max(figures[where][kind].values(), key=lambda r: r["photos_per_s"])


def targets(figures: dict) -> list[tuple[str, str, str, bool]]:
    kind = "1 MP"
    job = best_job(figures, "job_local", kind)
    http = figures["http"][kind]
    ratio = job["photos_per_s"] / http["photos_per_s"]
    share = job["photos_per_s"] / figures["limit"][kind]["photos_per_s"]
    agreements = figures["agreement"].values()
    equal = all(
        a["same_label"] == a["photos"] and a["max_confidence_diff"] < 1e-5 for a in agreements
    )
    per_task_mb = max(
        r["peak_rss_mb"] / int(r["tasks"])
        for where in ("job_local", "job_gcs")
        for runs in figures[where].values()
        for r in runs.values()
    )
    agreement_text = ", ".join(
        f"{k}: {a['same_label']}/{a['photos']} labels, max diff {a['max_confidence_diff']:.1e}"
        for k, a in figures["agreement"].items()
    )
    errors = http["errors"] + sum(
        r["errors"]
        for where in ("job_local", "job_gcs")
        for runs in figures[where].values()
        for r in runs.values()
    )
    ceiling = figures["limit"][kind]["photos_per_s"] / http["photos_per_s"]
    return [
        (
            "1 MP: job / HTTP path (photos/s)",
            f"{ratio:.2f}x (the in-process limit itself: {ceiling:.2f}x)",
            f">= {TARGET_HTTP_RATIO}x",
            ratio >= TARGET_HTTP_RATIO,
        ),
        (
            "1 MP: job / in-process limit",
            f"{share:.2f}",
            f">= {TARGET_LIMIT_SHARE}",
            share >= TARGET_LIMIT_SHARE,
        ),
        ("answers equal the HTTP path's", agreement_text, "all equal", equal),
        (
            "job peak RSS per task",
            f"{per_task_mb:.0f} MB",
            "<= 2048 MiB (its --memory)",
            per_task_mb <= 2048,
        ),
        ("errors, every path and size", str(errors), "0", errors == 0),
    ]


def steady_ms(figures: dict, run: dict) -> float:
    """A job run's core-ms per photo without its tasks' start."""
    start = figures["startup_cpu_s"] * int(run["tasks"])
    return 1000 * max(0.0, run["cpu_s"] - start) / max(1, run["photos"])


def render(figures: dict) -> str:
    sections = (_targets_section, _where_time_goes, _throughput_section, _cost_section)
    return "\n".join(line for section in sections for line in section(figures)) + "\n"


def _targets_section(figures: dict) -> list[str]:
    return [
        "# Photos in a bucket: the job against the HTTP path",
        "",
        f"Measured {figures['date']}, {figures['cores']} cores; everything on the same cores "
        "(`python -m benchmarks.buckets`).",
        cpu_line(figures),
        "",
        "## Targets",
        "",
        *table(
            ("what", "measured", "target", "met"),
            ((w, m, t, "yes" if met else "**no**") for w, m, t, met in targets(figures)),
        ),
    ]


def _where_time_goes(figures: dict, kind: str = "1 MP") -> list[str]:
    http, limit = figures["http"][kind], figures["limit"][kind]
    limit_ms = limit["decode_cpu_ms"] + limit["model_cpu_ms"]
    return [
        "",
        f"Where the time goes ({kind}): the HTTP path spends {http['core_ms_per_photo']:.1f} "
        f"core-ms per photo, the in-process limit {limit_ms:.1f} (decode "
        f"{limit['decode_cpu_ms']:.1f} + model {limit['model_cpu_ms']:.1f}): the HTTP path does "
        "the same decode once (in preprocess; classify reads the stored 224x224 BMP) and the "
        f"same model call, plus {http['core_ms_per_photo'] - limit_ms:.1f} core-ms of HTTP, "
        f"the stored BMP and the client ({http['client_core_ms_per_photo']:.1f}). On these "
        f"cores no in-process path can pass {limit['photos_per_s'] / http['photos_per_s']:.2f}x "
        "the HTTP path's photos/s, whatever it does around the model; the job's own cost above "
        "the limit is the 'without the start' column minus the limit's.",
    ]


THROUGHPUT_COLUMNS = (
    "path",
    "photos",
    "photos/s",
    "photos/s, wall",
    "core-ms/photo",
    "without the start",
    "peak RSS MB",
    "errors",
)


JOB_RUNS = (("job_local", "job, local folder"), ("job_gcs", "job, GCS emulator"))


def _throughput_rows(figures: dict, kind: str) -> list[tuple]:
    limit, http = figures["limit"][kind], figures["http"][kind]
    limit_ms = limit["decode_cpu_ms"] + limit["model_cpu_ms"]
    rows: list[tuple] = [
        (
            f"{kind}: in-process limit (decode {limit['decode_cpu_ms']:.1f} + model "
            f"{limit['model_cpu_ms']:.1f} CPU-ms)",
            "",
            f"{limit['photos_per_s']:.1f}",
            "",
            f"{limit_ms:.1f}",
            *[""] * 3,
        )
    ]
    for where, label in JOB_RUNS:
        for tasks, r in figures[where][kind].items():
            rows.append(
                (
                    f"{kind}: {label}, {tasks} task{'s' if tasks != '1' else ''}",
                    r["photos"],
                    *(f"{value:.1f}" for value in (r["photos_per_s"], r["photos_per_s_wall"])),
                    f"{r['core_ms_per_photo']:.1f}",
                    f"{steady_ms(figures, r):.1f}",
                    f"{r['peak_rss_mb']:.0f}",
                    r["errors"],
                )
            )
    rows.append(
        (
            f"{kind}: HTTP path (client, preprocess, classify)",
            http["photos"],
            f"{http['photos_per_s']:.1f}",
            "",
            f"{http['core_ms_per_photo']:.1f} (client {http['client_core_ms_per_photo']:.1f})",
            "",
            f"{http['peak_rss_mb']:.0f}",
            http["errors"],
        )
    )
    return rows


def _throughput_section(figures: dict) -> list[str]:
    return [
        "",
        "## Photos/s and CPU per photo",
        "",
        "The job's photos/s are from its first listing to its last result (`duration_s` of its "
        "manifests); with the model load and start of its processes: the wall column. Its "
        "core-ms per photo count everything its processes spent; the start alone (interpreter, "
        f"imports, model load) is {figures['startup_cpu_s']:.2f} CPU-s per task, and the "
        "column after it spreads that out of the figure (what a long run converges to).",
        "",
        *table(
            THROUGHPUT_COLUMNS,
            (cells for kind in figures["limit"] for cells in _throughput_rows(figures, kind)),
        ),
    ]


def _cost_section(figures: dict) -> list[str]:
    costs = ((kind, figures["cost"][kind]) for kind in figures["limit"])
    return [
        "",
        "## Cost per million photos on Cloud Run",
        "",
        f"List prices, Tier 1, read {PRICES_READ} (cloud.google.com/run/pricing): jobs "
        f"${PRICES['job_vcpu_second']:.6f}/vCPU-s and ${PRICES['job_gib_second']:.6f}/GiB-s, "
        f"billed for the task's whole time (2 vCPU, 2 GiB here); services request-based, "
        f"${PRICES['request_vcpu_second']:.6f}/vCPU-s, ${PRICES['request_gib_second']:.7f}/GiB-s "
        f"and ${PRICES['per_request'] * 1e6:.2f} per million requests, priced on the CPU both "
        "services spent per photo (the client's CPU excluded). Free tiers ignored.",
        "",
        *table(
            ("photos", "job (best local)", "HTTP path", "HTTP / job"),
            (
                (kind, f"${c['job']:.2f}", f"${c['http']:.2f}", f"{c['http'] / c['job']:.1f}x")
                for kind, c in costs
            ),
        ),
    ]
