"""Inference with the shipped ONNX model: one session per process, state per stream.

    factory = load_enhancer_factory(path_or_None)   # loads and checks the model once
    enhancer = factory()                            # a new Enhancer per stream

The graph takes one frame of features and its recurrent / convolution-history
state as named inputs and returns named outputs (model.py names them); nothing is
read by position.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.analysis import Frames
from percepnet.constants import NB_BANDS, NB_FEATURES
from percepnet.enhancer import Enhancer, GainPair

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "percepnet-int8.onnx"

INPUT_FEATURES = "features"
OUTPUT_GAINS = "gains"
OUTPUT_STRENGTHS = "strengths"
STATE_SUFFIX = "_out"

FloatArray = npt.NDArray[np.float64]


class ModelError(RuntimeError):
    """A missing or unusable model file."""


class OnnxModel:
    """A loaded, validated streaming model; thread-safe to share between streams."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"cannot load model {self.path}: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if INPUT_FEATURES not in inputs or not {OUTPUT_GAINS, OUTPUT_STRENGTHS} <= outputs:
            raise ModelError(
                f"{self.path} is not a PercepNet streaming model (inputs {sorted(inputs)})"
            )
        self.state_names = [n for n in inputs if n != INPUT_FEATURES]
        missing = [n for n in self.state_names if n + STATE_SUFFIX not in outputs]
        if missing:
            raise ModelError(f"{self.path}: no output for state {missing}")
        self.state_shapes = {n: tuple(int(d) for d in inputs[n].shape) for n in self.state_names}
        self.output_names = [OUTPUT_GAINS, OUTPUT_STRENGTHS] + [
            n + STATE_SUFFIX for n in self.state_names
        ]
        # One real run: fails now, at load, rather than on the first audio frame.
        g, r, _ = self.step(np.zeros((1, NB_FEATURES), np.float32), self.initial_state())
        if g.shape != (1, NB_BANDS) or r.shape != (1, NB_BANDS) or not np.isfinite(g).all():
            raise ModelError(f"{self.path}: unexpected output shapes {g.shape}, {r.shape}")

    def initial_state(self) -> dict[str, npt.NDArray[np.float32]]:
        return {n: np.zeros(s, np.float32) for n, s in self.state_shapes.items()}

    def step(
        self, features: npt.NDArray[np.float32], state: dict[str, npt.NDArray[np.float32]]
    ) -> tuple[
        npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, npt.NDArray[np.float32]]
    ]:
        feed = {INPUT_FEATURES: features, **state}
        outs = self.session.run(self.output_names, feed)
        new_state = {n: outs[2 + i] for i, n in enumerate(self.state_names)}
        return outs[0], outs[1], new_state


class OnnxSource:
    """Per-stream GainSource: the shared model plus this stream's state."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self._state = self.model.initial_state()

    def __call__(self, frames: Frames) -> GainPair:
        feats = frames.features.astype(np.float32)
        g = np.empty((len(frames), NB_BANDS))
        r = np.empty((len(frames), NB_BANDS))
        for i in range(len(frames)):
            gi, ri, self._state = self.model.step(feats[i : i + 1], self._state)
            g[i], r[i] = gi[0], ri[0]
        return g, r


EnhancerFactory = Callable[[], Enhancer]


def load_model(path: str | Path | None = None) -> OnnxModel:
    return OnnxModel(path if path is not None else DEFAULT_MODEL)


def load_enhancer_factory(
    path: str | Path | None = None, **enhancer_kwargs: object
) -> EnhancerFactory:
    """Load the model once; the returned callable makes a new per-stream Enhancer."""
    model = load_model(path)

    def factory() -> Enhancer:
        return Enhancer(OnnxSource(model), **enhancer_kwargs)  # type: ignore[arg-type]

    return factory
