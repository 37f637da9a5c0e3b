"""A labelled held-out sample for judging a reduced-precision runtime against FP32.

No labelled ImageNet images can be fetched here, so the sample is seeded random views of the
six shipped photos (crops of 25-100% of the area, aspect 3:4 to 4:3, mirrored half the time),
each labelled with its photo's ImageNet class. Nothing was tuned on it: BF16 needs no
calibration, and INT8 is calibrated on other photos (scripts/quantize_int8.py). Views of six
photos are correlated, so this is a sanity bound, not an ImageNet accuracy figure
(benchmarks/decisions.md, D11).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Each photo's class (Keras' class names), as ../shared/models/README.md and the tests give it.
PHOTO_LABELS = {
    "grace_hopper": "military uniform",
    "cat": "Egyptian cat",
    "parrot": "macaw",
    "bird": "chickadee",
    "dragonfly": "dragonfly",
    "missvickie_potato_chips": "packet",
}


def labelled_views(
    photos_dir: Path, per_photo: int = 100, seed: int = 2026
) -> tuple[np.ndarray, list[str]]:
    """(N, 224, 224, 3) uint8 views of the photos and the class name of each."""
    rng = random.Random(seed)
    views, labels = [], []
    for stem, label in PHOTO_LABELS.items():
        (path,) = photos_dir.glob(f"{stem}.*")
        photo = Image.open(path).convert("RGB")
        for _ in range(per_photo):
            views.append(random_view(photo, rng))
            labels.append(label)
    return np.stack(views), labels


def random_view(photo: Image.Image, rng: random.Random) -> np.ndarray:
    """A 224x224 uint8 view: a crop of 25-100% of the area, aspect 3:4 to 4:3, maybe mirrored."""
    width, height = photo.size
    area, aspect = rng.uniform(0.25, 1.0) * width * height, rng.uniform(3 / 4, 4 / 3)
    w = min(width, int((area * aspect) ** 0.5))
    h = min(height, int((area / aspect) ** 0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    view = photo.crop((left, top, left + w, top + h))
    view = view.resize((224, 224), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    return np.asarray(view)


def top1_accuracy(probabilities: np.ndarray, labels: list[str], class_names: list[str]) -> float:
    """Share of rows whose most probable class is the row's label."""
    predicted = [class_names[i] for i in probabilities.argmax(axis=1)]
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
