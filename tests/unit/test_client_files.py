"""Which files `image-pipeline` sends from a folder: real files in a temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

from client.pipeline import image_files


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_folders_give_their_photos_in_order_and_pass_over_hidden_names(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "b.JPG",
        "a.jfif",
        "sub/c.hif",
        "sub/d.HEIC",
        "notes.txt",
        "._b.JPG",
        ".hidden.png",
        ".thumbnails/e.jpg",
        "sub/.cache/f.webp",
    )
    (tmp_path / "folder.jpg").mkdir()  # a folder named like a photo is no photo
    os.symlink(tmp_path, tmp_path / "sub" / "loop")  # a link back up is not walked again
    found = image_files([tmp_path])
    assert found == [tmp_path / name for name in ("a.jfif", "b.JPG", "sub/c.hif", "sub/d.HEIC")]


def test_a_file_named_on_the_command_line_is_always_sent(tmp_path: Path) -> None:
    _touch(tmp_path, ".hidden.png", "notes.txt")
    named = [tmp_path / ".hidden.png", tmp_path / "notes.txt"]
    assert image_files(named) == named
