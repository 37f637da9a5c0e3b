"""Bad input gets the right 4xx with a JSON message, nothing is stored, and service goes on."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from helpers import classify, encode, serving_process, stored_keys, upload
from PIL import Image

MIB = 1024 * 1024


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(Image.new("RGB", size, (200, 30, 30)), "JPEG")


def _bomb_png() -> bytes:
    """50 megapixels of one grey: a ~50 KB file that declares more pixels than the limit."""
    return encode(Image.new("L", (10_000, 5_000), 128), "PNG", optimize=True)


def _corrupt_png() -> bytes:
    data = bytearray(encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG"))
    data[100:140] = b"\x00" * 40  # damages the IDAT stream; the CRC check fails
    return bytes(data)


UPLOAD_CASES = {
    "not an image": (b"hello, I am text pretending to be a photo\n", 415, "not_an_image", "not a"),
    "truncated jpeg": (_jpeg((640, 480))[:2000], 422, "corrupt_image", "truncated"),
    "corrupt png": (_corrupt_png(), 422, "corrupt_image", "corrupt"),
    "empty upload": (b"", 400, "empty_upload", "empty"),
    "unsupported format": (
        encode(Image.new("RGB", (8, 8)), "TIFF"),
        415,
        "unsupported_format",
        "TIFF",
    ),
    "too many pixels": (_bomb_png(), 413, "too_many_pixels", "limit"),
    "over the size limit": (b"\xff\xd8" + b"\0" * (21 * MIB), 413, "upload_too_large", "limit"),
}


def _assert_error(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert words.lower() in body["error"].lower(), body


def _assert_still_serves(services, photos) -> None:
    good = upload(services.preprocess.url, photos["cat"])
    assert good.status_code == 200, good.text
    answer = classify(services.classify.url, good.json()["gcs_path"])
    assert answer.status_code == 200 and answer.json()["label"] == "Egyptian cat"


@pytest.mark.parametrize("case", UPLOAD_CASES)
def test_bad_uploads_are_refused_and_nothing_is_stored(services, photos, case):
    data, status, code, words = UPLOAD_CASES[case]
    before = stored_keys(services.backend)
    _assert_error(upload(services.preprocess.url, data), status, code, words)
    assert stored_keys(services.backend) == before
    _assert_still_serves(services, photos)


def test_malformed_requests_to_preprocess(services, photos):
    url = f"{services.preprocess.url}/preprocess"
    cases = [
        (
            httpx.post(url, files={"picture": ("a.jpg", photos["cat"])}),
            400,
            "invalid_form",
            "picture",
        ),
        (
            httpx.post(url, data={"mode": "resize"}, files={}),
            415,
            "expected_multipart",
            "multipart",
        ),
        (
            httpx.post(url, json={"image": "http://127.0.0.1/x.jpg"}),
            415,
            "expected_multipart",
            "multipart",
        ),
        (
            httpx.post(url, files={"image": (None, "http://127.0.0.1:1/x.jpg")}),
            400,
            "invalid_form",
            "one file upload (URLs are not fetched)",
        ),
    ]
    for response, status, code, words in cases:
        _assert_error(response, status, code, words)
    only_mode = httpx.post(url, files={"mode": (None, "resize")})
    _assert_error(only_mode, 400, "invalid_form", "missing file field 'image'")
    bad_mode = upload(services.preprocess.url, photos["cat"], mode="stretch")
    assert bad_mode.status_code == 400 and "mode" in bad_mode.text
    _assert_still_serves(services, photos)


def _multipart(fields: list) -> tuple[dict[str, str], bytes]:
    request = httpx.Request("POST", "http://127.0.0.1/", files=fields)
    return {"content-type": request.headers["content-type"]}, request.read()


def test_malformed_multipart_bodies(services, photos):
    """Each gets a 400 naming what is wrong, nothing is stored, and the service goes on."""
    url = f"{services.preprocess.url}/preprocess"
    cat = photos["cat"]
    two_files = _multipart([("image", ("a.jpg", cat)), ("image", ("b.jpg", cat))])
    mode_file = _multipart([("image", ("a.jpg", cat)), ("mode", ("m.txt", b"resize"))])
    complete = _multipart([("image", ("a.jpg", cat))])
    cases = [
        (*two_files, "one file upload"),
        (*mode_file, "'mode' must be one text value"),
        ({"content-type": "multipart/form-data"}, complete[1], "boundary"),
        (complete[0], complete[1][:-30], "closing boundary"),
        (*_multipart([("mode", (None, "resize"))] * 9), "more than 8 parts"),
    ]
    before = stored_keys(services.backend)
    for headers, body, words in cases:
        _assert_error(httpx.post(url, headers=headers, content=body), 400, "invalid_form", words)
    assert stored_keys(services.backend) == before
    _assert_still_serves(services, photos)


def test_an_upload_streamed_past_the_cap_is_cut_off(services, photos):
    """Without a Content-Length (chunked), the cap is enforced while the body streams in."""
    headers, body = _multipart([("image", ("big.jpg", b"\xff\xd8" + bytes(21 * MIB)))])

    def chunks():
        for at in range(0, len(body), MIB):
            yield body[at : at + MIB]

    response = httpx.post(
        f"{services.preprocess.url}/preprocess", headers=headers, content=chunks(), timeout=60
    )
    _assert_error(response, 413, "upload_too_large", "limit")
    _assert_still_serves(services, photos)


def test_bad_paths_to_classify(services, photos):
    gcs = services.backend.name == "gcs"
    ok_path = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]
    missing = ok_path.replace("preprocessed/", "preprocessed/missing-")
    other_place = "file:///etc/passwd" if gcs else "gs://test-bucket/preprocessed/x.png"
    cases = [
        ("not a path", 400, "invalid_path", "expected"),
        ("http://127.0.0.1/x.png", 400, "invalid_path", "expected"),
        (
            "gs://other-bucket/preprocessed/x.png" if gcs else "file:///etc/passwd",
            403,
            "outside_storage",
            "",
        ),
        (other_place, 403, "outside_storage", ""),
        (ok_path.replace("preprocessed/", "preprocessed/../"), 400, "invalid_path", ".."),
        (ok_path.replace("preprocessed/", "preprocessed/%2e%2e/"), 400, "invalid_path", ".."),
        (missing, 404, "not_found", "no"),
    ]
    for path, status, code, words in cases:
        _assert_error(classify(services.classify.url, path), status, code, words)
    _assert_still_serves(services, photos)


def test_a_path_a_parser_would_normalise_is_refused_not_read_as_another(services, photos):
    """URI parsers drop tabs and newlines anywhere and strip blanks at the ends: with them a
    path naming no object read another one (200 with its label). Each is a 400 now."""
    stored = upload(services.preprocess.url, photos["parrot"]).json()["gcs_path"]
    scheme, rest = stored.split("://", 1)
    cut = len(rest) - 10
    cases = [
        f"{scheme}://{rest[:cut]}\n{rest[cut:]}",
        f"{scheme}://{rest[:cut]}\t{rest[cut:]}",
        f"{scheme}://{rest[:cut]}\r{rest[cut:]}",
        f"{scheme[0]}\t{scheme[1:]}://{rest}",
        f" {stored}",
        f"{stored}\n",
        f"{stored}\x85",
    ]
    for path in cases:
        _assert_error(classify(services.classify.url, path), 400, "invalid_path", "control")
    assert classify(services.classify.url, stored).json()["label"] == "macaw"
    _assert_still_serves(services, photos)


def test_stored_object_that_is_not_an_image(services, photos):
    uri, _ = services.backend.storage.put_if_absent("uploads/notes.png", b"plain text", "image/png")
    _assert_error(classify(services.classify.url, uri), 415, "not_an_image", "not a")
    _assert_still_serves(services, photos)


def test_invalid_classify_bodies(services, photos):
    url = f"{services.classify.url}/classify"
    for body in ({}, {"path": "gs://x/y"}, {"gcs_path": ""}, {"gcs_path": "x", "top_k": 0}):
        response = httpx.post(url, json=body)
        assert response.status_code == 400, (body, response.text)
        assert "error" in response.json()
    assert (
        httpx.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    _assert_still_serves(services, photos)


def test_bomb_sample_is_small_on_the_wire_but_huge_in_pixels():
    """The generated bomb really is small on the wire and large in pixels."""
    bomb = _bomb_png()
    assert len(bomb) < 200_000
    assert Image.open(io.BytesIO(bomb)).size == (10_000, 5_000)


def test_media_types_and_boundaries_follow_their_rfcs(services, photos):
    """Media types are case-insensitive; quoted boundaries work; over-long ones are a 400."""
    url = f"{services.preprocess.url}/preprocess"
    headers, body = _multipart([("image", ("a.jpg", photos["cat"]))])
    boundary = headers["content-type"].split("boundary=")[1]
    shouting = {"content-type": f"MULTIPART/FORM-DATA; BOUNDARY={boundary}"}
    assert httpx.post(url, headers=shouting, content=body).status_code == 200
    quoted = {"content-type": f'multipart/form-data; boundary="{boundary}"'}
    assert httpx.post(url, headers=quoted, content=body).status_code == 200
    long_boundary = "b" * 200
    long_body = body.replace(boundary.encode(), long_boundary.encode())
    long_headers = {"content-type": f"multipart/form-data; boundary={long_boundary}"}
    response = httpx.post(url, headers=long_headers, content=long_body, timeout=10)
    _assert_error(response, 400, "invalid_form", "boundary")
    path = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]
    answer = httpx.post(
        f"{services.classify.url}/classify",
        content=f'{{"gcs_path": "{path}"}}',
        headers={"content-type": "APPLICATION/JSON; charset=UTF-8"},
    )
    assert answer.status_code == 200, answer.text
    _assert_still_serves(services, photos)


@pytest.mark.parametrize("service", ["classify", "preprocess"])
def test_the_frameworks_own_errors_are_json(services, service):
    """A wrong method, an unknown route: the same JSON shape as every other error."""
    url = getattr(services, service).url
    route = f"{url}/{service}"
    for response, status in (
        (httpx.get(route), 405),
        (httpx.put(route, content=b"x"), 405),
        (httpx.get(f"{url}/no-such-route"), 404),
    ):
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert set(response.json()) == {"error", "code"}


HOSTILE_PATHS = [
    "file:///{root}/preprocessed/",  # a directory (once: a 500 and a leaked descriptor)
    "file:///{root}/preprocessed/x%00.bmp",
    "file:///{root}/preprocessed/" + "x" * 5000,
    "file:///{root}/preprocessed/" + "a/" * 600,
    "file://[::1/x",
    "gs://[x/y",
    "\x00",
    "file:///{root}/preprocessed/%ff.bmp",
    "file:///{root}/loop",
    "gs://test-bucket/" + "k" * 2000,
    "gs://test-bucket/preprocessed/\ud800",
]


def test_hundreds_of_bad_paths_leak_nothing(services, photos):
    """Every hostile path is a 4xx; the server's descriptors and memory stay where they were."""

    if services.backend.name == "local":
        root = services.backend.settings.storage_dir.resolve()
        (root / "preprocessed").mkdir(parents=True, exist_ok=True)
        loop = root / "loop"
        if not loop.is_symlink():
            loop.symlink_to(loop)
    else:
        root = "nowhere"
    server = serving_process(services.classify)

    def classify_raw(path: str) -> httpx.Response:  # ASCII JSON: a lone surrogate as \\ud800
        body = json.dumps({"gcs_path": path.format(root=root)})
        headers = {"content-type": "application/json"}
        return httpx.post(f"{services.classify.url}/classify", content=body, headers=headers)

    for path in HOSTILE_PATHS:  # warm up whatever caches a first error fills
        classify_raw(path)
    descriptors, threads, rss = server.num_fds(), server.num_threads(), server.memory_info().rss
    for _ in range(30):
        for path in HOSTILE_PATHS:
            response = classify_raw(path)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert set(response.json()) == {"error", "code"}
    assert server.num_fds() <= descriptors + 2
    assert server.num_threads() <= threads + 2  # no thread left behind by a refused read
    assert server.memory_info().rss < rss + 32 * MIB
    _assert_still_serves(services, photos)


def test_json_bodies_are_capped_while_they_stream(services, photos):
    """BentoML reads a JSON body whole: a huge one is refused before it is held in memory."""
    url = f"{services.classify.url}/classify"
    huge = b'{"gcs_path": "' + b"a" * (8 * MIB) + b'"}'
    headers = {"content-type": "application/json"}
    _assert_error(httpx.post(url, content=huge, headers=headers), 413, "body_too_large", "over")

    def chunks():
        for at in range(0, len(huge), 256 * 1024):
            yield huge[at : at + 256 * 1024]

    streamed = httpx.post(url, content=chunks(), headers=headers, timeout=30)
    _assert_error(streamed, 413, "body_too_large", "over")
    _assert_still_serves(services, photos)
