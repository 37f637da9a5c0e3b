"""INT8 post-training quantization of the ONNX export with NNCF, for the opt-in INT8 runtime.

NNCF (OpenVINO's quantization tool) measures each activation's range on calibration images and
writes an OpenVINO model whose 52 convolutions and classifier run in INT8. The calibration
images are scikit-image's bundled sample photos, not the six photos the held-out accuracy
sample is cut from (scripts/heldout.py), so the accuracy check does not see its own
calibration data. Quantization needs `nncf` and `scikit-image` at import time only; serving
needs just OpenVINO.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.heldout import random_view

# scikit-image's bundled sample photos (inside its wheel, no download)
CALIBRATION_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "logo.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
VIEWS_PER_PHOTO = 20  # 320 calibration images; NNCF's default subset is 300
SEED = 7


def calibration_views() -> list[np.ndarray]:
    """Seeded random (1, 224, 224, 3) uint8 views of the calibration photos."""
    folder = resources.files("skimage") / "data"
    rng = random.Random(SEED)
    views = []
    for name in CALIBRATION_PHOTOS:
        with resources.as_file(folder / name) as path:
            photo = Image.open(path).convert("RGB")
        views.extend(random_view(photo, rng)[None] for _ in range(VIEWS_PER_PHOTO))
    return views


def quantize_int8(onnx_path: Path, xml_path: Path) -> dict[str, str]:
    """Write the INT8 OpenVINO model (`xml_path` and its `.bin`); answers what to record."""
    import nncf
    import openvino as ov

    views = calibration_views()
    # convert_model folds constants; read_model would leave the depthwise convolutions' weights
    # behind a Reshape, where NNCF does not see weights and leaves those layers in FP32
    # (measured slower: benchmarks/decisions.md, D11)
    model = ov.convert_model(onnx_path)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(views),
        preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric INT8, what VNNI/AMX run fastest
        subset_size=len(views),
    )
    ov.save_model(quantized, str(xml_path), compress_to_fp16=False)  # keep FP32 where not INT8
    return {
        "quantizer": f"nncf {nncf.__version__}, preset performance",
        "calibration": f"{len(views)} views of scikit-image's {len(CALIBRATION_PHOTOS)} sample "
        "photos",
    }
