"""benchmarks/request_floor.md from request_floor.json: where a served request's core-ms go by
server and thread, the floor under them, the work beside BentoML's bare path, and the served
worker's CPU by library."""

from __future__ import annotations

import statistics

from benchmarks.report import Figures, cpu_line, row, table

CONCURRENCY = 32  # the load the study applies (request_floor.py)
# The speed issue's target: served classify at this share of the model alone.
TARGET_RATIO = 0.8


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _roles(runs: list[dict]) -> dict[str, float]:
    roles = sorted({role for run in runs for role in run["ms_per_request"]})
    return {r: statistics.median(run["ms_per_request"].get(r, 0.0) for run in runs) for r in roles}


def _ceiling(figures: Figures, model: dict, client_ms: float) -> tuple[float, float]:
    """The floor of a served request (core-ms, the load generator's share included) on top
    of `model`, and the requests/s it allows on every core."""
    bare = sum(_roles(figures["servers"]["bentoml-bare"]).values())
    floor_ms = model["core_ms_per_image"] + figures["decode_ms"] + bare + client_ms
    return floor_ms, 1000 * figures["cores"] / floor_ms


def render(figures: Figures) -> str:
    lines = [*_servers_section(figures), *_floor_section(figures)]
    if "uncoupled" in figures:
        lines += _uncoupled_lines(figures["uncoupled"])
    if figures.get("profile"):
        served = _roles(figures["servers"]["classify"])
        lines += _profile_lines(figures["profile"], figures["uncoupled"], served)
    return "\n".join(lines) + "\n"


def _servers_section(figures: Figures) -> list[str]:
    servers = figures["servers"]
    rate = {name: _median(runs, "requests_per_s") for name, runs in servers.items()}
    calls = (
        (figures["model"], "one per core"),
        (figures["model_as_served"], "as many as classify runs"),
    )
    return [
        "# Where a served request's core-milliseconds go, and the floor under them",
        "",
        f"Measured {figures['date']}, {figures['cores']} cores, {figures['rounds']} alternating "
        f"rounds of {figures['requests']} requests at concurrency {CONCURRENCY} per server "
        "(`python -m benchmarks.request_floor`). The load generator is the benchmark's own "
        "process, on the same cores.",
        cpu_line(figures),
        "",
        *table(
            SERVER_COLUMNS,
            (
                (
                    name,
                    f"{rate[name]:.0f}",
                    f"{rate[name] / rate['classify']:.2f}",
                    f"{_median(runs, 'cores'):.2f}",
                    f"{sum(_roles(runs).values()):.2f}",
                    f"{_median(runs, 'load_generator_ms_per_request'):.2f}",
                    sum(run["errors"] for run in runs),
                )
                for name, runs in servers.items()
            ),
        ),
        "",
        *table(
            ("model alone, in-process, batch 1", "images/s", "core-ms per image"),
            (
                (
                    f"{record['streams']} single-threaded calls at once ({how})",
                    f"{record['images_per_s']:.0f}",
                    f"{record['core_ms_per_image']:.2f}",
                )
                for record, how in calls
            ),
        ),
        "",
        "## By thread (median core-ms per request)",
        "",
        *table(
            ("server", "role", "core-ms"),
            (
                (name, role, f"{ms:.2f}")
                for name, runs in servers.items()
                for role, ms in _roles(runs).items()
            ),
        ),
    ]


SERVER_COLUMNS = (
    "server",
    "req/s (median)",
    "to classify",
    "server cores",
    "server core-ms per request",
    "load generator core-ms",
    "errors",
)


def _floor_section(figures: Figures) -> list[str]:
    servers, model, as_served = figures["servers"], figures["model"], figures["model_as_served"]
    rate = {name: _median(runs, "requests_per_s") for name, runs in servers.items()}
    client_ms = _median(servers["classify"], "load_generator_ms_per_request")
    bare = sum(_roles(servers["bentoml-bare"]).values())
    best_ms, best = _ceiling(figures, model, client_ms)
    served_ms, served = _ceiling(figures, as_served, client_ms)
    unguarded = servers["classify-unguarded"]
    stack_ms = sum(_roles(servers["classify"]).values()) - sum(_roles(unguarded).values())
    raw = model["images_per_s"]
    return [
        "",
        "## The floor",
        "",
        f"A served request cannot cost less than the model, the read and decode "
        f"({figures['decode_ms']:.2f} core-ms), BentoML's bare request path ({bare:.2f}) and "
        f"the load generator's share of the same cores ({client_ms:.2f}). With the model at "
        f"its fastest ({model['streams']} calls at once, {model['core_ms_per_image']:.2f} "
        f"core-ms) that is {best_ms:.2f} core-ms: at most {best:.0f} requests/s, "
        f"{best / raw:.2f} of the model alone. With the model as classify runs it "
        f"({as_served['streams']} calls at once, {as_served['core_ms_per_image']:.2f} core-ms) "
        f"it is {served_ms:.2f} core-ms: at most {served:.0f} requests/s, {served / raw:.2f} "
        "of the model alone.",
        "",
        f"Measured, not computed: classify serves {rate['classify']:.0f} requests/s "
        f"({rate['classify'] / raw:.2f} of the model alone). Without its middleware stack it "
        f"serves {rate['classify-unguarded']:.0f} ({stack_ms:+.2f} core-ms per request for the "
        f"stack); the leanest classify BentoML serves (a sync API: read, decode, model, rank) "
        f"serves {rate['bentoml-model']:.0f}.",
    ]


def _uncoupled_lines(rounds: list[dict]) -> list[str]:
    streams = rounds[0]["streams"]
    lines = [
        "",
        "## The same work with nothing coupling it",
        "",
        f"Classify's work without a server (read, decode and the model as the service loads "
        f"it, {streams} images at once) in a process of its own, first alone, then beside "
        f"BentoML's bare request path (`BareBento`) paced at the target's requests/s "
        f"({TARGET_RATIO:.0%} of the model alone, one call per core). If the work keeps that "
        "rate beside it, the target is within the machine's cores, and what a served request "
        "costs beyond them is the coupling (hand-offs between the event loop and the threads, "
        "Python around the model call); if not, the target is beyond these cores even with "
        "nothing coupling the two sides.",
        "",
        "| round | work alone, images/s | core-ms per image | BentoML bare path paced at, req/s "
        "| it served, req/s | work beside it, images/s | core-ms per image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for number, got in enumerate(rounds, 1):
        alone, beside = got["alone"], got["beside"]
        lines.append(
            row(
                number,
                f"{alone['images_per_s']:.0f}",
                f"{alone['core_ms_per_image']:.2f}",
                f"{got['rate']:.0f}",
                f"{got['bare_served_per_s']:.0f}",
                f"{beside['images_per_s']:.0f}",
                f"{beside['core_ms_per_image']:.2f}",
            )
        )
    spare = statistics.median(got["beside"]["images_per_s"] / got["rate"] for got in rounds)
    verdict = (
        f"the work kept {spare:.2f}x the target's rate while the HTTP side served it: the "
        "target is within these cores, and the coupling is what keeps classify under it"
        if spare >= 1
        else f"the work reached {spare:.2f} of the target's rate beside it: even with nothing "
        "coupling the two sides the target is beyond these cores"
    )
    return [*lines, "", f"Median over the rounds: {verdict}."]


def _profile_lines(profile: dict, uncoupled: list[dict], served: dict[str, float]) -> list[str]:
    """The profile's split by library, scaled to each role's core-ms in the unprofiled runs
    (`served`): perf's own sampling and CPU inflate the profiled run's totals."""
    sampled = profile["ms_per_request"]
    shares = {
        role: {lib: ms * served.get(role, 0.0) / sum(by_lib.values()) for lib, ms in by_lib.items()}
        for role, by_lib in sampled.items()
    }
    libraries = sorted({library for by_library in shares.values() for library in by_library})
    profiled_total = sum(sum(by_library.values()) for by_library in sampled.values())
    lines = [
        "",
        "## Inside the served classify, by library",
        "",
        f"`perf record` sampling the worker at 999 Hz for {profile['seconds']:.0f} s at "
        f"concurrency {CONCURRENCY}; each thread's samples split by shared object, as shares of "
        "that thread role's core-ms per request in the unprofiled runs above (profiled, the "
        f"worker served {profile['requests_per_s']:.0f} requests/s at {profiled_total:.2f} "
        "core-ms each: perf's own cost).",
        "",
        row("role", *libraries, "all"),
        row(*["---"] * (len(libraries) + 2)),
    ]
    for role, by_library in sorted(shares.items()):
        cells = [f"{by_library.get(library, 0.0):.2f}" for library in libraries]
        lines.append(row(role, *cells, f"{sum(by_library.values()):.2f}"))
    total = sum(sum(by_library.values()) for by_library in shares.values())
    in_model = sum(by_library.get("ONNX Runtime", 0.0) for by_library in shares.values())
    alone = statistics.median(got["alone"]["core_ms_per_image"] for got in uncoupled)
    lines += [
        "",
        f"Of {total:.2f} core-ms per served request, {in_model:.2f} are inside ONNX Runtime "
        f"(classify's work alone, read and decode included, costs {alone:.2f}); the other "
        f"{total - in_model:.2f} are the request path around it.",
    ]
    return lines
