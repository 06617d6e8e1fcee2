"""Inference with the shipped ONNX model: one session per process, state per stream.

    factory = load_enhancer_factory(path_or_None)   # loads and checks the model once
    enhancer = factory()                            # a new Enhancer per stream

The graph takes one frame of features and its recurrent / convolution-history
state as named inputs and returns named outputs (model.py names them); nothing is
read by position. Its stream axis is dynamic: `gains_for_many` advances many
streams' models in one run per frame, so the weights are read once for all of
them (a service worker does this each time several streams have a packet ready).
Runs of a fixed number of streams go through an IOBinding with preallocated buffers
(`OnnxModel.bound`): no array conversions in or out, about a tenth of a lone stream's
run when it starts cold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from percepnet.analysis import Frames
from percepnet.constants import NB_BANDS, NB_FEATURES
from percepnet.enhancer import Enhancer, GainPair, GainSource
from percepnet.graph_names import INPUT_FEATURES, OUTPUT_GAINS, OUTPUT_STRENGTHS, STATE_SUFFIX

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS_DIR / "percepnet-int8.onnx"


FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
State = dict[str, Float32Array]


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
        # The stream axis of each state: its one symbolic dimension. A graph exported
        # with a fixed batch of 1 has none and runs one stream per call.
        self.batch_axes: dict[str, int] | None = {}
        for n in self.state_names:
            symbolic = [i for i, d in enumerate(inputs[n].shape) if not isinstance(d, int)]
            if len(symbolic) != 1 or self.batch_axes is None:
                self.batch_axes = None
            else:
                self.batch_axes[n] = symbolic[0]
        if isinstance(inputs[INPUT_FEATURES].shape[0], int):
            self.batch_axes = None
        self.state_shapes = {
            n: tuple(d if isinstance(d, int) else 1 for d in inputs[n].shape)
            for n in self.state_names
        }
        self.output_names = [OUTPUT_GAINS, OUTPUT_STRENGTHS] + [
            n + STATE_SUFFIX for n in self.state_names
        ]
        self._bound = threading.local()
        self._check()

    def _check(self) -> None:
        """One real run, plain and bound: a model that cannot stream fails now, at load,
        rather than on the first audio frame."""
        zeros = np.zeros((1, NB_FEATURES), np.float32)
        try:
            g, r, state = self.step(zeros, self.initial_state())
        except Exception as exc:  # onnxruntime's errors have no common base class
            raise ModelError(f"{self.path}: a run fails: {exc}") from exc
        if g.shape != (1, NB_BANDS) or r.shape != (1, NB_BANDS) or not np.isfinite(g).all():
            raise ModelError(f"{self.path}: unexpected output shapes {g.shape}, {r.shape}")
        for n, shape in self.state_shapes.items():
            if state[n].shape != shape:
                raise ModelError(
                    f"{self.path}: state {n} goes in as {shape} and comes out as {state[n].shape}"
                )
        if self.batch_axes is None:
            return
        try:
            runs = self.bound(1)
            runs.load([self.initial_state()])
            g_bound, _ = runs.step(zeros)
        except Exception as exc:
            raise ModelError(f"{self.path}: a run through bound buffers fails: {exc}") from exc
        if not np.array_equal(g_bound, g):
            raise ModelError(f"{self.path}: bound and plain runs disagree")

    def initial_state(self) -> State:
        """One stream's state before its first frame."""
        return {n: np.zeros(s, np.float32) for n, s in self.state_shapes.items()}

    def step(
        self, features: Float32Array, state: State
    ) -> tuple[Float32Array, Float32Array, State]:
        """One frame [1, F] of one stream: gains, strengths [1, NB_BANDS], next state."""
        feed = {INPUT_FEATURES: features, **state}
        outs = self.session.run(self.output_names, feed)
        new_state = {n: outs[2 + i] for i, n in enumerate(self.state_names)}
        return outs[0], outs[1], new_state

    def step_many(
        self, features: Float32Array, states: Sequence[State]
    ) -> tuple[Float32Array, Float32Array, list[State]]:
        """One frame each of B streams (features [B, F]) in one run; per-stream states."""
        if len(states) == 1 or self.batch_axes is None:
            steps = [self.step(features[i : i + 1], st) for i, st in enumerate(states)]
            return (
                np.concatenate([g for g, _, _ in steps]),
                np.concatenate([r for _, r, _ in steps]),
                [st for _, _, st in steps],
            )
        g, r, joined = self.step(features, self.stack(states))
        return g, r, self.unstack(joined, len(states))

    def bound(self, count: int) -> BoundRuns:
        """Runs of `count` streams through preallocated buffers; one set per thread and
        count, kept for the model's life (a worker's batches are of a few sizes)."""
        if self.batch_axes is None:
            raise ModelError(f"{self.path} runs one stream at a time")
        cache: dict[int, BoundRuns] | None = getattr(self._bound, "runs", None)
        if cache is None:
            cache = self._bound.runs = {}
        runs = cache.get(count)
        if runs is None:
            runs = cache[count] = BoundRuns(self, count)
        return runs

    def stack(self, states: Sequence[State]) -> State:
        """B streams' states as one state of B streams (joined on each stream axis)."""
        if self.batch_axes is None:
            raise ModelError(f"{self.path} runs one stream at a time")
        if len(states) == 1:
            return states[0]
        return {
            n: np.concatenate([st[n] for st in states], axis=ax)
            for n, ax in self.batch_axes.items()
        }

    def unstack(self, state: State, count: int) -> list[State]:
        """stack's inverse: `count` one-stream states, slices of `state` (no copy along a
        leading stream axis). The run's outputs are fresh arrays, so nothing aliases."""
        if self.batch_axes is None:
            raise ModelError(f"{self.path} runs one stream at a time")
        if count == 1:
            return [state]
        out: list[State] = [{} for _ in range(count)]
        for n, ax in self.batch_axes.items():
            tensor = state[n]
            index: list[slice] = [slice(None)] * tensor.ndim
            for b in range(count):
                index[ax] = slice(b, b + 1)
                out[b][n] = np.ascontiguousarray(tensor[tuple(index)])
        return out


class BoundRuns:
    """Frame after frame of the same `count` streams, through two IOBindings.

    The features, the outputs and two sets of state buffers are allocated once; one
    binding reads state set 0 and writes set 1, the other the reverse, so a run copies
    nothing between Python and ONNX Runtime but the features in and the gains out.

        runs.load(states)              # the streams' states, in order
        g, r = runs.step(features)     # [count, F] -> [count, NB_BANDS] each, per frame
        states = runs.unload()         # their states after the last step (copies)

    Not thread-safe: OnnxModel.bound gives each thread its own.
    """

    def __init__(self, model: OnnxModel, count: int) -> None:
        assert model.batch_axes is not None
        self.model = model
        self.count = count
        self.features = np.zeros((count, NB_FEATURES), np.float32)
        self.gains = np.zeros((count, NB_BANDS), np.float32)
        self.strengths = np.zeros((count, NB_BANDS), np.float32)
        self.states: list[State] = []
        for _ in range(2):
            state: State = {}
            for n, ax in model.batch_axes.items():
                shape = list(model.state_shapes[n])
                shape[ax] = count
                state[n] = np.zeros(shape, np.float32)
            self.states.append(state)
        self.bindings = [self._binding(self.states[k], self.states[1 - k]) for k in (0, 1)]
        self.current = 0
        """Which state set holds the streams' state now."""

    def _binding(self, state_in: State, state_out: State) -> object:
        binding = self.model.session.io_binding()

        def bind(kind: Callable[..., None], name: str, array: Float32Array) -> None:
            kind(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)

        bind(binding.bind_input, INPUT_FEATURES, self.features)
        for n, array in state_in.items():
            bind(binding.bind_input, n, array)
        bind(binding.bind_output, OUTPUT_GAINS, self.gains)
        bind(binding.bind_output, OUTPUT_STRENGTHS, self.strengths)
        for n, array in state_out.items():
            bind(binding.bind_output, n + STATE_SUFFIX, array)
        return binding

    def load(self, states: Sequence[State]) -> None:
        if len(states) != self.count:
            raise ValueError(f"{len(states)} states for runs of {self.count} streams")
        assert self.model.batch_axes is not None
        target = self.states[self.current]
        for n, ax in self.model.batch_axes.items():
            if self.count == 1:
                np.copyto(target[n], states[0][n])
            else:
                np.concatenate([st[n] for st in states], axis=ax, out=target[n])

    def step(self, features: npt.ArrayLike) -> tuple[Float32Array, Float32Array]:
        """One frame of every stream. The returned arrays are overwritten by the next step."""
        np.copyto(self.features, features)
        self.model.session.run_with_iobinding(self.bindings[self.current])
        self.current = 1 - self.current
        return self.gains, self.strengths

    def unload(self) -> list[State]:
        return self.model.unstack(
            {n: a.copy() for n, a in self.states[self.current].items()}, self.count
        )


class OnnxSource:
    """Per-stream GainSource: the shared model plus this stream's state."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.state = self.model.initial_state()

    def __call__(self, frames: Frames) -> GainPair:
        result = gains_for_many([self], [frames])[0]
        if isinstance(result, Exception):
            raise result
        return result


def gains_for_many(
    sources: Sequence[GainSource], blocks: Sequence[Frames]
) -> list[GainPair | Exception]:
    """Each source's gains for its block of frames, as `source(block)` would give them,
    or the exception that computing them raised.

    OnnxSources that share a model advance together: one model run per frame index
    for all of their streams, so the weights are read once per frame for all of
    them. Other sources are called one by one. A source that fails, or a model run
    that fails, fails only the streams involved.
    """
    if len(sources) != len(blocks):
        raise ValueError(f"{len(sources)} sources for {len(blocks)} blocks")
    results: dict[int, GainPair | Exception] = {}
    by_model: dict[int, list[tuple[int, OnnxSource]]] = {}
    for i, src in enumerate(sources):
        if isinstance(src, OnnxSource):
            by_model.setdefault(id(src.model), []).append((i, src))
        else:
            try:
                results[i] = src(blocks[i])
            except Exception as exc:
                results[i] = exc
    for members in by_model.values():
        try:
            results.update(_advance_together(members, [blocks[i] for i, _ in members]))
        except Exception as exc:
            results.update((i, exc) for i, _ in members)
    return [results[i] for i in range(len(sources))]


def _advance_together(
    members: list[tuple[int, OnnxSource]], blocks: list[Frames]
) -> dict[int, GainPair]:
    """Gains of sources sharing one model: one run per frame index for all of them.

    While the same streams run frame after frame (the usual case: every stream brings
    the same number of frames), their state stays joined between runs and is split
    back into the sources once, at the end.
    """
    model = members[0][1].model
    lengths = {len(b) for b in blocks}
    if model.batch_axes is not None and len(lengths) == 1:
        return _advance_in_step(model, members, blocks, lengths.pop())
    feats = [b.features.astype(np.float32) for b in blocks]
    gains = [np.empty((len(f), NB_BANDS)) for f in feats]
    strengths = [np.empty((len(f), NB_BANDS)) for f in feats]
    if model.batch_axes is None:  # a graph of one stream: each source on its own
        for k, (_, src) in enumerate(members):
            for t in range(len(feats[k])):
                g1, r1, src.state = model.step(feats[k][t : t + 1], src.state)
                gains[k][t], strengths[k][t] = g1[0], r1[0]
        return {i: (gains[k], strengths[k]) for k, (i, _) in enumerate(members)}
    joined: State | None = None
    joined_for: list[int] = []

    def split_back() -> None:
        if joined is not None:
            for k, state in zip(joined_for, model.unstack(joined, len(joined_for)), strict=True):
                members[k][1].state = state

    for t in range(max(len(f) for f in feats)):
        active = [k for k, f in enumerate(feats) if len(f) > t]
        if joined is None or active != joined_for:
            split_back()
            joined = model.stack([members[k][1].state for k in active])
            joined_for = active
        g, r, joined = model.step(np.stack([feats[k][t] for k in active]), joined)
        for j, k in enumerate(active):
            gains[k][t], strengths[k][t] = g[j], r[j]
    split_back()
    return {i: (gains[k], strengths[k]) for k, (i, _) in enumerate(members)}


def _advance_in_step(
    model: OnnxModel, members: list[tuple[int, OnnxSource]], blocks: list[Frames], frames: int
) -> dict[int, GainPair]:
    """_advance_together when every stream brings `frames` frames (the usual case): the
    features of all streams and frames laid out in one array, the runs made through
    preallocated buffers (BoundRuns), and each run's outputs stored for all streams at
    once."""
    count = len(members)
    feats = np.empty((frames, count, NB_FEATURES), np.float32)
    for k, block in enumerate(blocks):
        feats[:, k] = block.features
    gains = np.empty((count, frames, NB_BANDS))
    strengths = np.empty((count, frames, NB_BANDS))
    runs = model.bound(count)
    runs.load([src.state for _, src in members])
    for t in range(frames):
        gains[:, t], strengths[:, t] = runs.step(feats[t])
    for (_, src), state in zip(members, runs.unload(), strict=True):
        src.state = state
    return {i: (gains[k], strengths[k]) for k, (i, _) in enumerate(members)}


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
