"""Export a checkpoint to a streaming ONNX model, check it, quantise it to 8 bits.

The export fails (ExportError) if ONNX Runtime and torch disagree beyond
TOLERANCE on a random feature sequence run frame by frame with state carried.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from percepnet.constants import NB_FEATURES
from percepnet.graph_names import (
    INPUT_FEATURES,
    OUTPUT_GAINS,
    OUTPUT_STRENGTHS,
    STATE,
    STATE_SUFFIX,
)
from percepnet.model import (
    PercepNet,
    StreamingPercepNet,
    count_parameters,
    state_shapes,
    state_size,
)
from percepnet.runtime import OnnxModel

OPSET = 17
TOLERANCE = 1e-4
"""Max |torch - onnxruntime| on gains/strengths for the float export."""


class ExportError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_onnx(net: PercepNet, path: Path) -> None:
    net.eval()
    stream = StreamingPercepNet(net).eval()
    names = [STATE]
    args = (torch.zeros(1, NB_FEATURES), torch.zeros(1, state_size(net.config)))
    path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter is deprecated but needs no onnxscript and emits the plain
    # MatMul/Sigmoid/Tanh graph that dynamic int8 quantisation covers; its notice is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        _export(stream, args, path, names)


def _export(
    stream: StreamingPercepNet, args: tuple[torch.Tensor, ...], path: Path, names: list[str]
) -> None:
    # The stream axis is dynamic, so one run can advance many streams (the service
    # batches a worker's streams); everything else is fixed.
    axes: dict[str, dict[int, str]] = {INPUT_FEATURES: {0: "streams"}}
    axes.update({OUTPUT_GAINS: {0: "streams"}, OUTPUT_STRENGTHS: {0: "streams"}})
    for n in names:
        axes[n] = axes[n + STATE_SUFFIX] = {0: "streams"}
    torch.onnx.export(
        stream,
        args,
        str(path),
        input_names=[INPUT_FEATURES, *names],
        output_names=[OUTPUT_GAINS, OUTPUT_STRENGTHS, *[n + STATE_SUFFIX for n in names]],
        opset_version=OPSET,
        dynamic_axes=axes,
        dynamo=False,
    )


def compare(
    net: PercepNet, model: OnnxModel, frames: int = 300, streams: int = 3, seed: int = 0
) -> float:
    """Max abs difference of torch (whole sequences) vs ONNX (frame by frame, all streams
    in one run per frame, each with its own state)."""
    rng = np.random.default_rng(seed)
    mean = net.feature_mean.numpy()
    std = net.feature_std.numpy()
    feats = (mean + std * rng.standard_normal((streams, frames, NB_FEATURES))).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(feats))
    states = [model.initial_state() for _ in range(streams)]
    worst = 0.0
    for j in range(frames):
        g, r, states = model.step_many(feats[:, j], states)
        worst = max(worst, float(np.abs(g - ref.gains[:, j].numpy()).max()))
        worst = max(worst, float(np.abs(r - ref.strengths[:, j].numpy()).max()))
    return worst


def quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
    )


def export_all(
    net: PercepNet, out_dir: Path, stem: str = "percepnet", info: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write STEM.onnx (float), STEM-int8.onnx and STEM.json (the manifest)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    f32, i8 = out_dir / f"{stem}.onnx", out_dir / f"{stem}-int8.onnx"
    export_onnx(net, f32)
    err = compare(net, OnnxModel(f32))
    if err > TOLERANCE:
        raise ExportError(f"ONNX and torch disagree by {err:.2e} (> {TOLERANCE:.0e})")
    quantize(f32, i8)
    err_q = compare(net, OnnxModel(i8))
    manifest = {
        "config": net.config.to_dict(),
        "parameters": count_parameters(net),
        "opset": OPSET,
        "inputs": [INPUT_FEATURES, STATE],
        "state_layout": {name: shape[1] for name, shape in state_shapes(net.config).items()},
        "outputs": [OUTPUT_GAINS, OUTPUT_STRENGTHS],
        "feature_mean": net.feature_mean.tolist(),
        "feature_std": net.feature_std.tolist(),
        "float": {
            "file": f32.name,
            "sha256": sha256(f32),
            "bytes": f32.stat().st_size,
            "max_abs_vs_torch": err,
        },
        "int8": {
            "file": i8.name,
            "sha256": sha256(i8),
            "bytes": i8.stat().st_size,
            "max_abs_vs_torch": err_q,
        },
        **(info or {}),
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
