"""The README's per-request limits, generated from the measured worst case.

tests/deploy/test_request_bounds.py measures the serving process's peak RSS growth and CPU
seconds for the worst accepted upload of each format at the limits, and checks them against
the bounds here; with RECORD_REQUEST_BOUNDS=path it writes its figures there. The committed
run is benchmarks/request_bounds.json; `python3 -m scripts.bounds` prints the README's block
from it (the docs test holds the README to it).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks" / "request_bounds.json"
# The stated bounds the test holds each worst input to: peak growth within 16 B per admitted
# pixel (the decode budget's factor) plus twice the upload (margin 1.0: the bound itself, no
# slack on top), and CPU: 3 s, 1.7x the slowest input measured (a 40 MP HEIC, 1.8 s on AMD
# EPYC), for CPUs slower than the one measured.
MEMORY_MARGIN = 1.0
CPU_BOUND_S = 3.0
MIB = 1024 * 1024
# What a request holds whatever its image: its HTTP buffers, the answer, Python's objects. Below
# a few megapixels it is most of the growth (2.1 MiB for a 64x64 JPEG carrying 1 MB of data).
REQUEST_ALLOWANCE_MIB = 4


def bound_mib(pixels: float, upload: int) -> float:
    """The stated per-request bound: 16 B per admitted pixel, twice the upload, the request."""
    return (16 * pixels + 2 * upload) / MIB + REQUEST_ALLOWANCE_MIB


def write_figures(service: str, figures: dict[str, dict[str, float]]) -> None:
    """Merge one service's figures into the file named by RECORD_REQUEST_BOUNDS, if set."""
    target = os.environ.get("RECORD_REQUEST_BOUNDS")
    if not target:
        return
    from scripts.sizing import cpu_model

    path = Path(target)
    document = json.loads(path.read_text()) if path.exists() else {}
    document.setdefault("services", {})[service] = figures
    document.update(cpu=cpu_model(), cpu_bound_s=CPU_BOUND_S)
    document.pop("inputs", None)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def peak_mib(row: dict[str, float]) -> float:
    return max(value for key, value in row.items() if key.startswith("peak_growth_mib_"))


def cpu_s(row: dict[str, float]) -> float:
    return max(value for key, value in row.items() if key.startswith("cpu_s_"))


def readme_block(measured: dict[str, Any] | None = None) -> str:
    """The README's two limits, with the figures of the measured run."""
    from common.config import Settings
    from common.images.decode import DECODER_COST

    measured = measured or json.loads(MEASURED.read_text())
    rows = {
        f"{name} ({service})": row
        for service, figures in sorted(measured["services"].items())
        for name, row in figures.items()
    }

    limits = Settings()
    pixels = limits.max_image_pixels
    shares = {
        name: peak_mib(row) / bound_mib(row["admitted_pixels"], row["bytes"])
        for name, row in rows.items()
    }
    biggest = max(rows, key=lambda name: peak_mib(rows[name]))
    slowest = max(rows, key=lambda name: cpu_s(rows[name]))
    figures = dict(
        webp=DECODER_COST["WEBP"],
        photo=bound_mib(pixels, limits.max_upload_bytes),
        webp_mib=bound_mib(pixels * DECODER_COST["WEBP"], limits.max_upload_bytes),
        share=max(shares.values()),
        biggest=biggest,
        biggest_mib=peak_mib(rows[biggest]),
        biggest_bound=bound_mib(rows[biggest]["admitted_pixels"], rows[biggest]["bytes"]),
        cpu_bound=measured["cpu_bound_s"],
        least=min(cpu_s(row) for row in rows.values()),
        most=cpu_s(rows[slowest]),
        slowest=slowest,
        machine=measured["cpu"],
        allowance=REQUEST_ALLOWANCE_MIB,
    )
    return "\n".join(
        textwrap.fill(text.format(**figures), 95, initial_indent="- ", subsequent_indent="  ")
        for text in (MEMORY, CPU)
    )


MEMORY = (
    "**Memory per request** ≤ 16 bytes x its admitted pixels (a side under 64 counts as 64; a "
    "HEIC/AVIF's tiles and alpha count, whatever canvas it declares; a WebP pixel counts "
    "{webp}) + twice the upload + {allowance} MiB: ≤ {photo:.0f} MiB at the defaults "
    "({webp_mib:.0f} for WebP). "
    "The peak RSS of preprocess and classify for the worst accepted input of each format at "
    "the limits: at most {share:.2f} of that (the largest: {biggest}, {biggest_mib:.0f} of "
    "{biggest_bound:.0f} MiB)."
)
CPU = (
    "**CPU per request** ≤ {cpu_bound} CPU-seconds: the same inputs cost {least:.2f}-{most:.2f} "
    "s (the most: {slowest}; {machine}; `tests/deploy/test_request_bounds.py`)."
)


if __name__ == "__main__":
    sys.stdout.write(readme_block() + "\n")
