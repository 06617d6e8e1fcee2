"""Rebuild a PercepNet checkpoint from a float streaming ONNX model of the first layout.

The shipped step-5433 weights were exported (25cf521) without their checkpoint being
kept. Models of that layout take seven state tensors and hold each GRU's input and
state matrices apart; this reads their initialisers back into a PercepNet so that
`percepnet export` can write the same weights in the current layout:

    python models/checkpoints/from_onnx.py OLD.onnx models/checkpoints/v1-best-step5433.pt \
        [OLD-manifest.json]

The manifest's training record (step, wall time, audio seen, best dev PESQ, settings)
goes into the checkpoint, so an export from it states them again. It checks that the
rebuilt network reproduces OLD.onnx before it saves anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from percepnet.export import compare
from percepnet.model import ModelConfig, PercepNet
from percepnet.runtime import OnnxModel
from percepnet.train import save_checkpoint

TOLERANCE = 1e-5
"""Max |rebuilt torch - OLD.onnx| over a random feature sequence (export.compare)."""


def rebuild(path: Path, config: ModelConfig | None = None) -> PercepNet:
    config = config or ModelConfig()
    model = onnx.load(str(path))
    init = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in model.graph.initializer
    }
    net = PercepNet(config)
    params = net.state_dict()
    for name, value in init.items():  # the ones the exporter kept under their own names
        if name.startswith("net."):
            params[name.removeprefix("net.")].copy_(value)
    # The rest are the MatMul operands, in graph order: conv1 and conv2 as [K*in, out]
    # (oldest frame first), then each GRU's W_ih^T and W_hh^T.
    mats = [init[n.input[1]] for n in model.graph.node if n.op_type == "MatMul"]
    for name, mat in (("conv1", mats[0]), ("conv2", mats[1])):
        out_c, in_c, k = params[f"{name}.weight"].shape
        params[f"{name}.weight"].copy_(mat.reshape(k, in_c, out_c).permute(2, 1, 0))
    grus = [f"grus.{i}" for i in range(config.gru_layers)] + ["strength_gru"]
    if len(mats) != 2 + 2 * len(grus):
        raise ValueError(f"{path}: {len(mats)} MatMuls, not the first layout's {2 + 2 * len(grus)}")
    for i, gru in enumerate(grus):
        params[f"{gru}.weight_ih_l0"].copy_(mats[2 + 2 * i].t())
        params[f"{gru}.weight_hh_l0"].copy_(mats[3 + 2 * i].t())
    net.load_state_dict(params)
    return net.eval()


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    net = rebuild(src)
    err = compare(net, OnnxModel(src))  # the export's own check, frame by frame
    print(f"rebuilt network vs {src}: max abs difference {err:.2e}")
    if err > TOLERANCE:
        print("too far apart; nothing saved", file=sys.stderr)
        return 1
    extra: dict[str, object] = {"rebuilt_from": src.name}
    if len(argv) > 2:
        manifest = json.loads(Path(argv[2]).read_text())
        extra["train_state"] = manifest.get("training", {})
        extra["train_config"] = manifest.get("train_config", {})
    save_checkpoint(dst, net, extra)
    print(f"saved {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
