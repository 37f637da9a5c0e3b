"""Both storage backends through the same interface: local folder and the real GCS client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_backend

from common import errors, storage
from common.storage import files

MAX = 1_000_000


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    emulator = request.getfixturevalue("gcs_emulator") if request.param == "gcs" else None
    backend = make_backend(request.param, tmp_path, emulator)
    yield backend
    if backend.name == "gcs":
        import httpx

        httpx.get(f"{emulator}/wipe?keep-buckets=1")


def test_create_only_writes_once_and_reads_back(store):
    key = "preprocessed/object.png"
    uri, created = store.storage.put_if_absent(key, b"first", "image/png")
    assert created
    again, created_again = store.storage.put_if_absent(key, b"second", "image/png")
    assert (again, created_again) == (uri, False)
    assert store.storage.read_uri(uri, MAX) == b"first"


@pytest.mark.parametrize("unnamed_files", [True, False], ids=["O_TMPFILE", "temporary name"])
def test_local_writes_are_whole_private_and_leave_nothing_behind(
    tmp_path, monkeypatch, unnamed_files
):
    """Both ways the local backend creates a file (unnamed then linked where Linux allows it,
    a temporary name elsewhere): new folders made, no leftovers, only the owner can read it."""
    if unnamed_files and not files.UNNAMED_FILES:
        pytest.skip("this filesystem or OS has no O_TMPFILE")
    monkeypatch.setattr(files, "UNNAMED_FILES", unnamed_files)
    local = storage.LocalStorage(tmp_path)
    data = os.urandom(300_000)
    uri, created = local.put_if_absent("new/folder/object.bmp", data, "image/bmp")
    assert created and local.read_uri(uri, MAX) == data
    assert local.put_if_absent("new/folder/object.bmp", b"other", "image/bmp") == (uri, False)
    # a write racing another to the same name: the link fails, the first file stays
    target = tmp_path / "new" / "folder" / "object.bmp"
    assert files.create_complete(target, b"other") is False
    assert os.listdir(tmp_path / "new" / "folder") == ["object.bmp"]
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600


def test_missing_object_is_not_found(store):
    uri, _ = store.storage.put_if_absent("preprocessed/a.png", b"x", "image/png")
    with pytest.raises(errors.ObjectNotFound):
        store.storage.read_uri(uri.replace("a.png", "b.png"), MAX)


def test_objects_over_the_read_limit_are_refused(store):
    uri, _ = store.storage.put_if_absent("preprocessed/big.png", b"x" * 100, "image/png")
    with pytest.raises(errors.UploadTooLarge):
        store.storage.read_uri(uri, 99)
    assert store.storage.read_uri(uri, 100) == b"x" * 100  # exactly at the limit: read whole


def test_an_empty_object_reads_as_no_bytes(store):
    uri, _ = store.storage.put_if_absent("preprocessed/empty.png", b"", "image/png")
    assert store.storage.read_uri(uri, MAX) == b""


@pytest.mark.parametrize(
    "path",
    [
        "",
        "bucket/key",
        "https://storage.googleapis.com/test-bucket/x",
        "ftp://test-bucket/x",
        "gs://test-bucket/a/../b",
        "gs://test-bucket/a/%2e%2e/b",
        "gs://test-bucket/a/./b",
        "gs://test-bucket/a\nb",
        "gs://test-bucket/a\x00b",
        "gs://test-bucket/" + "x" * 1100,
        "gs://test-bucket/",
    ],
)
def test_malformed_paths_are_refused_before_any_read(store, path):
    if any(char in path for char in "\n\x00"):
        expected = (errors.InvalidPath,)  # whichever store: refused before it is parsed
    elif store.name == "local" and path.startswith("gs://"):
        expected = (errors.ForbiddenLocation,)
    else:
        expected = (errors.InvalidPath, errors.ForbiddenLocation)
    with pytest.raises(expected):
        store.storage.read_uri(path, MAX)


def test_other_buckets_are_forbidden(store):
    with pytest.raises(errors.ForbiddenLocation):
        store.storage.read_uri("gs://another-bucket/preprocessed/x.png", MAX)


def test_local_paths_outside_the_folder_are_forbidden(tmp_path):
    backend = make_backend("local", tmp_path, None)
    root = backend.settings.storage_dir.resolve()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    (root / "preprocessed").mkdir(parents=True, exist_ok=True)
    os.symlink(secret, root / "preprocessed" / "link.png")
    for uri in (
        secret.as_uri(),
        (root / "preprocessed" / "link.png").as_uri(),
        "file://" + str(root) + "/../secret.txt",
        "file://evil.example" + str(root / "x.png"),
    ):
        with pytest.raises((errors.ForbiddenLocation, errors.InvalidPath)):
            backend.storage.read_uri(uri, MAX)


def test_local_writes_leave_no_temporary_files(tmp_path):
    backend = make_backend("local", tmp_path, None)
    backend.storage.put_if_absent("preprocessed/a.png", b"abc", "image/png")
    backend.storage.put_if_absent("preprocessed/a.png", b"abc", "image/png")
    files = [p.name for p in Path(backend.settings.storage_dir).rglob("*") if p.is_file()]
    assert files == ["a.png"]


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_local_special_files_are_refused_without_blocking(tmp_path, kind, monkeypatch):
    """A FIFO inside the folder would block `open()` until a writer came, holding the thread."""
    import socket
    import time

    backend = make_backend("local", tmp_path, None)
    root = backend.settings.storage_dir
    special = root / "preprocessed" / f"special-{kind}.bmp"
    special.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(special)
    else:
        listener = socket.socket(socket.AF_UNIX)
        monkeypatch.chdir(special.parent)  # a relative name: AF_UNIX paths are short
        listener.bind(special.name)
    started = time.monotonic()
    with pytest.raises(errors.ServiceError) as refused:
        backend.storage.read_uri(special.resolve().as_uri(), MAX)
    assert refused.value.status < 500 and time.monotonic() - started < 1
    assert not isinstance(refused.value, errors.ObjectNotFound)


@pytest.mark.parametrize(
    "path",
    [
        "file:///{root}/a\nb.png",
        "file:///{root}/a\tb.png",
        "fi\tle:///{root}/ab.png",
        "file:///{root}/a\rb.png",
        " file:///{root}/ab.png",
        "file:///{root}/ab.png\n",
        "file:///{root}/ab.png ",
        "file:///{root}/a\x85b.png",
        "gs://test-bucket/a\tb.png",
        "g\ns://test-bucket/ab.png",
    ],
)
def test_a_path_a_parser_would_normalise_is_refused_not_read(store, path):
    """URL parsers drop tabs and newlines and strip blanks: `a\\nb.png` would read `ab.png`."""
    uri, _ = store.storage.put_if_absent("ab.png", b"another file", "image/png")
    root = uri.removeprefix("file:///").removesuffix("/ab.png")
    with pytest.raises(errors.InvalidPath, match="control characters"):
        store.storage.read_uri(path.format(root=root), MAX)
