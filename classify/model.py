"""The classify model, one object for every path that classifies: the service, storage events
and `classify-bucket` all hold a `Classifier`.

It loads the stored model on the configured runtime, warms it, runs it on a batch of decoded
224x224 images (`predict`) and turns one image's softmax into `/classify`'s answer (`rank`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from classify.runtime_table import RuntimeSpec
from classify.runtime_table import spec as runtime_spec
from classify.runtimes import class_names, load_runtime
from classify.settings import ClassifySettings
from common.logs import label_process_logs
from common.schemas import MODEL_SIZE, ClassifyResponse, Prediction
from common.stage_metrics import timed
from common.threads import name_runtime_threads


class Classifier:
    """MobileNetV2 on one runtime: uint8 images in, softmax and ranked answers out."""

    def __init__(
        self, runtime: RuntimeSpec, model_dir: Path, tag: str, threads: int | None = None
    ) -> None:
        self.tag = tag
        self.labels = class_names(model_dir)
        with name_runtime_threads(runtime.name):  # its intra-op pools, named for `top -H`
            self.runtime = load_runtime(runtime, model_dir, threads)
            self.predict(np.zeros((1, MODEL_SIZE, MODEL_SIZE, 3), np.uint8))  # trace, allocate

    @classmethod
    def load(cls, settings: ClassifySettings, stored=None) -> Classifier:  # stored: bentoml.Model
        """The model `settings` name (`CLASSIFY_MODEL`, else the runtime family's import), from
        `stored` when the service declared it, else looked up (`find_model`)."""
        runtime = settings.runtime
        if stored is None:
            stored = find_model(settings.classify_model or f"{runtime.stored_model}:latest")
        label_process_logs(model=str(stored.tag), runtime=runtime.name)  # on every log line
        return cls(runtime, Path(stored.path), str(stored.tag), settings.model_threads)

    @property
    def runtime_name(self) -> str:
        return self.runtime.name

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax of a batch of (N, 224, 224, 3) uint8 images: float32 of shape (N, 1000)."""
        with timed("model", {"classify.batch_size": len(pixels)}):
            return self.runtime.predict(pixels)

    def rank(self, probabilities: np.ndarray, top_k: int) -> ClassifyResponse:
        """`/classify`'s answer from one image's softmax: the top class and the ranked top-k."""
        top = np.argpartition(probabilities, -top_k)[-top_k:]  # unordered top-k, O(n)
        ranked = top[np.argsort(probabilities[top])[::-1]]
        predictions = [
            Prediction(label=self.labels[i], index=int(i), confidence=float(probabilities[i]))
            for i in ranked
        ]
        best = predictions[0]
        return ClassifyResponse(
            label=best.label,
            confidence=best.confidence,
            index=best.index,
            top_k=predictions,
            model=self.tag,
            runtime=self.runtime.name,
        )

    def answers(self, images: list[np.ndarray], top_k: int) -> list[ClassifyResponse]:
        """Ranked answers for decoded images, in one model call."""
        return [self.rank(row, top_k) for row in self.predict(np.stack(images))]


def find_model(tag: str):  # -> bentoml.Model
    """A stored model by tag, outside `bentoml serve` too: inside a classify container the
    Bento's own model store (`$BENTO_PATH/models`, where `bentoml serve` finds it), else the
    BentoML store (BENTOML_HOME)."""
    import bentoml
    from bentoml._internal.models import ModelStore

    packed = Path(os.environ.get("BENTO_PATH", "/nonexistent")) / "models"
    if packed.is_dir():
        return bentoml.models.get(tag, _model_store=ModelStore(packed))
    return bentoml.models.get(tag)


def stored_model_dir(runtime: str) -> Path:
    """The folder of the stored model `runtime` loads by default (its family's latest import)."""
    return Path(find_model(f"{runtime_spec(runtime).stored_model}:latest").path)
