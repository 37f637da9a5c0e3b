"""Which files `image-pipeline` sends from a folder, and which `--resume` sends again: real
files in a temporary tree."""

from __future__ import annotations

import os
from pathlib import Path

from client.pipeline import image_files
from client.results import Outcome, ResultsFile


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


def test_resume_redoes_retryable_errors_and_keeps_permanent_ones(tmp_path):
    for suffix in (".csv", ".jsonl"):
        path = tmp_path / f"results{suffix}"
        first = ResultsFile(path, resume=False)
        first.write(Outcome(file="ok.jpg", label="tabby", index=281, confidence=0.9))
        first.write(Outcome(file="busy.jpg", error="503: busy", retryable=True))
        first.write(Outcome(file="auth.jpg", error="401: expired", retryable=True))
        first.write(Outcome(file="text.jpg", error="415: not an image", retryable=False))
        first.close()
        resumed = ResultsFile(path, resume=True)
        resumed.write(Outcome(file="busy.jpg", label="tabby", index=281, confidence=0.8))
        resumed.close()
        assert resumed.done == {"ok.jpg", "text.jpg"}
        again = ResultsFile(path, resume=True)
        again.close()
        assert again.done == {"ok.jpg", "text.jpg", "busy.jpg"}  # one row per file
        assert len(Path(path).read_text().splitlines()) == 3 + (suffix == ".csv")
