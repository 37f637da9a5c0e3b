#!/usr/bin/env python
"""Cloud Run sizing derived from measurements: `--memory` and the startup probe of each service,
and the bucket job's `--memory`.

The measurements live in scripts/sizing.json. The tests that take them write them there when
asked (`scripts/measure-sizing`): tests/deploy/test_memory.py the peak RSS of each service under the
worst case the limits allow, tests/deploy/test_containers.py each image's size and cold start
(`podman run` to the first correct answer). `scripts/deploy` reads its numbers from here, and
the README's sizing table is generated from the same file (a test keeps them equal).

    python -m scripts.sizing deploy RUNTIME   # shell assignments for scripts/deploy
    python -m scripts.sizing table            # the README's sizing table
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from classify.runtime_table import ALL_RUNTIMES, IMAGE_RUNTIMES
from classify.runtime_table import spec as runtime_spec

MEASURED = Path(__file__).resolve().parent / "sizing.json"
MIB = 1024**2
# --memory is the measured worst-case peak over this fraction, in steps of 256 MiB: the memory
# test fails at 85% of the limit, so a re-measured peak up to ~20% above the committed one
# still passes, and more than that means the sizing has to be measured and derived again.
MEMORY_FRACTION = 0.7
MEMORY_STEP_MIB = 256
MEMORY_FLOOR_MIB = 512  # Cloud Run's smallest memory for a second-generation instance
# The startup probe waits this many times the measured cold start, and at least the floor:
# a Cloud Run instance starts on slower, shared cores and streams its image, and a window too
# short turns a slow start into a crash loop (a long one only delays failing a broken revision).
STARTUP_FACTOR = 10
STARTUP_FLOOR_S = 30
PROBE_PERIOD_S = 2
# Cloud Run caps a startup probe at 240 s (failureThreshold x periodSeconds).
STARTUP_CAP_S = 240
IMAGES = (*IMAGE_RUNTIMES, "preprocess")
# The runtime each classify image is built for (scripts/build), as measured.
CLASSIFY_IMAGE_RUNTIMES = IMAGE_RUNTIMES


def measured() -> dict[str, Any]:
    return json.loads(MEASURED.read_text())


def memory_mib(name: str, figures: dict[str, Any] | None = None) -> int:
    """The `--memory` (MiB) for the image `name`, from its measured worst-case peak."""
    peak = (figures or measured())["memory"][name]["peak_mib"]
    steps = math.ceil(peak / MEMORY_FRACTION / MEMORY_STEP_MIB)
    return max(MEMORY_FLOOR_MIB, steps * MEMORY_STEP_MIB)


def startup_window_s(name: str, figures: dict[str, Any] | None = None) -> int:
    cold_start = (figures or measured())["images"][name]["cold_start_s"]
    window = max(STARTUP_FLOOR_S, math.ceil(STARTUP_FACTOR * cold_start))
    return min(STARTUP_CAP_S, math.ceil(window / PROBE_PERIOD_S) * PROBE_PERIOD_S)


def startup_probe(name: str, figures: dict[str, Any] | None = None) -> str:
    threshold = startup_window_s(name, figures) // PROBE_PERIOD_S
    return (
        f"httpGet.path=/readyz,initialDelaySeconds=0,periodSeconds={PROBE_PERIOD_S},"
        f"timeoutSeconds={PROBE_PERIOD_S},failureThreshold={threshold}"
    )


def deploy_assignments(runtime: str) -> str:
    """Shell assignments for scripts/deploy: the classify image that serves `runtime`, and both
    services' memory and startup probes (the runtime's image measured)."""
    if runtime not in ALL_RUNTIMES:
        raise SystemExit(f"CLASSIFY_RUNTIME must be one of {', '.join(ALL_RUNTIMES)}")
    figures = measured()
    names = {"classify": runtime_spec(runtime).image, "preprocess": "preprocess"}
    lines = [f"classify_image_name={names['classify']}"]
    for service, name in names.items():
        lines.append(f"{service}_memory={memory_mib(name, figures)}Mi")
        lines.append(f"{service}_startup_probe={startup_probe(name, figures)}")
    # the bucket job runs classify-bucket in the classify image: its own measured peak
    lines.append(f"job_memory={memory_mib(names['classify'] + '-job', figures)}Mi")
    return "\n".join(lines)


def record(section: str, name: str, **values: Any) -> None:
    """Merge measured values into the file named by RECORD_SIZING (the tests call this; a run
    without RECORD_SIZING measures and checks without writing anything)."""
    target = os.environ.get("RECORD_SIZING")
    if not target:
        return
    path = Path(target)
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures.setdefault(section, {}).setdefault(name, {}).update(values)
    figures["cpu"] = cpu_model()
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


def tables(figures: dict[str, Any] | None = None) -> str:
    """The README's sizing table (one row per image), from the measurements."""
    figures = figures or measured()
    images, memory = figures["images"], figures["memory"]
    rows = [
        "| image | adds to its base | in all | `podman run` → first answer: first start; again "
        "| worst-case peak RSS | `--memory` | startup probe window "
        "| as the bucket job's task: peak RSS; `--memory` |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in IMAGES:
        image = images[name]
        rows.append(
            f"| {name} | {image['added_mb']} MB | {image['size_mb']} MB "
            f"| {image['cold_start_s']:.1f} s; {image['warm_start_s']:.1f} s "
            f"(`{image['first_answer']}`) "
            f"| {memory[name]['peak_mib']} MiB | {memory_mib(name, figures)} MiB "
            f"| {startup_window_s(name, figures)} s | {_job_cell(name, figures)} |"
        )
    base = images["classify"]["base_mb"]
    rows.append(
        f"\nMeasured on {figures['cpu']}; the test base image weighs {base} MB. Two starts of "
        "each image, the first right after its build; the probe window follows the first."
    )
    return "\n".join(rows)


def _job_cell(name: str, figures: dict[str, Any]) -> str:
    job = f"{name}-job"
    if job not in figures["memory"]:
        return "(no job)"
    return f"{figures['memory'][job]['peak_mib']} MiB; {memory_mib(job, figures)} MiB"


def main(argv: list[str]) -> int:
    if argv[:1] == ["deploy"] and len(argv) == 2:
        print(deploy_assignments(argv[1]))
    elif argv == ["table"]:
        print(tables())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
