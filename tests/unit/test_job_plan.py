"""The bucket job's planning (classify/bucket/plan.py): in step with the two listings, it finds
exactly the photos an index of every result would, holding no more than a chain of prefixes."""

from __future__ import annotations

import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from classify.bucket.plan import Planner, in_result_order
from classify.results import new_result, result_key, store_result
from common.schemas import ClassifyResponse, Prediction, ResizeMode
from common.storage import LocalStorage, ObjectInfo, Version

# Characters on both sides of "." and "/", where a name and its result's name sort differently.
NAMES = st.text(alphabet=" !-./0aj~é", min_size=1, max_size=8)


def _infos(keys: list[str]) -> list[ObjectInfo]:
    return [ObjectInfo(key, Version(1, 1)) for key in keys]


def _waiting_peak(keys: list[str]) -> int:
    """The most keys in_result_order held back at once, seen from what it has yielded."""
    peak, taken = 0, 0
    for position, info in enumerate(in_result_order(_infos(keys)), start=1):
        taken = max(taken, keys.index(info.key) + 1)
        peak = max(peak, taken - position + 1)
    return peak


@given(st.sets(NAMES, max_size=60))
def test_sources_in_name_order_come_out_in_their_results_order(names):
    keys = sorted(names)
    reordered = [info.key for info in in_result_order(_infos(keys))]
    assert reordered == sorted(keys, key=lambda key: key + ".json")


@given(st.sets(NAMES, max_size=60))
def test_what_waits_is_a_chain_of_prefixes_not_the_listing(names):
    keys = sorted(names)
    deepest_chain = max((sum(key.startswith(other) for other in keys) for key in keys), default=0)
    assert _waiting_peak(keys) <= deepest_chain + 1


def test_a_thousand_names_behind_one_prefix_wait_as_one():
    keys = sorted(["photo", *(f"photo-{n:04d}" for n in range(1000))])
    assert _waiting_peak(keys) <= 2
    assert [info.key for info in in_result_order(_infos(keys))][-1] == "photo"


@given(st.lists(NAMES, max_size=40))
def test_a_listing_out_of_order_loses_nothing(keys):
    assert sorted(info.key for info in in_result_order(_infos(keys))) == sorted(keys)


def _answer() -> ClassifyResponse:
    top = [Prediction(label="cat", confidence=0.9, index=281)]
    return ClassifyResponse(
        label="cat", confidence=0.9, index=281, top_k=top, model="m:1", runtime="onnxruntime"
    )


def _store(objects: LocalStorage, key: str) -> None:
    info = objects.head(key)
    result = new_result(objects.uri_for(key), info, False, ResizeMode.resize, "job", _answer())
    store_result(objects, result_key("results/", key), result)


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="-.0aj é", min_size=1, max_size=6).filter(
            lambda name: name.strip(".") and not name.startswith((" ", ".")) and "/" not in name
        ),
        st.sampled_from(["none", "current", "stale"]),
        max_size=20,
    )
)
def test_planning_finds_exactly_the_photos_without_an_up_to_date_result(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("plan")
    objects = LocalStorage(folder)
    for name in files:
        (folder / "in").mkdir(exist_ok=True)
        (folder / "in" / name).write_bytes(b"x")
    for name, state in files.items():
        if state != "none":
            _store(objects, f"in/{name}")
    time.sleep(0.01)  # a later change time than the results recorded
    for name, state in files.items():
        if state == "stale":
            os.utime(folder / "in" / name)  # a new version of the photo
    planner = Planner(objects, "in/", "results/", lambda key: key.startswith("in/"), bool)
    pending = sorted(info.key for info in planner.pending())
    assert pending == sorted(f"in/{n}" for n, state in files.items() if state != "current")
    assert planner.counts.skipped == sum(state == "current" for state in files.values())
    assert planner.counts.listed
