"""Every model runtime classify can serve with: one record each, the one place to add one.

Settings validation (the `Runtime` names), batching defaults, model calls per core, the stored
model each loads, the reduced-precision set and the container image that serves each are all
read from here; `classify/runtimes.py` holds one loader per family. Pure data: no runtime library is
imported (the settings of preprocess read this module too).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    # The stored model family it loads (scripts/import_model.py writes one model per family,
    # with only that family's files), its loader in classify/runtimes.py, and the
    # pyproject.toml extra holding the packages a Bento of that family installs.
    family: str
    precision: str  # "fp32", or an opt-in reduced one: "bf16", "int8"
    # Concurrent requests share model calls by default: where the batching benchmark measured
    # batched within 5% of unbatched at concurrency 32 and no worse at 1 (benchmarks/batching.md).
    batched_by_default: bool
    # Unbatched, model calls at once per core: enough that a core stays busy while another
    # call hands its answer back through the GIL (OpenVINO's calls are shorter).
    calls_per_core: int
    # The classify Bento and container image that serves it (scripts/build, scripts/deploy,
    # sizing), and whether scripts/build builds that image for it (`--arg runtime=NAME`), so it
    # is the runtime the image serves unless CLASSIFY_RUNTIME says otherwise.
    image: str
    image_default: bool = False

    @property
    def stored_model(self) -> str:
        return f"mobilenet_v2_{self.family}"

    @property
    def reduced_precision(self) -> bool:
        """Accepted on top-1 accuracy within 1 point of FP32 instead of matching Keras'
        probabilities (tests/service/test_runtimes.py)."""
        return self.precision != "fp32"


TABLE: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("onnxruntime", "onnx", "fp32", False, 2, "classify", image_default=True),
        RuntimeSpec("tensorflow", "keras", "fp32", False, 2, "classify-tensorflow", True),
        RuntimeSpec("openvino", "openvino", "fp32", False, 4, "classify-openvino"),
        RuntimeSpec("openvino-int8", "openvino", "int8", False, 4, "classify-openvino", True),
        RuntimeSpec("openvino-bf16", "openvino", "bf16", True, 4, "classify-openvino"),
    )
}
DEFAULT_RUNTIME = "onnxruntime"  # the fastest accepted FP32 runtime (benchmarks/results.md)

# The names settings accept (CLASSIFY_RUNTIME), as an enum for pydantic and the docs.
Runtime = StrEnum("Runtime", {name.replace("-", "_"): name for name in TABLE})
ALL_RUNTIMES = tuple(TABLE)
FP32_RUNTIMES = tuple(name for name, spec in TABLE.items() if not spec.reduced_precision)
REDUCED_PRECISION_RUNTIMES = tuple(name for name, spec in TABLE.items() if spec.reduced_precision)
BATCHED_BY_DEFAULT = frozenset(
    Runtime(name) for name, spec in TABLE.items() if spec.batched_by_default
)
STORED_MODELS = {spec.family: spec.stored_model for spec in TABLE.values()}
# The runtime each classify image is built for (its Bento's `runtime` build argument).
IMAGE_RUNTIMES = {spec.image: name for name, spec in TABLE.items() if spec.image_default}


def spec(name: str) -> RuntimeSpec:
    """The record of runtime `name`, or a ValueError naming the choices."""
    try:
        return TABLE[str(name)]
    except KeyError:
        raise ValueError(
            f"unknown runtime {name!r}; choose one of {', '.join(ALL_RUNTIMES)}"
        ) from None


if __name__ == "__main__":  # `python -m common.runtime_table`: scripts/build's list of images
    for image, runtime in IMAGE_RUNTIMES.items():
        print(image, runtime)
