"""Export and inference: torch vs ONNX, int8, streaming with the model, bad model files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from percepnet.constants import FRAME_SIZE, LATENCY_SAMPLES, NB_BANDS, NB_FEATURES
from percepnet.enhancer import ChunkedStream, enhance_signal
from percepnet.export import compare, export_all
from percepnet.model import ModelConfig, PercepNet
from percepnet.runtime import (
    DEFAULT_MODEL,
    ModelError,
    OnnxModel,
    OnnxSource,
    load_enhancer_factory,
)
from tests.signals import add_noise, speechlike

TINY = ModelConfig(conv_channels=24, gru_size=24, gru_layers=2, strength_gru_size=12)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[PercepNet, Path]:
    torch.manual_seed(3)
    net = PercepNet(TINY)
    net.set_normalisation(torch.randn(70) * 0.1, torch.rand(70) + 0.5)
    out = tmp_path_factory.mktemp("model")
    export_all(net, out, "tiny", {"note": "test"})
    return net, out


def test_export_writes_float_int8_and_manifest(exported) -> None:
    net, out = exported
    manifest = json.loads((out / "tiny.json").read_text())
    assert manifest["float"]["max_abs_vs_torch"] < 1e-4
    assert (out / "tiny-int8.onnx").stat().st_size < (out / "tiny.onnx").stat().st_size
    assert len(manifest["float"]["sha256"]) == 64
    assert manifest["feature_mean"] == pytest.approx(net.feature_mean.tolist())


def test_onnx_agrees_with_torch_and_int8_stays_close(exported) -> None:
    net, out = exported
    assert compare(net, OnnxModel(out / "tiny.onnx"), frames=100) < 1e-4
    assert compare(net, OnnxModel(out / "tiny-int8.onnx"), frames=100) < 0.1


def test_gain_calibration_is_baked_into_the_export(tmp_path: Path) -> None:
    """--gain-map: the exported graph's gains are the network's, with sqrt(g) stretched
    from [lo, hi] to [0, 1]; strengths unchanged; the identity changes nothing."""
    from dataclasses import replace

    torch.manual_seed(4)
    net = PercepNet(TINY)
    feats = torch.randn(2, 50, NB_FEATURES)
    with torch.no_grad():
        raw = net(feats)
    net.config = replace(net.config, gain_lo=0.2, gain_hi=0.8)
    export_all(net, tmp_path, "cal")
    model = OnnxModel(tmp_path / "cal.onnx")
    states = [model.initial_state() for _ in range(2)]
    for j in range(50):
        g, r, states = model.step_many(feats[:, j].numpy(), states)
        s = np.clip((np.sqrt(raw.gains[:, j].numpy()) - 0.2) / 0.6, 0.0, 1.0)
        np.testing.assert_allclose(g, s * s, atol=1e-5)
        np.testing.assert_allclose(r, raw.strengths[:, j].numpy(), atol=1e-5)
    assert json.loads((tmp_path / "cal.json").read_text())["config"]["gain_lo"] == 0.2
    net.config = replace(net.config, gain_lo=0.0, gain_hi=1.0)
    with torch.no_grad():
        same = net(feats)
    assert torch.equal(same.gains, raw.gains)


def test_streaming_equals_whole_file_with_model_in_loop(exported) -> None:
    _, out = exported
    rng = np.random.default_rng(4)
    clean = speechlike(0.8, rng)
    noisy = add_noise(clean, 5.0, rng)
    factory = load_enhancer_factory(out / "tiny-int8.onnx")
    padded = np.concatenate([noisy, np.zeros(LATENCY_SAMPLES + FRAME_SIZE)])
    frames = ChunkedStream(factory())
    by_frame = np.concatenate(
        [frames.process(padded[i : i + FRAME_SIZE]) for i in range(0, len(padded), FRAME_SIZE)]
    )
    chunks = ChunkedStream(factory())
    sizes = rng.integers(1, 2000, size=100)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    by_chunk = np.concatenate([chunks.process(padded[a:b]) for a, b in itertools.pairwise(edges)])
    n = min(len(by_frame), len(by_chunk))
    np.testing.assert_array_equal(by_frame[:n], by_chunk[:n])
    whole = enhance_signal(noisy, OnnxSource(OnnxModel(out / "tiny-int8.onnx")))
    np.testing.assert_allclose(
        whole, by_frame[LATENCY_SAMPLES : LATENCY_SAMPLES + len(noisy)], atol=1e-5
    )


def test_missing_and_corrupt_models_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_enhancer_factory(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage" * 100)
    with pytest.raises(ModelError, match="cannot load"):
        load_enhancer_factory(bad)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(
        DEFAULT_MODEL.read_bytes()[:5000] if DEFAULT_MODEL.exists() else b"\x00" * 5000
    )
    with pytest.raises(ModelError):
        OnnxModel(truncated)


def test_a_model_whose_state_changes_shape_is_refused_at_load(tmp_path: Path) -> None:
    # Loads and runs once, but its state comes out twice as wide as it goes in: the
    # second frame would fail, on a live stream. It must fail at load instead.
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((NB_FEATURES, NB_BANDS), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["m"]),
            helper.make_node("Sigmoid", ["m"], ["gains"]),
            helper.make_node("Sigmoid", ["m"], ["strengths"]),
            helper.make_node("Concat", ["state", "state"], ["state_out"], axis=1),
        ],
        "widening_state",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["b", NB_FEATURES]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["b", 10]),
        ],
        [
            helper.make_tensor_value_info("gains", TensorProto.FLOAT, ["b", NB_BANDS]),
            helper.make_tensor_value_info("strengths", TensorProto.FLOAT, ["b", NB_BANDS]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["b", 20]),
        ],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "widening.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match="state state goes in as"):
        OnnxModel(path)
    # the same graph with a state that keeps its width loads and runs bound
    proto.graph.node[3].CopyFrom(helper.make_node("Identity", ["state"], ["state_out"]))
    proto.graph.output[2].CopyFrom(
        helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["b", 10])
    )
    path.write_bytes(proto.SerializeToString())
    assert OnnxModel(path).bound(1).step(np.zeros((1, NB_FEATURES)))[0].shape == (1, NB_BANDS)


def test_shipped_model_loads_and_attenuates_noise_alone() -> None:
    """The default model ships in models/, runs, keeps g and r in [0, 1], and takes a
    stationary noise with no speech down by more than 10 dB."""
    factory = load_enhancer_factory()
    rng = np.random.default_rng(9)
    noise = 0.03 * rng.standard_normal(2 * 48_000)
    enh = factory()
    out = enhance_signal(noise, enh.source)
    assert np.isfinite(out).all()
    tail = slice(48_000 // 2, None)  # after the recurrent state has settled
    drop = 10 * np.log10(np.mean(noise[tail] ** 2) / np.mean(out[tail] ** 2))
    assert drop > 10.0, drop
