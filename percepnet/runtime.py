"""Loading the shipped model for inference (placeholder until the trained model lands).

Contract used by the server and the CLI:
    factory = load_enhancer_factory(path_or_None)   # loads the ONNX model once
    enhancer = factory()                            # a new Enhancer per stream
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from percepnet.enhancer import Enhancer

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "percepnet-int8.onnx"


class ModelError(RuntimeError):
    """A missing or unusable model file."""


EnhancerFactory = Callable[[], Enhancer]


def load_enhancer_factory(path: str | Path | None = None) -> EnhancerFactory:
    model = Path(path) if path is not None else DEFAULT_MODEL
    if not model.exists():
        raise ModelError(f"model file not found: {model}")
    raise ModelError("the ONNX runtime source is not built yet")
