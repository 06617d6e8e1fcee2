"""The PercepNet network (torch; training and export only).

Input: the feature sequence [B, J, NB_FEATURES], normalised inside the model with
statistics stored in it. Two causal convolutions over time (kernel 5 then 3), a
stack of GRUs, then two heads:
  gains     g [B, J, NB_BANDS] = sigmoid(dense(concat(conv, all GRU outputs)))
  strengths r [B, J, NB_BANDS] = sigmoid(dense(GRU_s(concat(upper GRU outputs))))
Row j's outputs apply to frame j - LOOKAHEAD_FRAMES (the features carry the lookahead).

The same parameters drive StreamingPercepNet, one frame with explicit state, which
is what the streaming ONNX graph is exported from: convolutions become matrix products
over a history of frames and GRU cells are written out (one weight matrix each), so
8-bit dynamic quantisation reaches every weight matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor, nn

from percepnet.constants import NB_BANDS, NB_FEATURES

CONV1_KERNEL = 5
CONV2_KERNEL = 3


@dataclass(frozen=True)
class ModelConfig:
    conv_channels: int = 128
    gru_size: int = 160
    gru_layers: int = 3
    strength_gru_size: int = 64
    strength_from_layers: int = 2  # how many upper GRU layers feed the strength GRU
    gain_lo: float = 0.0
    gain_hi: float = 1.0
    """Gain calibration of the exported model: sqrt(g) stretched from [gain_lo, gain_hi]
    to [0, 1]. A network trained on a squared-error loss hedges: it leaves clean speech a
    few dB down and noise a few dB up. Set at export from the dev benchmark; training
    runs with the identity (0, 1), where the calibration is no operation at all."""

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


PAPER_CONFIG = ModelConfig(conv_channels=512, gru_size=512, gru_layers=5, strength_gru_size=128)
"""The paper's reference size (about 8M weights)."""


def calibrate_gains(g: Tensor, lo: float, hi: float) -> Tensor:
    """sqrt(g) mapped linearly from [lo, hi] to [0, 1], clipped, squared; g as is for
    the identity (0, 1)."""
    if lo == 0.0 and hi == 1.0:
        return g
    s = ((g.clamp(min=0.0).sqrt() - lo) / (hi - lo)).clamp(0.0, 1.0)
    return s * s


class Outputs(NamedTuple):
    gains: Tensor
    strengths: Tensor


class PercepNet(nn.Module):
    feature_mean: Tensor
    feature_std: Tensor
    grus: nn.ModuleList

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        c, h = config.conv_channels, config.gru_size
        self.register_buffer("feature_mean", torch.zeros(NB_FEATURES))
        self.register_buffer("feature_std", torch.ones(NB_FEATURES))
        self.conv1 = nn.Conv1d(NB_FEATURES, c, CONV1_KERNEL)
        self.conv2 = nn.Conv1d(c, c, CONV2_KERNEL)
        self.grus = nn.ModuleList(
            [nn.GRU(c if i == 0 else h, h, batch_first=True) for i in range(config.gru_layers)]
        )
        self.gain_head = nn.Linear(c + h * config.gru_layers, NB_BANDS)
        self.strength_gru = nn.GRU(
            h * config.strength_from_layers, config.strength_gru_size, batch_first=True
        )
        self.strength_head = nn.Linear(config.strength_gru_size, NB_BANDS)

    def set_normalisation(self, mean: Tensor, std: Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.clamp(std, min=1e-3))

    def forward(self, features: Tensor) -> Outputs:
        """[B, J, NB_FEATURES] -> gains, strengths [B, J, NB_BANDS] (causal in J)."""
        return self.forward_with_state(features, None)[0]

    def forward_with_state(
        self, features: Tensor, state: tuple[Tensor, ...] | None
    ) -> tuple[Outputs, tuple[Tensor, ...]]:
        """Like forward, continuing from `state` (None: silence before) and returning the next."""
        b = features.shape[0]
        c, h = self.config.conv_channels, self.config.gru_size
        if state is None:
            hist1 = torch.zeros(b, NB_FEATURES, CONV1_KERNEL - 1)
            hist2 = torch.zeros(b, c, CONV2_KERNEL - 1)
            hs = [None] * len(self.grus)
            hstr = None
        else:
            hist1, hist2, gru_h, hstr = state
            hs = list(gru_h)
        x = ((features - self.feature_mean) / self.feature_std).transpose(1, 2)  # [B, F, J]
        x1 = torch.cat([hist1, x], dim=-1)
        c1 = torch.tanh(self.conv1(x1))
        x2 = torch.cat([hist2, c1], dim=-1)
        conv = torch.tanh(self.conv2(x2)).transpose(1, 2)  # [B, J, C]
        outs, new_h = [], []
        y = conv
        for gru, h0 in zip(self.grus, hs, strict=True):
            y, hn = gru(y, h0)
            outs.append(y)
            new_h.append(hn)
        gains = torch.sigmoid(self.gain_head(torch.cat([conv, *outs], dim=-1)))
        gains = calibrate_gains(gains, self.config.gain_lo, self.config.gain_hi)
        s, hstr_n = self.strength_gru(
            torch.cat(outs[-self.config.strength_from_layers :], dim=-1), hstr
        )
        strengths = torch.sigmoid(self.strength_head(s))
        next_state = (
            x1[..., -(CONV1_KERNEL - 1) :],
            x2[..., -(CONV2_KERNEL - 1) :],
            torch.stack(new_h),
            hstr_n,
        )
        del h
        return Outputs(gains, strengths), next_state


def widen(small: PercepNet, config: ModelConfig) -> PercepNet:
    """A larger network that computes exactly what `small` computes (net2net-style growth).

    `config` keeps the number of GRU layers and the strength GRU's inputs, and is at least
    as wide everywhere. The new units start with fresh random inputs but zero outgoing
    weights, so until training moves them they change nothing: a fine-tuning run starts
    from the small network's quality rather than from scratch. The small network's
    feature normalisation and gain calibration carry over.
    """
    s = small.config
    if config.gru_layers != s.gru_layers or config.strength_from_layers != s.strength_from_layers:
        raise ValueError("widen keeps the number of GRU layers and the strength GRU's inputs")
    if (
        config.conv_channels < s.conv_channels
        or config.gru_size < s.gru_size
        or config.strength_gru_size < s.strength_gru_size
    ):
        raise ValueError("widen only grows a network")
    config = replace(config, gain_lo=s.gain_lo, gain_hi=s.gain_hi)
    big = PercepNet(config)
    c, h, hs = s.conv_channels, s.gru_size, s.strength_gru_size
    layers, k = s.gru_layers, s.strength_from_layers
    Blocks = list[tuple[slice, slice]]  # (old, new) index ranges along one axis

    def same(n: int) -> Blocks:
        return [(slice(0, n), slice(0, n))]

    def concat(parts: int, old: int, new: int) -> Blocks:
        return [
            (slice(i * old, i * old + old), slice(i * new, i * new + old)) for i in range(parts)
        ]

    everything = [(slice(0, None), slice(0, None))]
    # parameter suffix -> (row blocks, column blocks or None for a vector)
    plan: dict[str, tuple[Blocks, Blocks | None]] = {
        "conv1.weight": (same(c), everything),
        "conv1.bias": (same(c), None),
        "conv2.weight": (same(c), same(c)),
        "conv2.bias": (same(c), None),
        "gain_head.weight": (
            everything,
            same(c)
            + [
                (
                    slice(c + i * h, c + i * h + h),
                    slice(
                        config.conv_channels + i * config.gru_size,
                        config.conv_channels + i * config.gru_size + h,
                    ),
                )
                for i in range(layers)
            ],
        ),
        "gain_head.bias": (everything, None),
        "strength_head.weight": (everything, same(hs)),
        "strength_head.bias": (everything, None),
    }
    for i in range(layers):
        rows = concat(3, h, config.gru_size)  # the r, z and n gates
        plan[f"grus.{i}.weight_ih_l0"] = (rows, same(c if i == 0 else h))
        plan[f"grus.{i}.weight_hh_l0"] = (rows, same(h))
        plan[f"grus.{i}.bias_ih_l0"] = (rows, None)
        plan[f"grus.{i}.bias_hh_l0"] = (rows, None)
    rows = concat(3, hs, config.strength_gru_size)
    plan["strength_gru.weight_ih_l0"] = (rows, concat(k, h, config.gru_size))
    plan["strength_gru.weight_hh_l0"] = (rows, same(hs))
    plan["strength_gru.bias_ih_l0"] = (rows, None)
    plan["strength_gru.bias_hh_l0"] = (rows, None)

    old, new = small.state_dict(), big.state_dict()  # new's tensors are big's storage
    with torch.no_grad():
        for name in ("feature_mean", "feature_std"):
            new[name].copy_(old[name])
        for name, (rows, cols) in plan.items():
            src, dst = old[name], new[name]
            for r_old, r_new in rows:
                if cols is None:
                    dst[r_new] = src[r_old]
                    continue
                dst[r_new] = 0.0  # old units ignore the new ones
                for c_old, c_new in cols:
                    dst[r_new, c_new] = src[r_old, c_old]
    missing = set(new) - set(plan) - {"feature_mean", "feature_std"}
    assert not missing, f"widen has no plan for {sorted(missing)}"
    return big


# ---- streaming form -------------------------------------------------------------------

# The streaming graph's one state tensor [streams, state_size()] is the input STATE and
# the output STATE + STATE_SUFFIX (graph_names.py).


def state_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parts of the streaming state, in their order along its second axis.

    Each is [streams, size], one row per stream: the convolution histories flattened
    (oldest frame first), then one part per GRU. The graph takes and returns them as
    one tensor (graph_names.STATE): every input and output of a run is a conversion in ONNX
    Runtime's Python binding, and seven of each cost about 10 % of a run.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "conv1_history": (1, (CONV1_KERNEL - 1) * NB_FEATURES),
        "conv2_history": (1, (CONV2_KERNEL - 1) * config.conv_channels),
    }
    for i in range(config.gru_layers):
        shapes[f"gru{i + 1}_state"] = (1, config.gru_size)
    shapes["strength_state"] = (1, config.strength_gru_size)
    return shapes


def state_size(config: ModelConfig) -> int:
    """Floats per stream in the streaming state."""
    return sum(s[1] for s in state_shapes(config).values())


def fused_gru_weights(gru: nn.GRU) -> tuple[Tensor, Tensor]:
    """A single-layer torch GRU's weights as one matrix W [in + H, 4H] and bias [4H]:
    [x, h] @ W + b = [x W_ir + h W_hr | x W_iz + h W_hz | x W_in | h W_hn] + biases.

    The reset and update gates need only the sum of the input's and the state's terms,
    so one product gives them all (the two n terms stay apart: r scales the state's).
    """
    w_ih, w_hh = gru.weight_ih_l0, gru.weight_hh_l0  # [3H, in], [3H, H]
    b_ih, b_hh = gru.bias_ih_l0, gru.bias_hh_l0
    assert isinstance(w_ih, Tensor) and isinstance(w_hh, Tensor)
    assert isinstance(b_ih, Tensor) and isinstance(b_hh, Tensor)
    size = gru.hidden_size
    rz, n = slice(0, 2 * size), slice(2 * size, 3 * size)
    zeros_i = w_ih.new_zeros(w_ih.shape[1], size)
    zeros_h = w_hh.new_zeros(size, size)
    from_x = torch.cat([w_ih[rz].t(), w_ih[n].t(), zeros_i], dim=1)
    from_h = torch.cat([w_hh[rz].t(), zeros_h, w_hh[n].t()], dim=1)
    bias = torch.cat([b_ih[rz] + b_hh[rz], b_ih[n], b_hh[n]])
    return torch.cat([from_x, from_h], dim=0), bias


def _gru_cell(gru: nn.GRU, x: Tensor, h: Tensor) -> Tensor:
    """One step of a single-layer torch GRU written out (same equations as nn.GRU), with
    one matrix product (fused_gru_weights): fewer, larger kernels per frame."""
    weight, bias = fused_gru_weights(gru)
    size = gru.hidden_size
    # split with constant sizes: `chunk` on a tensor with a dynamic (stream) axis exports
    # as a chain of Shape/Gather/Div/Slice nodes, each a kernel call per frame
    rz, i_n, h_n = (torch.cat([x, h], dim=-1) @ weight + bias).split([2 * size, size, size], -1)
    r, z = torch.sigmoid(rz).split(size, dim=-1)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)  # = (1 - z) n + z h, in fewer operations


class StreamingPercepNet(nn.Module):
    """One frame per stream in, the state in and out; the module exported to ONNX.

    The leading axis of `features` [B, F] and of `state` [B, state_size()] is the
    stream: B streams, each with its own state, advance by one frame in one run.
    """

    def __init__(self, net: PercepNet) -> None:
        super().__init__()
        self.net = net
        self.state_parts = [s[1] for s in state_shapes(net.config).values()]

    def forward(self, features: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features [B, F] and state [B, S] -> gains, strengths [B, NB_BANDS], next state."""
        net = self.net
        grus: list[nn.GRU] = list(net.grus)  # type: ignore[arg-type]
        assert net.conv1.bias is not None and net.conv2.bias is not None
        conv1_history, conv2_history, *gru_states, strength_state = state.split(
            self.state_parts, dim=1
        )
        x = (features - net.feature_mean) / net.feature_std  # [B, F]
        hist1 = torch.cat([conv1_history, x], dim=1)  # [B, K1 * F], oldest frame first
        w1 = net.conv1.weight.permute(2, 1, 0).reshape(-1, net.conv1.out_channels)  # [K1*F, C]
        c1 = torch.tanh(hist1 @ w1 + net.conv1.bias)
        hist2 = torch.cat([conv2_history, c1], dim=1)
        w2 = net.conv2.weight.permute(2, 1, 0).reshape(-1, net.conv2.out_channels)
        conv = torch.tanh(hist2 @ w2 + net.conv2.bias)
        outs = []
        y = conv
        for gru, h in zip(grus, gru_states, strict=True):
            y = _gru_cell(gru, y, h)
            outs.append(y)
        gains = torch.sigmoid(net.gain_head(torch.cat([conv, *outs], dim=-1)))
        gains = calibrate_gains(gains, net.config.gain_lo, net.config.gain_hi)
        s = _gru_cell(
            net.strength_gru,
            torch.cat(outs[-net.config.strength_from_layers :], dim=-1),
            strength_state,
        )
        strengths = torch.sigmoid(net.strength_head(s))
        next_state = torch.cat(
            [hist1[:, NB_FEATURES:], hist2[:, net.config.conv_channels :], *outs, s], dim=1
        )
        return gains, strengths, next_state


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
