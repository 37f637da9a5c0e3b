"""Bounded fuzzing in the suite: mutated images and forms, in-process and through the servers.

The quick budget here (hypothesis drives the same mutations as the long run in tests/fuzz.py);
every finding the long run saved in tests/fuzz_regressions/ is replayed. Served: mutated
uploads and mutated multipart bodies through the real preprocess server, each a 200 with a
224x224 image or a documented 4xx within a time bound, and the server's memory bounded after.
"""

from __future__ import annotations

import functools
import os
import random
import time

import httpx
import pytest
from fuzzing import (
    BOUNDARY,
    DECODE_CODES,
    Drawn,
    check_decode,
    check_form,
    expected,
    multipart_body,
    mutate,
    mutate_any,
    outcomes,
    regressions,
    seeds,
)
from helpers import serving_process
from hostile import amplifiers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.schemas import ResizeMode

SEEDS = seeds()
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
MIB = 1024 * 1024
# Codes an upload may get besides the decode stage's: the form's own and the upload's size.
UPLOAD_CODES = DECODE_CODES | {
    "invalid_form",
    "empty_upload",
    "upload_too_large",
    "invalid_request",
}
SERVED_TIME_BOUND_S = 10


@settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    mode=st.sampled_from(list(ResizeMode)),
    rng_seed=st.integers(0, 2**32),
)
def test_mutated_images_decode_or_get_a_documented_refusal(seed, mode, rng_seed):
    check_decode(mutate(SEEDS[seed], random.Random(rng_seed)), mode)


@settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), mode=st.sampled_from(list(ResizeMode)), data=st.data())
def test_structure_aware_mutations_decode_or_get_a_documented_refusal(seed, mode, data):
    """Chunks, segments, blocks and boxes edited whole with checksums and sizes recomputed,
    every choice a hypothesis draw: a failure shrinks to the fewest, smallest edits."""
    check_decode(mutate_any(SEEDS[seed], Drawn(data)), mode)


@settings(max_examples=EXAMPLES // 2, deadline=2000)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    rng_seed=st.integers(0, 2**32),
    chunks=st.lists(st.integers(1, 400), max_size=8),
)
def test_mutated_forms_parse_or_are_malformed(seed, rng_seed, chunks):
    rng = random.Random(rng_seed)
    check_form(mutate(multipart_body(SEEDS[seed]), rng, rng.randint(1, 4)), chunks)


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_every_seed_decodes(seed):
    for mode in ResizeMode:
        assert check_decode(SEEDS[seed], mode) == "ok"


@functools.cache
def _regression_cases() -> dict[str, tuple[bytes, dict[str, str] | None]]:
    """Every saved finding with the answers recorded when it was fixed, and the hand-built
    inputs out of proportion with their documented code."""
    cases = {path.stem: (path.read_bytes(), expected(path)) for path in regressions()}
    for name, (data, _, code) in amplifiers().items():
        answer = code or "ok"
        known = answer in DECODE_CODES | {"ok"}  # not a size refused before decoding
        cases[name] = (data, {mode.value: answer for mode in ResizeMode} if known else None)
    return cases


@pytest.mark.parametrize("name", sorted(_regression_cases()))
def test_fuzz_findings_stay_fixed(name):
    data, answers = _regression_cases()[name]
    started = time.perf_counter()
    now = outcomes(data)
    assert time.perf_counter() - started < 10
    if name.startswith(("form-", "decode-", "slow-", "memory-", "crash-")):
        assert answers is not None, (
            f"{name}: fix it, then record its answers (tests/fuzz.py --record)"
        )
    if answers is not None:
        assert now == answers, name


def test_served_fuzz_answers_are_documented_fast_and_bounded(services):
    """Mutated files and mutated multipart bodies through the real preprocess server."""
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "4242")))
    url = f"{services.preprocess.url}/preprocess"
    worker = serving_process(services.preprocess)
    rss_before, fds_before = worker.memory_info().rss, worker.num_fds()
    names = sorted(SEEDS)
    answered: dict[int, int] = {}
    with httpx.Client(timeout=SERVED_TIME_BOUND_S) as client:
        for round_ in range(max(EXAMPLES // 5, 40)):
            data = mutate(SEEDS[rng.choice(names)], rng)
            if round_ % 3 == 2:  # the body itself mutated: boundaries, headers, lengths
                body = mutate(multipart_body(data), rng, rng.randint(1, 3))
                headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}
                started = time.perf_counter()
                response = client.post(url, content=body, headers=headers)
            else:
                started = time.perf_counter()
                response = client.post(url, files={"image": ("a.bin", data)})
            assert time.perf_counter() - started < SERVED_TIME_BOUND_S
            assert response.headers["content-type"].startswith("application/json"), response.text
            body_json = response.json()
            answered[response.status_code] = answered.get(response.status_code, 0) + 1
            if response.status_code == 200:
                assert (body_json["width"], body_json["height"]) == (224, 224)
            else:
                assert 400 <= response.status_code < 500, body_json
                assert body_json["code"] in UPLOAD_CODES, body_json
    assert answered.get(200) and len(answered) > 1, answered  # both outcomes were exercised
    # Each decode is bounded by the budget (16 B per counted pixel of the largest image,
    # 640 MiB at the defaults); what stays behind after the run must be far less.
    assert worker.memory_info().rss < rss_before + 256 * MIB
    assert worker.num_fds() <= fds_before + 4
