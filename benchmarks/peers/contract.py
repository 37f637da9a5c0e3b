"""What every peer server shares with the project: the model file, its feeding, and the answer.

`POST /classify {"gcs_path": "file:///abs/x.bmp", "top_k": 5}` -> read that stored 224x224 BMP
(inside STORAGE_DIR, like the project's local storage), decode it to uint8 HxWx3, run the
project's ONNX export (uint8 NHWC in; the [-1, 1] scaling is inside the graph) on ONNX Runtime's
CPU provider, and answer `{"label", "confidence", "index", "top_k": [...]}` ranked the way the
project ranks it. Only the framework around these calls differs between peers.

`POST /preprocess` (multipart, the file in field `image`) -> decode it with an allowlist of
decoders and a pixel limit, upright (EXIF), RGB, resized to 224x224 (bilinear), stored as BMP
under its SHA-256 inside STORAGE_DIR, create-only, and answered
`{"gcs_path", "width", "height", "sha256"}`: the project's /preprocess for a photo of up to
448 px a side (past that the project also decodes JPEGs at reduced scale).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

MODEL_NAME = "mobilenet_v2_onnx"
ONNX_FILE = "model.onnx"
CLASS_INDEX_FILE = "imagenet_class_index.json"
NUM_CLASSES = 1000
MAX_TOP_K = 1000


class ContractError(Exception):
    """A request the contract refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def model_dir() -> Path:
    """The stored ONNX model the project serves: `PEERS_MODEL_DIR`, else the store's latest tag."""
    explicit = os.environ.get("PEERS_MODEL_DIR")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    base = home / "models" / MODEL_NAME
    return base / (base / "latest").read_text().strip()


def class_names(directory: Path | None = None) -> list[str]:
    """Class names by index, exactly as the project derives them from the stored class index."""
    index = json.loads(((directory or model_dir()) / CLASS_INDEX_FILE).read_text())
    return [index[str(i)][1].replace("_", " ") for i in range(NUM_CLASSES)]


def onnx_session(threads: int | None, *, spinning: bool = True):  # -> ort.InferenceSession
    """The project's model file on ORT's CPU provider with `threads` intra-op threads.

    `threads=None` keeps ORT's default (one per physical core). Sequential execution with one
    inter-op thread, as the project configures it.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = str(model_dir() / ONNX_FILE)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def storage_root() -> Path:
    return Path(os.environ.get("STORAGE_DIR", "data")).resolve()


def parse_request(body: dict, default_top_k: int = 5) -> tuple[str, int]:
    """(gcs_path, top_k) from a JSON body; 422 when either is missing or malformed."""
    path = body.get("gcs_path") if isinstance(body, dict) else None
    top_k = body.get("top_k", default_top_k) if isinstance(body, dict) else None
    if not isinstance(path, str) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ContractError(422, "expected {'gcs_path': 'file:///...', 'top_k': 1..1000}")
    return path, top_k


def read_stored(uri: str, root: Path) -> bytes:
    """The bytes of a `file://` URI inside `root` (404 when absent, 403 outside the folder)."""
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ContractError(400, "expected a file:// path")
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root):
        raise ContractError(403, "the path is outside the storage folder")
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ContractError(404, f"no stored object at {uri}") from exc


def decode(data: bytes) -> np.ndarray:
    """A stored image as uint8 HxWx3, decoded the way the project decodes a stored BMP."""
    try:
        image = Image.open(io.BytesIO(data), formats=("BMP", "PNG", "JPEG"))
        image.load()
    except Exception as exc:  # any decoder failure is the client's image
        raise ContractError(422, f"not a decodable image: {exc}") from exc
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_pixels(uri: str, root: Path) -> np.ndarray:
    return decode(read_stored(uri, root))


def answer(probabilities: np.ndarray, top_k: int, labels: list[str]) -> dict:
    """The project's answer for one softmax row: the top class and the ranked top-k."""
    top = np.argpartition(probabilities, -top_k)[-top_k:]
    ranked = top[np.argsort(probabilities[top])[::-1]]
    predictions = [
        {"label": labels[i], "index": int(i), "confidence": float(probabilities[i])} for i in ranked
    ]
    best = predictions[0]
    return {
        "label": best["label"],
        "confidence": best["confidence"],
        "index": best["index"],
        "top_k": predictions,
    }


def error_body(exc: ContractError) -> dict:
    return {"error": exc.message, "status": exc.status}


# ---------------------------------------------------------------- /preprocess

PREPROCESS_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
MAX_PIXELS = 40_000_000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MODEL_SIZE = 224
STORED_PREFIX = "preprocessed/"


def preprocess(data: bytes, root: Path) -> dict:
    """The project's /preprocess on one uploaded file: normalized, stored, answered."""
    if not data or len(data) > MAX_UPLOAD_BYTES:
        raise ContractError(413 if data else 400, "expected a non-empty upload of up to 20 MiB")
    try:
        image = Image.open(io.BytesIO(data), formats=PREPROCESS_FORMATS)
        if image.width * image.height > MAX_PIXELS:
            raise ContractError(413, "too many pixels")
        image.draft(None, (2 * MODEL_SIZE, 2 * MODEL_SIZE))
        image.load()
        upright = _UPRIGHT.get(image.getexif().get(0x0112, 1))
        if upright is not None:
            image = image.transpose(upright)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = image.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR)
    except ContractError:
        raise
    except Exception as exc:  # any decoder failure is the client's image
        raise ContractError(422, f"not a decodable image: {exc}") from exc
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    stored = buffer.getvalue()
    digest = hashlib.sha256(stored).hexdigest()
    target = root / f"{STORED_PREFIX}{digest}.bmp"
    _create_only(target, stored)
    return {
        "gcs_path": target.as_uri(),
        "width": MODEL_SIZE,
        "height": MODEL_SIZE,
        "sha256": digest,
    }


# EXIF orientation -> transpose, as common/images/decode.py has it (this runs outside its venv).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _create_only(target: Path, data: bytes) -> None:
    """Write `data` at `target` unless it exists, never half-written (a complete temporary file
    linked into place)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as temporary:
        temporary.write(data)
    try:
        os.link(temporary.name, target)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary.name)
