"""The oracle CLI and offline path: alignment, any rate/channels, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from percepnet.audio import resample
from percepnet.cli import main
from percepnet.constants import FRAME_SIZE, SAMPLE_RATE
from percepnet.enhancer import Enhancer
from tests.signals import add_noise, speechlike


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    clean = speechlike(1.0, rng)
    noisy = add_noise(clean, 5.0, rng)
    c16, n16 = resample(clean, SAMPLE_RATE, 16000), resample(noisy, SAMPLE_RATE, 16000)
    cp, np_ = tmp_path / "clean.wav", tmp_path / "noisy.wav"
    sf.write(cp, c16, 16000, subtype="FLOAT")
    sf.write(np_, np.stack([n16, n16], axis=1), 16000, subtype="FLOAT")  # stereo noisy
    return cp, np_, c16, n16


def _snr(ref: np.ndarray, est: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - est) ** 2)))


def test_oracle_cli_writes_aligned_output_at_input_rate(pair, tmp_path: Path) -> None:
    cp, np_, c16, n16 = pair
    out = tmp_path / "out.wav"
    assert main(["oracle", "--clean", str(cp), "--noisy", str(np_), "-o", str(out)]) == 0
    y, rate = sf.read(out, always_2d=True)
    assert rate == 16000
    assert y.shape == (len(n16), 2)
    # aligned sample for sample: the oracle output is much closer to clean than the input
    assert _snr(c16, y[:, 0]) > _snr(c16, n16) + 3.0
    lag = np.argmax(np.correlate(y[:4000, 0], c16[:4000], "full")) - 3999
    assert lag == 0


@pytest.mark.parametrize("flag", ["--no-pitch-filter", "--no-postfilter"])
def test_oracle_cli_switches(pair, tmp_path: Path, flag: str) -> None:
    cp, np_, _, _ = pair
    out = tmp_path / "out.wav"
    assert main(["oracle", "--clean", str(cp), "--noisy", str(np_), "-o", str(out), flag]) == 0
    assert out.exists()


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["oracle", "--clean", str(tmp_path / "nope.wav"), "--noisy", "x.wav", "-o", "o.wav"])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err


def test_unreadable_file_is_a_clear_error(pair, tmp_path: Path, capsys) -> None:
    _, np_, _, _ = pair
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    rc = main(["oracle", "--clean", str(bad), "--noisy", str(np_), "-o", str(tmp_path / "o.wav")])
    assert rc == 2
    assert "unreadable audio" in capsys.readouterr().err


def test_length_mismatch_is_a_clear_error(pair, tmp_path: Path, capsys) -> None:
    cp, _, _, n16 = pair
    short = tmp_path / "short.wav"
    sf.write(short, n16[:8000], 16000)
    rc = main(["oracle", "--clean", str(cp), "--noisy", str(short), "-o", str(tmp_path / "o.wav")])
    assert rc == 2
    assert "differ in length" in capsys.readouterr().err


def test_silence_clipping_and_nan_give_finite_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    clean = speechlike(0.5, rng)
    cases = {
        "silence": np.zeros_like(clean),
        "clipped": np.clip(4.0 * add_noise(clean, 0.0, rng), -1.0, 1.0),
        "nan": np.where(rng.random(len(clean)) < 0.01, np.nan, add_noise(clean, 5.0, rng)),
    }
    for name, noisy in cases.items():
        cp, np_, out = (
            tmp_path / f"{name}_c.wav",
            tmp_path / f"{name}_n.wav",
            tmp_path / f"{name}_o.wav",
        )
        sf.write(cp, clean, SAMPLE_RATE, subtype="FLOAT")
        sf.write(np_, noisy, SAMPLE_RATE, subtype="FLOAT")
        assert main(["oracle", "--clean", str(cp), "--noisy", str(np_), "-o", str(out)]) == 0
        y, _ = sf.read(out)
        assert np.isfinite(y).all(), name
        if name == "silence":
            assert np.abs(y).max() < 1e-4


def test_enhancer_rejects_wrong_frame_size_and_counts_nan() -> None:
    enh = Enhancer()
    with pytest.raises(ValueError, match="480"):
        enh.process(np.zeros(FRAME_SIZE + 1))
    frame = np.zeros(FRAME_SIZE)
    frame[3] = np.nan
    frame[7] = np.inf
    out = enh.process(frame)
    assert np.isfinite(out).all()
    assert enh.diagnostics.nonfinite_samples == 2
