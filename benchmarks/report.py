"""The one report writer of every study: its figures as `NAME.json`, the markdown rendered from
them as `NAME.md` (and any plots), side by side in `benchmarks/`, stamped with when and on
which CPU they were measured (ratios are comparable only within one run on one CPU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import cpu

RESULTS = Path(__file__).resolve().parent
Figures = dict[str, Any]


def stamp() -> Figures:
    """When and where a run happens: every study's figures start with these."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu()}


def write(
    out: Path,
    name: str,
    figures: Figures,
    render: Callable[[Figures], str],
    plots: Mapping[str, Callable[[Figures, Path], None]] | None = None,
) -> Path:
    """Write `NAME.json`, then `NAME.md` rendered from it and the plots (file name -> drawer);
    the markdown is a function of the JSON alone, so a test can regenerate it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2, default=float))
    for filename, draw in (plots or {}).items():
        draw(figures, out / filename)
    markdown = out / f"{name}.md"
    markdown.write_text(render(figures))
    return markdown


def row(*cells: object) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line a row."""
    return [row(*header), row(*["---"] * len(header)), *(row(*cells) for cells in rows)]


def cpu_line(figures: Figures) -> str:
    """Which CPU: INT8 and BF16 speeds depend on its vector extensions, not on the core count."""
    cpu_info = figures.get("cpu")
    if cpu_info is None:
        return "CPU: not recorded (a report from before the benchmark recorded it)."
    if not cpu_info["checked"]:  # no /proc/cpuinfo
        return f"CPU: {cpu_info['model']} (its vector extensions were not read)."
    missing = [name for name in cpu_info["checked"] if name not in cpu_info["features"]]
    has = ", ".join(cpu_info["features"]) or "none of " + ", ".join(cpu_info["checked"])
    lacks = f"; without {', '.join(missing)}" if missing and cpu_info["features"] else ""
    return (
        f"CPU: {cpu_info['model']}, with {has}{lacks}"
        " (INT8 gains most with VNNI or AMX; BF16 runs as FP32 without AVX-512 BF16 or AMX)."
    )
