"""The training pipeline on tiny synthetic data: loss goes down, checkpoints resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from percepnet.constants import NB_BANDS
from percepnet.model import ModelConfig, PercepNet, StreamingPercepNet, state_size, widen
from percepnet.train import TrainConfig, band_mask, load_checkpoint, percepnet_loss, train
from tests.signals import add_noise, speechlike

TINY = ModelConfig(conv_channels=32, gru_size=32, gru_layers=2, strength_gru_size=16)


class SyntheticFactory:
    """Voiced syllables in white noise at 0-15 dB, 1.5 s segments."""

    def __call__(self, split: str, seed: int) -> Callable[[], tuple[np.ndarray, np.ndarray, float]]:
        rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))

        def make() -> tuple[np.ndarray, np.ndarray, float]:
            clean = speechlike(1.0, rng)
            return clean, add_noise(clean, float(rng.uniform(0, 15)), rng), 8000.0

        return make


def test_band_mask_follows_bandwidth() -> None:
    m = band_mask(4000.0)
    assert m.shape == (NB_BANDS,)
    assert m[0] == 1 and m[-1] == 0
    assert 0 < m.sum() < NB_BANDS


def test_loss_is_zero_for_perfect_prediction_and_masked() -> None:
    g = torch.rand(2, 10, NB_BANDS)
    r = torch.rand(2, 10, NB_BANDS)
    mask = torch.ones(2, NB_BANDS)
    assert float(percepnet_loss(g, r, g, r, mask)) == pytest.approx(0.0, abs=1e-6)
    wrong = torch.zeros_like(g)
    mask[:, NB_BANDS // 2 :] = 0
    full = percepnet_loss(wrong, r, g, r, torch.ones(2, NB_BANDS))
    half = percepnet_loss(wrong, r, g, r, mask)
    assert float(full) > 0 and float(half) > 0 and float(full) != float(half)


def test_under_suppression_weight_scales_only_the_gain_error_above_the_ideal() -> None:
    g = torch.full((1, 4, NB_BANDS), 0.25)
    r = torch.zeros_like(g)
    mask = torch.ones(1, NB_BANDS)
    # Gains whose square roots sit 0.1 above and 0.1 below the ideal's (0.5).
    above, below = torch.full_like(g, 0.6**2), torch.full_like(g, 0.4**2)
    sym_above = float(percepnet_loss(above, r, g, r, mask))
    sym_below = float(percepnet_loss(below, r, g, r, mask))
    assert sym_above == pytest.approx(sym_below, rel=1e-4)
    w = 2.0
    weighted_above = float(percepnet_loss(above, r, g, r, mask, under_suppression_weight=w))
    weighted_below = float(percepnet_loss(below, r, g, r, mask, under_suppression_weight=w))
    assert weighted_below == pytest.approx(sym_below, rel=1e-6)
    # Error e -> w*e in both the square and the quartic term (strengths are exact here).
    e = 0.1
    expected = (w * e) ** 2 + 10.0 * (w * e) ** 4
    assert weighted_above == pytest.approx(expected, rel=1e-3)


def test_short_training_run_lowers_dev_loss_and_resumes(tmp_path: Path) -> None:
    cfg = TrainConfig(
        minutes=30,
        batch_size=4,
        fresh_per_batch=2,
        max_steps=40,
        workers=0,
        eval_every_s=1e9,
        dev_clips=2,
        model=TINY,
        lr=3e-3,
        segment_seconds=1.0,
    )
    best = train(tmp_path, SyntheticFactory(), cfg, progress=False, log=lambda _: None)
    assert best.exists()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40
    assert log[-1]["dev_loss"] < 0.8 * log[0]["dev_loss"]
    net, ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["train_state"]["step"] == 40
    assert not torch.allclose(net.feature_std, torch.ones_like(net.feature_std))
    more = TrainConfig(**{**cfg.__dict__, "max_steps": 43})
    train(tmp_path, SyntheticFactory(), more, progress=False, log=lambda _: None)
    _, ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["train_state"]["step"] == 43


def test_streaming_module_matches_sequence_model() -> None:
    torch.manual_seed(0)
    net = PercepNet(TINY).eval()
    x = torch.randn(1, 40, net.feature_mean.shape[0])
    with torch.no_grad():
        ref = net(x)
        stream = StreamingPercepNet(net)
        state = torch.zeros(1, state_size(TINY))
        gains, strengths = [], []
        for j in range(x.shape[1]):
            g, r, state = stream(x[:, j], state)
            gains.append(g)
            strengths.append(r)
    torch.testing.assert_close(torch.stack(gains, dim=1), ref.gains, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(strengths, dim=1), ref.strengths, atol=1e-5, rtol=0)


def test_widen_grows_the_network_without_changing_what_it_computes(tmp_path: Path) -> None:
    torch.manual_seed(1)
    small = PercepNet(ModelConfig(conv_channels=16, gru_size=24, gru_layers=3, gain_lo=0.1))
    small.set_normalisation(torch.randn(small.feature_mean.shape[0]), torch.rand(70) + 0.5)
    wide = ModelConfig(conv_channels=24, gru_size=40, gru_layers=3, strength_gru_size=80)
    big = widen(small, wide)
    assert big.config.gru_size == 40 and big.config.gain_lo == 0.1  # calibration carries over
    n_small = sum(p.numel() for p in small.parameters())
    assert sum(p.numel() for p in big.parameters()) > 1.5 * n_small
    x = torch.randn(2, 50, small.feature_mean.shape[0])
    with torch.no_grad():
        a, b = small(x), big(x)
    torch.testing.assert_close(b.gains, a.gains, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.strengths, a.strengths, atol=1e-6, rtol=0)
    # The new units are live: one gradient step on the widened net changes its output.
    big_params = dict(big.named_parameters())
    out = big(x)
    (out.gains.mean() + out.strengths.mean()).backward()
    grad = big_params["grus.0.weight_hh_l0"].grad
    assert grad is not None and float(grad.abs().sum()) > 0
    with pytest.raises(ValueError):
        widen(small, ModelConfig(conv_channels=8, gru_size=40, gru_layers=3))
    with pytest.raises(ValueError):
        widen(small, ModelConfig(conv_channels=24, gru_size=40, gru_layers=4))


def test_training_can_grow_its_initial_network(tmp_path: Path) -> None:
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    cfg = TrainConfig(
        minutes=30,
        batch_size=4,
        fresh_per_batch=2,
        max_steps=2,
        workers=0,
        eval_every_s=1e9,
        dev_clips=2,
        model=TINY,
        segment_seconds=1.0,
    )
    train(small_dir, SyntheticFactory(), cfg, progress=False, log=lambda _: None)
    wide = ModelConfig(conv_channels=48, gru_size=40, gru_layers=2, strength_gru_size=24)
    logs: list[str] = []
    grown = TrainConfig(**{**cfg.__dict__, "model": wide, "max_steps": 1})
    train(
        big_dir,
        SyntheticFactory(),
        grown,
        init=small_dir / "last.pt",
        grow=True,
        progress=False,
        log=logs.append,
    )
    assert any("widened" in line for line in logs)
    first = json.loads((big_dir / "log.jsonl").read_text().splitlines()[0])
    last_small = json.loads((small_dir / "log.jsonl").read_text().splitlines()[-1])
    # Step 0 of the grown run scores what the small network ended on.
    assert first["dev_loss"] == pytest.approx(last_small["dev_loss"], rel=1e-4)
    net, _ = load_checkpoint(big_dir / "last.pt")
    assert net.config.gru_size == 40 and net.config.conv_channels == 48


def test_grow_without_init_is_refused(capsys) -> None:  # type: ignore[no-untyped-def]
    from percepnet.cli import main

    assert main(["train", "--out", "/nonexistent/run", "--grow", "--gru", "256"]) == 2
    assert "--grow" in capsys.readouterr().err


def test_mix_overrides_change_the_recipe_and_reject_nonsense(capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from percepnet.cli import main, parse_mix_overrides
    from percepnet.data.mix import MixConfig

    mix = parse_mix_overrides(["noise_free_prob=0.2", "high_snr_prob=0.25"])
    assert MixConfig(**mix).noise_free_prob == 0.2  # type: ignore[arg-type]
    assert MixConfig(**mix).high_snr_prob == 0.25  # type: ignore[arg-type]
    for bad in (
        "noise_free_prob",
        "no_such_field=1",
        "noise_free_prob=x",
        "snr_db=3",
        "rir_prob=-1",
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mix_overrides([bad])
    assert main(["train", "--out", "/nonexistent/run", "--mix", "nope=1"]) == 2
    assert "--mix 'nope=1'" in capsys.readouterr().err


def test_silent_band_frames_are_passed_through_in_training_targets() -> None:
    from percepnet.features import compute_example
    from percepnet.train import SILENT_BAND_ENERGY, training_targets

    rng = np.random.default_rng(3)
    x = np.zeros(48000)
    x[12000:36000] = 0.05 * rng.standard_normal(24000)  # sound between digital silences
    ex = compute_example(x, x)
    silent = ex.E_y < SILENT_BAND_ENERGY
    assert silent.any() and not silent.all()
    assert np.all(ex.gains[silent] < 0.5)  # the oracle's ratio is 0/EPS there
    g, r = training_targets(ex)
    assert np.all(g[silent] == 1.0) and np.all(r[silent] == 0.0)
    assert np.array_equal(g[~silent], ex.gains[~silent])
    held, r_held = training_targets(ex, release=0.8)
    assert np.all(held[silent] == 1.0) and np.all(r_held[silent] == 0.0)


def test_release_gains_limits_each_fall_and_passes_rises() -> None:
    from percepnet.gains import release_gains

    g = np.array([[1.0, 0.2], [0.0, 0.9], [0.0, 0.1], [0.7, 0.1]])
    held = release_gains(g, 0.5)
    assert np.all(held >= g)  # never deeper than the oracle
    assert np.allclose(held[:, 0], [1.0, 0.5, 0.25, 0.7])  # falls halve, the rise passes
    assert np.allclose(held[:, 1], [0.2, 0.9, 0.45, 0.225])
    assert np.all(held[1:] >= 0.5 * held[:-1] - 1e-12)
    assert np.array_equal(g, [[1.0, 0.2], [0.0, 0.9], [0.0, 0.1], [0.7, 0.1]])  # input kept


def test_target_release_holds_the_gains_after_a_burst() -> None:
    from percepnet.features import compute_example
    from percepnet.train import training_targets

    rng = np.random.default_rng(4)
    x = np.zeros(48000)
    x[12000:24000] = 0.05 * rng.standard_normal(12000)
    noise = 0.01 * rng.standard_normal(48000)
    ex = compute_example(x + noise, x)
    plain, _ = training_targets(ex)
    held, _ = training_targets(ex, release=0.8)
    assert np.all(held >= plain - 1e-12)
    assert float(np.mean(held - plain)) > 0.01  # the decay after the burst is held


def test_target_release_outside_0_1_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from percepnet.cli import main

    for bad in ("1", "1.5", "-0.2", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--out", "/nonexistent/run", "--target-release", bad])
        assert exc.value.code == 2
    assert "--target-release" in capsys.readouterr().err


def test_release_gains_in_blocks_equals_the_whole() -> None:
    from percepnet.gains import release_gains

    g = np.random.default_rng(5).uniform(0, 1, (50, 4))
    whole = release_gains(g, 0.7)
    first = release_gains(g[:17], 0.7)
    second = release_gains(g[17:], 0.7, prev=first[-1])
    assert np.allclose(np.concatenate([first, second]), whole)
    assert not np.allclose(release_gains(g[17:], 0.7), whole[17:])  # the carry matters


def test_speech_weights_are_checked_and_reach_the_recipe(capsys) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from percepnet.cli import main, parse_speech_weights
    from percepnet.data.mix import MixConfig

    sources = {"tuxpaint", "klettres"}
    w = parse_speech_weights(["tuxpaint=2.5", "klettres=0.5"], sources)
    assert MixConfig(source_weights=w).source_weights == {"tuxpaint": 2.5, "klettres": 0.5}
    for bad in ("tuxpaint", "nosuch=2", "tuxpaint=x", "tuxpaint=0", "tuxpaint=inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_speech_weights([bad], sources)
    # An unknown source stops the run before it starts, naming the known ones.
    code = main(["train", "--out", "/nonexistent/run", "--speech-weight", "nosuch=2"])
    assert code == 2
    assert "--speech-weight 'nosuch=2'" in capsys.readouterr().err
