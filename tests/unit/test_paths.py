"""The path resolvers under every input: nothing escapes the store, everything answers a code.

Property tests (hypothesis) over arbitrary text and over URIs built from hostile pieces, for
both backends (GCS through the real client against the emulator), plus the cases seen in the
wild: NUL bytes, symlink loops, directories, FIFOs, over-long names, URLs `urlsplit` refuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import errors, storage

MAX = 1_000_000
# The codes a read may answer; anything else (a 500) is a failure.
DOCUMENTED = (
    errors.InvalidPath,
    errors.ForbiddenLocation,
    errors.ObjectNotFound,
    errors.UploadTooLarge,
)
PIECES = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        "%00",
        "\x00",
        "\\",
        "/",
        "//",
        "%2f",
        "\ud800",
        "%ff",
        "%",
        "\u202e",
        "a" * 300,
        "loop",
        "dir",
        "fifo",
        "outside",
        "ok.bmp",
        "[",
        "]",
        "?",
        "#",
        ":",
        "@",
        "~",
        " ",
        "\n",
    ]
)
SCHEMES = st.sampled_from(
    ["file://", "file:", "file:///", "gs://", "gs://test-bucket/", "", "http://"]
)


@pytest.fixture(scope="module")
def local_root(tmp_path_factory) -> Path:
    """A storage folder holding every trap: a symlink loop, a link out, a directory, a FIFO."""
    root = tmp_path_factory.mktemp("store")
    (root / "ok.bmp").write_bytes(b"BM" + bytes(64))
    (root / "dir").mkdir()
    (root / "loop").symlink_to(root / "loop")
    (root / "outside").symlink_to("/etc")
    os.mkfifo(root / "fifo")
    return root


def _read(store: storage.Storage, uri: str) -> bytes | None:
    try:
        return store.read_uri(uri, MAX)
    except DOCUMENTED:
        return None


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scheme=SCHEMES, pieces=st.lists(PIECES, max_size=8), noise=st.text(max_size=20))
def test_local_reads_never_escape_and_always_answer_a_code(local_root, scheme, pieces, noise):
    store = storage.LocalStorage(local_root)
    uri = scheme + str(local_root) + "/" + "/".join(pieces) + noise
    data = _read(store, uri)
    if data is not None:  # only the one stored file may be read
        assert data == (local_root / "ok.bmp").read_bytes()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(uri=st.text(max_size=300))
def test_any_text_is_a_documented_answer_locally(local_root, uri):
    _read(storage.LocalStorage(local_root), uri)


@pytest.mark.parametrize(
    "name, error",
    [
        ("loop", errors.InvalidPath),  # pathlib: RuntimeError("Symlink loop")
        ("dir", errors.ObjectNotFound),
        ("fifo", errors.InvalidPath),
        ("outside", errors.ForbiddenLocation),
        ("ok.bmp%00.png", errors.InvalidPath),
        ("x" * 5000, errors.InvalidPath),
        ("a/" * 600 + "b", errors.InvalidPath),
        ("ok.bmp/..", errors.InvalidPath),
        ("%ff%fe", errors.InvalidPath),
    ],
)
def test_hostile_local_paths_get_their_code(local_root, name, error):
    with pytest.raises(error):
        storage.LocalStorage(local_root).read_uri(f"file://{local_root}/{name}", MAX)


@pytest.mark.parametrize("uri", ["file://[::1/x", "gs://[bad/x", "file://a:99999999/x", "\x00"])
def test_uris_urlsplit_refuses_are_invalid_paths(local_root, uri):
    with pytest.raises((errors.InvalidPath, errors.ForbiddenLocation)):
        storage.LocalStorage(local_root).read_uri(uri, MAX)


def test_refused_reads_release_their_descriptors(local_root):
    store = storage.LocalStorage(local_root)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(300):
        for name in ("dir", "fifo", "loop", "missing"):
            _read(store, f"file://{local_root}/{name}")
    assert len(os.listdir("/proc/self/fd")) <= before


@pytest.fixture(scope="module")
def gcs_store(gcs_emulator, tmp_path_factory):
    backend = make_backend("gcs", tmp_path_factory.mktemp("gcs"), gcs_emulator)
    backend.storage.put_if_absent("ok.bmp", b"BM" + bytes(64), "image/bmp")
    return backend.storage


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scheme=SCHEMES, pieces=st.lists(PIECES, max_size=6), noise=st.text(max_size=12))
def test_gcs_reads_stay_in_the_bucket_and_answer_a_code(gcs_store, scheme, pieces, noise):
    uri = scheme + "/".join(pieces) + noise
    try:
        data = gcs_store.read_uri(uri, MAX)
    except DOCUMENTED:  # (an emulator that is down fails here: StorageUnavailable is no answer)
        return
    assert uri.startswith(f"gs://{gcs_store.bucket_name}/")
    assert data == b"BM" + bytes(64)
