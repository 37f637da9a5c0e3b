"""Which object names and paths the stores accept: the checks both backends share."""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

from common.errors import InvalidPath

MAX_KEY_BYTES = 1024  # GCS's own limit on object names


def check_key(key: str) -> str:
    """Refuse the names Cloud Storage refuses or a file system cannot take safely: empty,
    over 1024 bytes, control characters (Unicode Cc: C0, DEL, C1), lone surrogates (not
    encodable) and `.`/`..` segments, as given and once percent-decoded. Every other Unicode
    name is a name: format characters (U+200C/U+200D in Persian words and emoji sequences),
    other scripts, spaces and symbols."""
    if not key:
        raise InvalidPath("the path names no object")
    for candidate in (key, unquote(key)):
        if has_control_characters(candidate):
            raise InvalidPath("the path contains control characters or invalid text")
        if any(segment in (".", "..") for segment in candidate.replace("\\", "/").split("/")):
            raise InvalidPath("the path may not contain '.' or '..' segments")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidPath(f"object names are limited to {MAX_KEY_BYTES} bytes")
    return key


def has_control_characters(text: str) -> bool:
    """Control characters (Cc) or lone surrogates (Cs) anywhere in `text`."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def check_uri(uri: str) -> str:
    """Refuse a path whose parsing would silently change it: URL parsers drop tabs and
    newlines anywhere and strip leading and trailing blanks, so `file:///a\\nb.bmp` would read
    `ab.bmp`. Any control character, or blank at either end, is refused before parsing."""
    if has_control_characters(uri) or uri != uri.strip():
        raise InvalidPath("the path contains control characters or surrounding blanks")
    return uri
