#!/usr/bin/env python
"""Import Keras MobileNetV2 (ImageNet) into the BentoML model store, one model per runtime.

Weights come from Keras' own `weights="imagenet"` download, or from a local HDF5/Keras
weights file (`--weights PATH`). Each runtime family gets a stored model with only the files
it loads, so that each Bento (and container image) carries no model file it never reads:
`mobilenet_v2_keras` (the Keras model, for TensorFlow), `mobilenet_v2_onnx` (an ONNX export:
uint8 pixels in, softmax out, scaling included, for ONNX Runtime) and `mobilenet_v2_openvino`
(the same export plus its INT8 quantization, for OpenVINO). Each holds the class index too.
Importing the same weights again reuses the stored models instead of piling up versions.

    python -m scripts.import_model                      # Keras downloads the weights
    python -m scripts.import_model --weights ../shared/models/mobilenet_v2_imagenet.h5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from classify.runtime_table import STORED_MODELS
from classify.runtimes import CLASS_INDEX_FILE, INT8_FILE, KERAS_FILE, ONNX_FILE
from scripts.quantize_int8 import quantize_int8

LAYOUT = 4  # bump when the stored files change, so older imports are not reused
# The files each stored model holds (besides the class index).
INT8_FILES = (INT8_FILE, INT8_FILE.replace(".xml", ".bin"))
FILES = {"keras": (KERAS_FILE,), "onnx": (ONNX_FILE,), "openvino": (ONNX_FILE, *INT8_FILES)}
CLASS_INDEX_URL = (
    "https://storage.googleapis.com/download.tensorflow.org/data/imagenet_class_index.json"
)
CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"  # the hash Keras pins for this file


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def class_index_file(path: Path | None) -> Path:
    """The class index: the given file, or Keras' cached download of it."""
    if path is not None:
        return path
    import keras

    return Path(
        keras.utils.get_file(
            "imagenet_class_index.json",
            CLASS_INDEX_URL,
            cache_subdir="models",
            file_hash=CLASS_INDEX_MD5,
        )
    )


def check_class_index(path: Path) -> None:
    index = json.loads(path.read_text())
    if sorted(map(int, index)) != list(range(1000)):
        raise SystemExit(f"{path}: expected 1000 ImageNet classes keyed 0..999")


def export_onnx(model, path: Path) -> None:  # model: a keras.Model
    """Write `model` as ONNX taking uint8 NHWC pixels, with MobileNetV2's scaling inside."""
    import tensorflow as tf
    import tf2onnx

    from classify.runtimes import scale_pixels_tf

    signature = (tf.TensorSpec((None, 224, 224, 3), tf.uint8, name="pixels"),)

    @tf.function(input_signature=signature)
    def predict(pixels: tf.Tensor) -> tf.Tensor:
        return model(scale_pixels_tf(pixels), training=False)

    proto, _ = tf2onnx.convert.from_function(predict, input_signature=signature, opset=17)
    path.write_bytes(proto.SerializeToString())


def find_existing(name: str, weights_id: str) -> str | None:
    """Tag of a stored model imported from the same weights, if any."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(name)
    except NotFound:
        return None
    for model in models:
        metadata = model.info.metadata
        if metadata.get("weights_id") == weights_id and metadata.get("layout") == LAYOUT:
            return str(model.tag)
    return None


def import_model(weights: Path | None, class_index: Path | None) -> list[str]:
    """Store the three models (or find them stored already); answers their tags."""
    import bentoml
    import keras

    weights_id = (
        f"sha256:{sha256_of(weights)}" if weights else f"keras-imagenet:{keras.__version__}"
    )
    existing = {family: find_existing(name, weights_id) for family, name in STORED_MODELS.items()}
    if all(existing.values()):
        print(f"{', '.join(existing.values())} already hold these weights; nothing to do")
        return list(existing.values())

    index_path = class_index_file(class_index)
    check_class_index(index_path)
    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3),
        weights=str(weights) if weights else "imagenet",
        include_top=True,
        classes=1000,
    )
    metadata = {
        "weights_id": weights_id,
        "layout": LAYOUT,
        "weights_source": str(weights) if weights else "keras weights='imagenet'",
        "keras_version": keras.__version__,
        "input": "uint8 RGB 224x224, scaled to [-1, 1] (mobilenet_v2.preprocess_input)",
        "parameters": model.count_params(),
    }
    tags = []
    with tempfile.TemporaryDirectory(prefix="mobilenet-v2-") as scratch:
        files = Path(scratch)
        model.save(files / KERAS_FILE)
        export_onnx(model, files / ONNX_FILE)
        print("quantizing to INT8 (calibration statistics) ...", flush=True)
        int8_metadata = quantize_int8(files / ONNX_FILE, files / INT8_FILE)
        shutil.copyfile(index_path, files / CLASS_INDEX_FILE)
        for family, name in STORED_MODELS.items():
            if existing[family]:
                tags.append(existing[family])
                continue
            extra = int8_metadata if family == "openvino" else {}
            with bentoml.models.create(
                name,
                labels={"framework": family, "dataset": "imagenet", "architecture": "mobilenet_v2"},
                metadata={**metadata, **extra, "files": ", ".join(FILES[family])},
            ) as stored:
                for file in (*FILES[family], CLASS_INDEX_FILE):
                    shutil.copyfile(files / file, stored.path_of(file))
            print(f"imported {stored.tag} from {weights_id}")
            tags.append(str(stored.tag))
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="local MobileNetV2 weights file (.h5)")
    parser.add_argument("--class-index", type=Path, help="local imagenet_class_index.json")
    args = parser.parse_args(argv)
    for path in (args.weights, args.class_index):
        if path is not None and not path.is_file():
            parser.error(f"{path} is not a file")
    import_model(args.weights, args.class_index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
