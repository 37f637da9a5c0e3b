"""pipeline.md and its plot from pipeline.json (benchmarks/pipeline.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.report import table, write

# Prices, service shapes and sizes the benchmark measures and this report prices (the
# benchmark imports them from here: one direction, no cycle).
# Cloud Run list prices, Tier 1 regions, request-based billing (CPU only during requests), as
# published at cloud.google.com/run/pricing; read 2026-12-01.
PRICES = {"vcpu_second": 0.000024, "gib_second": 0.0000025, "per_request": 0.40 / 1e6}

PRICES_NOTE = (
    f"Cloud Run list prices, Tier 1, request-based billing: ${PRICES['vcpu_second']:.6f} per "
    f"vCPU-second, ${PRICES['gib_second']:.7f} per GiB-second, "
    f"${PRICES['per_request'] * 1e6:.2f} per million requests (read 2026-12-01; free tier ignored)"
)

# (vCPU, GiB) per service, as scripts/deploy sizes ours; the brief's design is priced on the
# same shapes, so that the ratio is one of CPU per photo.
SHAPES = {"preprocess": (1, 2.0), "classify": (2, 2.0)}

SIZES = {"224 px": 224 * 224 / 1e6, "0.3 MP": 0.3, "1 MP": 1.0, "3 MP": 3.0, "12 MP": 12.0}

TARGET_CONCURRENCY = 16  # the deployed concurrency


def cost_per_million(core_ms: dict[str, float]) -> dict[str, float]:
    """USD per million photos on Cloud Run, instances busy: each service's vCPU-seconds, its
    memory for the same instance time, and two requests per photo."""
    total = 2 * PRICES["per_request"] * 1e6
    breakdown = {}
    for service, (vcpus, gib) in SHAPES.items():
        cpu_s = core_ms[service] / 1000 * 1e6  # per million photos
        instance_s = cpu_s / vcpus
        breakdown[service] = cpu_s * PRICES["vcpu_second"] + instance_s * gib * PRICES["gib_second"]
        total += breakdown[service]
    return {"total": total, **breakdown}


SERVERS = ("preprocess", "classify")
TARGETS = (
    # (what, photo kind, our stack, the other stack, goal, measurement)
    ("/preprocess, 12 MP: ours / brief's design", "12 MP", "ours", "brief", 3.0, "preprocess"),
    ("/preprocess, 12 MP: ours / today's code", "12 MP", "ours", "today", 4.0, "preprocess"),
    ("/preprocess, 1 MP: ours / brief's design", "1 MP", "ours", "brief", 2.0, "preprocess"),
    ("pipeline, 12 MP: ours / brief's design", "12 MP", "ours", "brief", 3.0, "pipeline"),
    ("pipeline, 224 px: ours / today's code", "224 px", "ours", "today", 1.0, "pipeline"),
    (
        "pipeline, 224 px: server CPU per photo, today's / ours",
        "224 px",
        "today",
        "ours",
        1.0,
        "cpu",
    ),
)
# The code before reduced-scale decoding (`baseline_ref`): its rows render for the runs that
# measured it (the committed one); it is no longer rerun.
RETIRED_STACK = "today"


AGREEMENT_GOAL = 0.98  # reduced-scale decoding: top-1 agreement with a full decode
ACCURACY_DROP_GOAL = 0.5  # and top-1 accuracy lower by at most this many points


def round_value(measured: dict, source: str, stack: str, kind: str) -> float:
    if source == "preprocess":
        return measured["preprocess"][stack][kind]["uploads_per_s"]
    level = measured["pipeline"][stack][kind]
    if source == "pipeline":
        return level["photos_per_s"]
    return 1 / sum(level["core_ms_per_photo"][service] for service in SERVERS)


def round_ratios(report: dict, source: str, kind: str, ours: str, other: str) -> list[float]:
    """The ratio within each target round (both stacks measured minutes apart at most)."""
    return [
        round_value(measured, source, ours, kind) / round_value(measured, source, other, kind)
        for measured in report["rounds"]
    ]


def best_rate(report: dict, stack: str, kind: str) -> float:
    return max(level["photos_per_s"] for level in report["stacks"][stack]["levels"][kind])


def at_concurrency(report: dict, stack: str, kind: str, concurrency: int) -> dict:
    levels = report["stacks"][stack]["levels"][kind]
    return next((lv for lv in levels if lv["concurrency"] == concurrency), levels[-1])


def target_rows(report: dict) -> list[str]:
    rows = [
        "| target | median of rounds | rounds | goal | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for what, kind, ours, other, goal, source in TARGETS:
        if RETIRED_STACK in (ours, other) and RETIRED_STACK not in report["stacks"]:
            continue
        if not {ours, other} <= set(report["stacks"]):
            rows.append(f"| {what} | not measured (a stack is missing) | | >= {goal:g}x | |")
            continue
        ratios = round_ratios(report, source, kind, ours, other)
        median = statistics.median(ratios)
        each = ", ".join(f"{r:.2f}" for r in ratios)
        met = "yes" if median >= goal else "no"
        rows.append(f"| {what} | {median:.2f}x | {each} | >= {goal:g}x | {met} |")
    errors = sum(
        level["errors"]
        for levels in report["stacks"]["ours"]["levels"].values()
        for level in levels
        if level["concurrency"] <= 32
    )
    met = "yes" if errors == 0 else "no"
    rows.append(f"| errors, ours, up to c=32 (sweep) | {errors} | | 0 | {met} |")
    for mode, m in report.get("decode_agreement", {}).items():
        what = f"reduced-scale decoding, {mode}, {m['images']} labelled images upscaled 4x"
        met = "yes" if m["agreement"] >= AGREEMENT_GOAL else "no"
        rows.append(
            f"| {what}: top-1 agreement with a full decode | {m['agreement']:.1%} | "
            f"| >= {AGREEMENT_GOAL:.0%} | {met} |"
        )
        drop = m["accuracy_drop_points"]
        met = "yes" if drop <= ACCURACY_DROP_GOAL else "no"
        rows.append(
            f"| {what}: top-1 accuracy, served {m['served_top1']:.1%} against full decode "
            f"{m['full_decode_top1']:.1%} | {drop:+.2f} points lower | "
            f"| <= {ACCURACY_DROP_GOAL} points lower | {met} |"
        )
    return rows


def preprocess_rows(report: dict) -> list[str]:
    """/preprocess alone, the median round per stack and photo kind."""
    rows = [
        "| stack | photo | uploads/s | core-ms per upload | of which decode + resize + encode "
        "| around it | load generator, core-ms per upload | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stack in report["stacks"]:
        for kind in _preprocess_kinds(report):
            m = _median_round(report, stack, kind)
            rows.append(
                f"| {stack} | {kind} | {m['uploads_per_s']:.1f} | {m['core_ms_per_upload']:.1f} "
                f"| {_ms(m.get('image_core_ms'))} | {_ms(m.get('overhead_core_ms'))} "
                f"| {_ms(m.get('load_generator_core_ms'))} | {m['errors']} |"
            )
    return rows


def profile_rows(report: dict) -> list[str]:
    """Where the image work goes, step by step: ours against the brief's design."""
    profile = report.get("image_profile")
    if not profile:
        return []
    kinds = list(profile)
    measured = [steps for kind in kinds for steps in profile[kind].values()]
    steps = list(dict.fromkeys(step for each in measured for step in each))
    columns = [(kind, stack) for kind in kinds for stack in ("ours", "brief")]
    rows = [
        "## Where /preprocess spends its CPU (in-process profile)",
        "",
        "Core-ms per photo of each step of the image work, per thread, on the same photos "
        "(`benchmarks/preprocess_profile.py`); ours decodes JPEGs at reduced scale and stores BMP, "
        "the brief's design decodes at full size and stores PNG. The served 'around it' above "
        "(HTTP, the form, storage) comes on top.",
        "",
        "| step | " + " | ".join(f"{stack}, {kind}" for kind, stack in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for step in [*steps, "total"]:
        cells = []
        for kind, stack in columns:
            measured = profile[kind][stack]
            value = sum(measured.values()) if step == "total" else measured.get(step)
            cells.append("" if value is None else f"{value:.1f}")
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    return rows


def thread_rows(report: dict) -> list[str]:
    """Ours' /preprocess CPU per upload by thread (the median round), the image work apart."""
    rows = [
        "| photo | event loop (HTTP, the form) | request threads: image work "
        "| request threads: the rest (hash, storage) | supervisor | around the image work |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in _preprocess_kinds(report):
        m = _median_round(report, "ours", kind)
        if "thread_core_ms" not in m:
            return []
        threads, image = m["thread_core_ms"], m["image_core_ms"]
        loop, supervisor = threads.get("event loop", 0.0), threads.get("supervisor", 0.0)
        rest = threads.get("other threads", 0.0) - image
        rows.append(
            f"| {kind} | {loop:.1f} | {image:.1f} | {rest:.1f} | {supervisor:.1f} "
            f"| {loop + rest + supervisor:.1f} |"
        )
    return [
        "",
        "Ours by thread, core-ms per upload (the median round; the image work is the service's "
        "own per-thread count, the rest is everything around it; target around it: <= 3). "
        "A 224 px upload carries next to no body: what is around its image work is the cost of "
        "a request itself (BentoML's HTTP stack, the guards, hashing, the storage write).",
        "",
        *rows,
    ]


def write_pipeline_report(report: dict, out: Path) -> None:
    """pipeline.json, pipeline.md and its plot (benchmarks/report.py, the one writer)."""
    write(out, "pipeline", report, render, {"pipeline_photos_per_s.png": _plot})


def render(report: dict) -> str:
    sections = (_intro, _preprocess_section, _pipeline_section, _cost_section)
    return "\n".join(line for section in sections for line in section(report))


def _intro(report: dict) -> list[str]:
    cpu = report["cpu"]
    features = ", ".join(cpu.get("features") or []) or "none of those checked"
    lines = [
        "# Pipeline benchmark: upload -> /preprocess -> /classify",
        "",
        f"Run {report['date']} on {cpu['model']} ({features}), {report['cores']} cores, "
        f"{report['memory_gib']} GiB; scale `{report['scale']}`. Generated by "
        "`benchmarks/pipeline.py`; compare ratios within this run only.",
        "",
        _stacks(report),
        "",
    ]
    if report["scale"] == "smoke":
        lines += ["A `--smoke` run: a handful of photos per level, figures meaningless.", ""]
    return [*lines, "## Targets", "", *target_rows(report), ""]


def _stacks(report: dict) -> str:
    brief = "**brief** (FastAPI preprocess storing PNG + the naive FastAPI classify)"
    shared = "every server and the load generator share the same cores."
    if RETIRED_STACK in report["stacks"]:
        return (
            f"Stacks: **ours** (this code, default settings), **today** (the services at "
            f"`{report['baseline_ref']}`, before reduced-scale decoding and the single upload "
            f"parse), {brief}. All six servers run for the whole run, and each measurement goes "
            f"through one stack while the others wait; {shared}"
        )
    return (
        f"Stacks: **ours** (this code, default settings) and {brief}. All four servers run for "
        f"the whole run, and each measurement goes through one stack while the other waits; "
        f"{shared} (The comparison with the code before reduced-scale decoding, a third stack, "
        "is recorded in the run of 2026-12-02 and no longer rerun.)"
    )


def _preprocess_section(report: dict) -> list[str]:
    return [
        f"Ratios are taken within each of {len(report['rounds'])} target rounds at concurrency "
        f"{TARGET_CONCURRENCY}, the stacks measured one after another in each round; preprocess "
        "rows: uploads/s of /preprocess alone; pipeline rows: photos/s through both services; "
        "the server CPU row leaves out the load generator, which took "
        f"{_load_generator_share(report):.0%} of all CPU in ours' sweep.",
        "",
        f"## /preprocess alone (concurrency {TARGET_CONCURRENCY}, the median round)",
        "",
        *preprocess_rows(report),
        "",
        "Core-ms per upload: the preprocess process tree's CPU (BentoML's watcher included) over "
        "the uploads; decode + resize + encode is the service's own per-thread count "
        "(`preprocess_image_cpu_seconds`), so 'around it' is HTTP, the form, hashing and "
        "storage. The load generator runs on the same cores.",
        *thread_rows(report),
        "",
        *profile_rows(report),
    ]


PIPELINE_COLUMNS = (
    "photo",
    "c",
    "photos/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors",
    "core-ms/photo: preprocess",
    "classify",
    "load generator",
)


def _pipeline_level(kind: str, lv: dict) -> tuple:
    core = lv["core_ms_per_photo"]
    return (
        kind,
        lv["concurrency"],
        f"{lv['photos_per_s']:.1f}",
        *(f"{lv[key]:.0f}" for key in ("p50_ms", "p95_ms", "p99_ms")),
        lv["errors"],
        *(f"{core[key]:.1f}" for key in ("preprocess", "classify", "load generator")),
    )


def _pipeline_section(report: dict) -> list[str]:
    lines = ["", "## The pipeline", ""]
    for stack, data in report["stacks"].items():
        rss = data["peak_rss_mb"]
        levels = ((kind, lv) for kind, levels in data["levels"].items() for lv in levels)
        lines += [
            f"### {stack}",
            "",
            f"Peak RSS: preprocess {rss['preprocess']:.0f} MB, classify {rss['classify']:.0f} MB.",
            "",
            *table(PIPELINE_COLUMNS, (_pipeline_level(kind, lv) for kind, lv in levels)),
            "",
        ]
    return lines


def _cost_section(report: dict) -> list[str]:
    rows = []
    for kind in [*SIZES, "12 MP HEIC"]:
        if kind not in report["stacks"]["ours"]["levels"]:
            continue
        ours = cost_per_million(_core(report, "ours", kind))["total"]
        if kind in report["stacks"].get("brief", {}).get("levels", {}):
            brief = cost_per_million(_core(report, "brief", kind))["total"]
            rows.append((kind, f"{ours:.2f}", f"{brief:.2f}", f"{brief / ours:.1f}x"))
        else:
            rows.append((kind, f"{ours:.2f}", "(refused: no HEIC decoder)", ""))
    return [
        f"## Cost per million photos (core-ms at concurrency {TARGET_CONCURRENCY})",
        "",
        f"{PRICES_NOTE}. Instances priced as scripts/deploy sizes ours "
        f"({_shapes(report)}), the brief's design on the same shapes; busy instances "
        "(request-based billing charges instance time while requests run, so idle cores "
        "within a request would cost more).",
        "",
        *table(("photo", "ours USD", "brief USD", "brief / ours"), rows),
        "",
        "![photos/s against photo size](pipeline_photos_per_s.png)",
        "",
    ]


def _preprocess_kinds(report: dict) -> list[str]:
    """The photo kinds /preprocess was measured alone on, in the order measured."""
    return list(report["rounds"][0]["preprocess"]["ours"])


def _median_round(report: dict, stack: str, kind: str) -> dict:
    """/preprocess alone on `kind` photos through `stack`: the round with the median uploads/s."""
    runs = sorted(
        (measured["preprocess"][stack][kind] for measured in report["rounds"]),
        key=lambda m: m["uploads_per_s"],
    )
    return runs[len(runs) // 2]


def _load_generator_share(report: dict) -> float:
    levels = [lv for kinds in report["stacks"]["ours"]["levels"].values() for lv in kinds]
    spent = [lv["core_ms_per_photo"] for lv in levels]
    return sum(c["load generator"] for c in spent) / max(1e-9, sum(sum(c.values()) for c in spent))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _core(report: dict, stack: str, kind: str) -> dict[str, float]:
    return at_concurrency(report, stack, kind, TARGET_CONCURRENCY)["core_ms_per_photo"]


def _shapes(report: dict) -> str:
    return ", ".join(f"{name} {v} vCPU / {g:g} GiB" for name, (v, g) in report["shapes"].items())


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for stack in report["stacks"]:
        kinds = [k for k in SIZES if k in report["stacks"][stack]["levels"]]
        axes.plot(
            [SIZES[k] for k in kinds],
            [best_rate(report, stack, k) for k in kinds],
            marker="o",
            label=stack,
        )
    axes.set_xscale("log")
    axes.set_xlabel("photo size (megapixels, JPEG)")
    axes.set_ylabel("photos/s, upload -> classify (best concurrency)")
    axes.set_title(f"Pipeline on {report['cores']} cores ({report['date']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
