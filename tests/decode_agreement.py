"""Reduced-scale decoding against a full decode, on the labelled ImageNet sample.

Each image of `../shared/imagenet-val/` (read in place, never copied) is upscaled 4x to a
~900 px JPEG, uploaded to a running preprocess (which decodes it at reduced scale in libjpeg's
DCT domain) and classified by a running classify. The reference is the same JPEG decoded at
full resolution, normalized the same way, stored as-is and classified by the same classify.
Answers: the top-1 agreement between the two and the change in top-1 accuracy. The photos test
runs it on a subset; the pipeline benchmark on the whole sample.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from common.images.decode import decode_image, encode_stored, normalize
from common.schemas import ResizeMode
from common.storage import Storage

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("MODEL_ASSETS", REPO.parent / "shared" / "models")).resolve()
IMAGENET = ASSETS.parent / "imagenet-val"


def imagenet_sample(count: int | None = None) -> list[tuple[str, int]]:
    """(file, class index) of `count` images spread evenly over the sample (all when None)."""
    with open(IMAGENET / "labels.csv") as file:
        rows = [(row["file"], int(row["class_index"])) for row in csv.DictReader(file)]
    if count is None or count >= len(rows):
        return rows
    return rows[:: max(1, len(rows) // count)][:count]


def upscaled_4x(file: str) -> bytes:
    image = Image.open(IMAGENET / "images" / file).convert("RGB")
    image = image.resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def measure(
    preprocess_url: str,
    classify_url: str,
    storage: Storage,
    mode: str,
    sample: list[tuple[str, int]],
    threads: int = 4,
) -> dict[str, float | int]:
    """Served (reduced-scale) against full-decode top-1 on `sample`, through the services."""

    def answers(file: str) -> tuple[int, int]:
        data = upscaled_4x(file)
        form = {"image": (file, data)}
        stored = httpx.post(f"{preprocess_url}/preprocess", files=form, data={"mode": mode})
        stored.raise_for_status()
        served = _top1(classify_url, stored.json()["gcs_path"])
        full = normalize(decode_image(data, 10**8), ResizeMode(mode))
        key = f"reference/{mode}/{file}.bmp"
        uri, _ = storage.put_if_absent(key, encode_stored(full), "image/bmp")
        return served, _top1(classify_url, uri)

    with ThreadPoolExecutor(threads) as pool:
        pairs = list(pool.map(answers, [file for file, _ in sample]))
    served, reference = (np.array(column) for column in zip(*pairs, strict=True))
    truth = np.array([label for _, label in sample])
    return {
        "images": len(sample),
        "agreement": float(np.mean(served == reference)),
        "served_top1": float(np.mean(served == truth)),
        "full_decode_top1": float(np.mean(reference == truth)),
        "accuracy_drop_points": float(np.mean(reference == truth) - np.mean(served == truth)) * 100,
    }


def _top1(classify_url: str, gcs_path: str) -> int:
    answer = httpx.post(f"{classify_url}/classify", json={"gcs_path": gcs_path}, timeout=60)
    answer.raise_for_status()
    return answer.json()["index"]
