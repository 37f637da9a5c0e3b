"""The upload's multipart parser on its own: real bodies (as httpx encodes them) fed in chunks
of every awkward size, so a boundary split across chunks is found and the file comes out
byte for byte. The served behaviour (the 4xx each bad form gets) is in test_errors.py."""

from __future__ import annotations

import os

import httpx
import pytest

from preprocess.form_parser import MalformedForm, StreamingForm

LIMITS = {"max_parts": 8, "max_field_bytes": 64 * 1024}


def _body(files: dict, data: dict | None = None) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://127.0.0.1/preprocess", files=files, data=data)
    return request.headers["content-type"], request.read()


def _parse(content_type: str, body: bytes, chunk: int) -> list:
    form = StreamingForm(content_type, **LIMITS)
    for at in range(0, len(body), chunk):
        form.feed(body[at : at + chunk])
    return form.finish()


# file contents that hold what a boundary starts with (CRLF, dashes) right at the edges
PAYLOADS = {
    "random": os.urandom(300_000),
    "crlf and dashes": b"\r\n--\r\n--" + os.urandom(5_000) + b"\r\n--",
    "empty": b"",
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("chunk", [1, 7, 69, 4096, 65_536, 10**7])
def test_file_and_field_come_out_exactly_in_any_chunking(payload, chunk):
    data = PAYLOADS[payload]
    if chunk == 1 and len(data) > 10_000:
        data = data[:10_000]  # byte by byte through the parser: keep it quick
    content_type, body = _body({"image": ("p.jpg", data, "image/jpeg")}, {"mode": "resize"})
    parts = _parse(content_type, body, chunk)
    by_name = {part.name: part for part in parts}
    assert sorted(by_name) == ["image", "mode"]
    assert by_name["image"].is_file and by_name["image"].filename == "p.jpg"
    assert by_name["image"].content() == data
    assert not by_name["mode"].is_file and by_name["mode"].text() == "resize"


def test_a_text_field_is_not_a_file():
    content_type, body = _body({"image": (None, "http://127.0.0.1:1/x.jpg")})
    (part,) = _parse(content_type, body, 100)
    assert part.name == "image" and not part.is_file
    assert part.text() == "http://127.0.0.1:1/x.jpg"


def test_repeated_fields_are_all_kept_in_order():
    content_type, body = _body([("image", ("a", b"1")), ("image", ("b", b"2"))])
    assert [part.content() for part in _parse(content_type, body, 5)] == [b"1", b"2"]


def test_no_boundary_is_malformed():
    with pytest.raises(MalformedForm, match="boundary"):
        StreamingForm("multipart/form-data", **LIMITS)


def test_a_body_cut_before_the_closing_boundary_is_malformed():
    content_type, body = _body({"image": ("p.jpg", b"x" * 1000)})
    with pytest.raises(MalformedForm, match="closing boundary"):
        _parse(content_type, body[:-20], 64)


def test_a_part_without_a_name_is_malformed():
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; filename="a"\r\n\r\nxyz\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    with pytest.raises(MalformedForm, match="names no field"):
        _parse(f"multipart/form-data; boundary={boundary}", body, 10)


def test_too_many_parts_and_an_overlong_field_are_refused():
    content_type, body = _body([("mode", (None, "resize"))] * 9)
    with pytest.raises(MalformedForm, match="more than 8 parts"):
        _parse(content_type, body, 1000)
    content_type, body = _body({"mode": (None, "x" * (64 * 1024 + 1))})
    with pytest.raises(MalformedForm, match="over 64 KiB"):
        _parse(content_type, body, 1000)


def test_garbage_is_malformed():
    content_type, _ = _body({"image": ("p.jpg", b"x")})
    with pytest.raises(MalformedForm):
        _parse(content_type, b"this is not a multipart body at all\r\n" * 10, 50)
