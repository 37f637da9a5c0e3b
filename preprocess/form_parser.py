"""A multipart/form-data body parsed as it streams in, every part kept in memory.

python-multipart's push parser (the one Starlette uses) with each part kept as views of the
received chunks and joined once at its end. Starlette's `MultiPartParser` writes a file part
chunk by chunk into a `SpooledTemporaryFile` and the caller reads it out again: two more copies
of every upload on the event loop (benchmarks/decisions.md, D18).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

# RFC 2046 5.1.1: 1-70 characters from this set, not ending in a space (quotes around it are
# the header's syntax, removed by the parameter parser).
BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class MalformedForm(ValueError):
    """The body is not a well-formed multipart/form-data body within the limits."""


@dataclass
class FormPart:
    """One part of the form: a file when the client gave it a filename, else a text field."""

    name: str
    filename: str | None
    chunks: list[memoryview | bytes] = field(default_factory=list)
    size: int = 0

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def content(self) -> bytes:
        return b"".join(self.chunks)

    def text(self) -> str:
        return _decoded(self.content())


def _decoded(value: bytes) -> str:
    """UTF-8 as browsers send it; Latin-1 (which decodes anything) for what is not."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


class StreamingForm:
    """Feed the body's chunks as they arrive, then `finish()` for the parts, in order.

    Text fields are capped at `max_field_bytes` and the parts at `max_parts`; files are bounded
    only by the caller's cap on the whole body.
    """

    def __init__(self, content_type: str, *, max_parts: int, max_field_bytes: int) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise MalformedForm("the Content-Type names no multipart boundary")
        if not BOUNDARY.fullmatch(boundary):
            raise MalformedForm(
                "the multipart boundary must be 1-70 letters, digits or '()+_,-./:=? (RFC 2046)"
            )
        self.max_parts = max_parts
        self.max_field_bytes = max_field_bytes
        self.parts: list[FormPart] = []
        self._current: FormPart | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MalformedForm:
            raise
        except (FormParserError, ValueError, IndexError, TypeError) as exc:
            # the parser's own errors, and whatever else it raises on bytes it did not expect
            raise MalformedForm(str(exc) or "invalid multipart data") from exc

    def finish(self) -> list[FormPart]:
        if not self._ended:
            raise MalformedForm("the body ends before the form's closing boundary")
        return self.parts

    def _part_begin(self) -> None:
        self._current = None
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise MalformedForm("a part's Content-Disposition names no field")
        if len(self.parts) >= self.max_parts:
            raise MalformedForm(f"the form has more than {self.max_parts} parts")
        filename = options.get(b"filename")
        self._current = FormPart(
            name=_decoded(options[b"name"]),
            filename=None if filename is None else _decoded(filename),
        )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:  # data before any part's headers: the parser reports the error
            return
        part.size += end - start
        if not part.is_file and part.size > self.max_field_bytes:
            raise MalformedForm(
                f"field {part.name!r} is over {self.max_field_bytes // 1024} KiB; send files "
                "with a filename"
            )
        # a view, not a copy: python-multipart passes the chunk itself (or its own constant
        # boundary bytes), both immutable
        view = memoryview(data)[start:end] if isinstance(data, bytes) else data[start:end]
        part.chunks.append(view)

    def _part_end(self) -> None:
        if self._current is not None:
            self.parts.append(self._current)
        self._current = None

    def _end(self) -> None:
        self._ended = True
