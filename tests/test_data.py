"""Corpus splits, screening, RIR targets and the mixing recipe, on a tiny synthetic corpus."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from percepnet.constants import SAMPLE_RATE
from percepnet.data import corpus
from percepnet.data.corpus import DataConfig, Entry, assign_splits, bandwidth_estimate
from percepnet.data.mix import MixConfig, MixtureGenerator, active_power, write_eval_set
from percepnet.data.rooms import (
    DIRECT_OFFSET,
    EARLY_S,
    TARGET_RT60_S,
    RirBank,
    estimate_rt60,
    normalise_rir,
    target_rir,
)


def voiced(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    ph = 2 * np.pi * np.cumsum(f) / rate
    x = sum(np.sin(k * ph) / k for k in range(1, int(rate / 2 / f0 / 1.2)))
    env = np.clip(np.sin(2 * np.pi * 1.5 * t + rng.uniform(0, 3)), 0, None)
    y = x * env + 1e-3 * rng.standard_normal(len(t))
    return np.asarray(0.3 * y / np.max(np.abs(y)))


def decaying_rir(rt60: float, rate: int, seed: int, seconds: float = 1.2) -> np.ndarray:
    """Exponentially decaying Gaussian noise with a direct-path spike: known RT60."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    h = 0.3 * rng.standard_normal(n) * 10 ** (-3 * t / rt60)
    h[:20] = 0.0
    h[10] = 5.0  # the direct path dominates every reflection
    return h


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    root = tmp_path_factory.mktemp("data")
    spk = root / "speech" / "librispeech_excerpts"
    spk.mkdir(parents=True)
    for s in range(12):
        for u in range(2):
            x = voiced(2.0, 16000, 100 + 10 * s, seed=100 * s + u)
            sf.write(spk / f"{1000 + s}-1-{u:04d}.flac", x, 16000)
    lj = root / "speech" / "ljspeech_subset" / "wavs"
    lj.mkdir(parents=True)
    sf.write(lj / "LJ001-0001.flac", voiced(3.0, 22050, 210, seed=7), 22050)
    # Rejected by screening: silent and clipped clips.
    sf.write(spk / "2000-1-0000.flac", np.zeros(32000), 16000)
    sf.write(spk / "2001-1-0000.flac", np.clip(10 * voiced(2.0, 16000, 150, 3), -1, 1), 16000)
    nz = root / "noise" / "kitchen"
    nz.mkdir(parents=True)
    for i in range(8):
        sf.write(
            nz / f"noise{i}.flac", 0.1 * np.random.default_rng(i).standard_normal(48000), 16000
        )
    rr = root / "rirs" / "lab"
    rr.mkdir(parents=True)
    for i in range(4):
        sf.write(rr / f"r{i}.flac", decaying_rir(0.5, 16000, i), 16000)
    cfg = DataConfig(root, tmp_path_factory.mktemp("cache"))
    corpus.build_manifest(cfg, fetch=False, use_dnsmos=False, log=lambda _m: None)
    return cfg


@pytest.fixture(scope="module")
def train_rooms() -> RirBank:
    rirs = [normalise_rir(decaying_rir(rt, SAMPLE_RATE, i)) for i, rt in enumerate((0.4, 0.8))]
    return RirBank(rirs, [estimate_rt60(h) for h in rirs])


def test_manifest_screening_and_disjoint_splits(tiny: DataConfig) -> None:
    entries = corpus.load_manifest(tiny.manifest)
    status = {Path(e.path).name: e.status for e in entries}
    assert status["2000-1-0000.flac"] == "rejected:silent"
    assert status["2001-1-0000.flac"] == "rejected:clipped"
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for e in entries:
        groups[(e.source, e.speaker)].add(e.split)
    assert all(len(s) == 1 for s in groups.values()), groups
    speech_splits = {e.split for e in entries if e.kind == "speech" and e.status == "ok"}
    assert speech_splits == {"train", "dev", "test"}
    assert {e.split for e in entries if e.source == "ljspeech"} == {"train"}
    assert {e.split for e in entries if e.kind == "rir"} <= {"dev", "test"}
    assert {e.split for e in entries if e.kind == "noise"} == {"train", "dev", "test"}
    bw = [e.bandwidth_hz for e in entries if e.source == "librispeech" and e.status == "ok"]
    assert all(6000 <= b <= 8000 for b in bw), bw


def test_assign_splits_deterministic_and_grouped() -> None:
    def make() -> list[Entry]:
        return [
            Entry("speech", "shared", f"f{i}.flac", "src", f"spk{i % 40}", duration=1.0 + i % 3)
            for i in range(400)
        ]

    a, b = make(), make()[::-1]
    assign_splits(a)
    assign_splits(b)
    assert {e.path: e.split for e in a} == {e.path: e.split for e in b}
    by_spk: dict[str, set[str]] = defaultdict(set)
    for e in a:
        by_spk[e.speaker].add(e.split)
    assert all(len(v) == 1 for v in by_spk.values())
    total = sum(e.duration for e in a)
    test_h = sum(e.duration for e in a if e.split == "test") / total
    assert 0.08 <= test_h <= 0.2


def test_real_manifest_is_speaker_disjoint() -> None:
    path = corpus.cache_root() / "manifest.csv"
    if not path.exists():
        pytest.skip("no corpus manifest built here")
    splits: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    with path.open() as f:
        for row in csv.DictReader(f):
            splits[(row["kind"], row["source"], row["speaker"])].add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert not any("train" in s for k, s in splits.items() if k[0] == "rir")


def test_bandwidth_estimate() -> None:
    import soxr

    rng = np.random.default_rng(0)
    x16 = rng.standard_normal(16000 * 2)
    x48 = np.asarray(soxr.resample(x16, 16000, 48000))
    assert 7500 <= bandwidth_estimate(x48, 48000) <= 8000
    assert bandwidth_estimate(rng.standard_normal(48000), 48000) >= 23000
    assert bandwidth_estimate(np.zeros(4800), 48000) == 0.0


def test_target_rir_decays_at_200ms() -> None:
    h = normalise_rir(decaying_rir(0.9, SAMPLE_RATE, 3))
    assert estimate_rt60(h) == pytest.approx(0.9, rel=0.1)
    ht = target_rir(h)
    e = DIRECT_OFFSET + int(EARLY_S * SAMPLE_RATE)
    # Early part unchanged, late part decays with the target RT60.
    np.testing.assert_array_equal(ht[:e], h[:e])
    assert estimate_rt60(ht[e:]) == pytest.approx(TARGET_RT60_S, rel=0.1)
    assert estimate_rt60(h[e:]) == pytest.approx(0.9, rel=0.1)
    # A room drier than the target is left alone.
    dry = normalise_rir(decaying_rir(0.1, SAMPLE_RATE, 4))
    np.testing.assert_array_equal(target_rir(dry), dry)


def test_target_rir_of_simulated_room() -> None:
    pytest.importorskip("pyroomacoustics")
    from percepnet.data.rooms import simulate_room

    h, meta = simulate_room(np.random.default_rng(5))
    assert meta["rt60"] > 0.3
    ht = target_rir(h)
    e = DIRECT_OFFSET + int(EARLY_S * SAMPLE_RATE)
    assert estimate_rt60(ht[e:]) == pytest.approx(TARGET_RT60_S, rel=0.2)


def _gen(tiny: DataConfig, rooms: RirBank, seed: int = 1, **kw: object) -> MixtureGenerator:
    base: dict[str, object] = {"segment_s": 2.0, "clip_prob": 0.0}
    base.update(kw)
    return MixtureGenerator(tiny, "train", seed, MixConfig(**base), rooms=rooms)  # type: ignore[arg-type]


def test_mixture_snr_matches_request(tiny: DataConfig, train_rooms: RirBank) -> None:
    gen = _gen(tiny, train_rooms, noise_free_prob=0.0)
    for i in range(12):
        m = gen.generate(i)
        snr = 10 * np.log10(active_power(m.speech) / np.mean(m.noise**2))
        assert snr == pytest.approx(m.meta["snr_db"], abs=0.5), m.meta
        assert -5.0 <= m.meta["snr_db"] <= 40.0
        np.testing.assert_allclose(m.noisy, np.clip(m.speech + m.noise, -1, 1))
        assert len(m.clean) == len(m.noisy) == 2 * SAMPLE_RATE
        assert np.max(np.abs(m.noisy)) <= 1.0


def test_mixture_reproducible_from_seed(tiny: DataConfig, train_rooms: RirBank) -> None:
    a = _gen(tiny, train_rooms, seed=3)
    b = _gen(tiny, train_rooms, seed=3)
    c = _gen(tiny, train_rooms, seed=4)
    ma, mb, mc = a.generate(5), b.generate(5), c.generate(5)
    np.testing.assert_array_equal(ma.noisy, mb.noisy)
    np.testing.assert_array_equal(ma.clean, mb.clean)
    assert ma.meta == mb.meta
    assert not np.array_equal(ma.noisy, mc.noisy)
    # Iteration gives a new mixture every call, the same sequence for the same seed.
    first = [next(iter(a))[1] for _ in range(3)]
    again = [next(iter(b))[1] for _ in range(3)]
    assert not np.array_equal(first[0], first[1])
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)


def test_bandwidth_meta_respects_lowpass(tiny: DataConfig, train_rooms: RirBank) -> None:
    gen = _gen(
        tiny,
        train_rooms,
        speech_lowpass_prob=1.0,
        lowpass_hz=(3000.0, 6000.0),
        channel_probs=(0.0, 0.0),
    )
    for i in range(6):
        m = gen.generate(i)
        lp = m.meta["speech_lowpass_hz"]
        assert 3000.0 <= lp <= 6000.0
        assert m.meta["bandwidth_hz"] == pytest.approx(min(lp, m.meta["speech_bandwidth_hz"]))
        # The low-pass is really in the clean target: little energy an octave above.
        spec = np.abs(np.fft.rfft(m.clean)) ** 2
        f = np.fft.rfftfreq(len(m.clean), 1 / SAMPLE_RATE)
        ratio = spec[f > 2 * lp].sum() / spec[f < lp].sum()
        assert ratio < 1e-4
    plain = _gen(tiny, train_rooms, speech_lowpass_prob=0.0, channel_probs=(0.0, 0.0)).generate(0)
    assert math.isinf(plain.meta["speech_lowpass_hz"])
    # The tiny corpus is 16/22 kHz speech: the mask stops at its bandwidth.
    assert plain.meta["bandwidth_hz"] <= 11025.0


@pytest.mark.parametrize(("share", "rate"), [((1.0, 0.0), 8000), ((0.0, 1.0), 16000)])
def test_channel_band_limits_speech_and_noise_together(
    tiny: DataConfig, train_rooms: RirBank, share: tuple[float, float], rate: int
) -> None:
    """A telephone or wideband channel: speech, target and noise all lose the band above
    the channel's Nyquist frequency, the SNR holds on what passed, and the loss mask
    stops at the channel's passband."""
    gen = _gen(tiny, train_rooms, channel_probs=share, noise_free_prob=0.0)
    f = np.fft.rfftfreq(2 * SAMPLE_RATE, 1 / SAMPLE_RATE)
    for i in range(4):
        m = gen.generate(i)
        assert m.meta["channel_rate"] == rate
        assert m.meta["bandwidth_hz"] <= 0.9 * rate / 2 + 1e-6
        for part in (m.clean, m.noise, m.noisy):
            spec = np.abs(np.fft.rfft(part)) ** 2
            assert spec[f > 0.55 * rate].sum() < 1e-4 * spec[f < 0.45 * rate].sum()
        snr = 10 * np.log10(active_power(m.speech) / np.mean(m.noise**2))
        assert snr == pytest.approx(m.meta["snr_db"], abs=0.5)


def test_speed_perturbation_moves_pitch(tiny: DataConfig, train_rooms: RirBank) -> None:
    """Speech read at rate x speed: its pitch moves by the factor (new voices)."""
    base = {"channel_probs": (0.0, 0.0), "noise_free_prob": 1.0, "rir_prob": 0.0}
    base |= {"speech_filter_prob": 0.0, "speech_lowpass_prob": 0.0}
    plain = _gen(tiny, train_rooms, speed_prob=0.0, **base).generate(0)
    fast = _gen(tiny, train_rooms, speed_prob=1.0, speed_range=(1.25, 1.25), **base).generate(0)
    assert plain.meta["speed"] == 1.0 and fast.meta["speed"] == 1.25

    def pitch(x: np.ndarray) -> float:
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
        band = (f > 60) & (f < 400)
        return float(f[band][np.argmax(spec[band])])

    assert pitch(fast.clean) == pytest.approx(1.25 * pitch(plain.clean), rel=0.1)


def test_room_target_is_drier_than_input(tiny: DataConfig, train_rooms: RirBank) -> None:
    gen = _gen(tiny, train_rooms, rir_prob=1.0, noise_free_prob=1.0)
    m = gen.generate(0)
    assert m.meta["rir"] >= 0
    # Noise-free: the input is the reverberant speech; the target has less tail energy.
    assert np.sum(m.clean**2) < np.sum(m.noisy**2)
    assert np.corrcoef(m.clean, m.noisy)[0, 1] > 0.5


def test_eval_set_writer(tiny: DataConfig, tmp_path: Path) -> None:
    csv_path = write_eval_set("dev", 2, tmp_path, seed=0, manifest=tiny)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    clean, rate = sf.read(tmp_path / rows[0]["clean"])
    noisy, _ = sf.read(tmp_path / rows[0]["noisy"])
    assert rate == SAMPLE_RATE and clean.shape == noisy.shape
    assert float(rows[0]["bandwidth_hz"]) > 0


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_opensfx_catalogue_is_split_into_its_noise_recordings(tmp_path: Path) -> None:
    import struct

    from percepnet.data.fetch import read_opensfx_catalogue, split_opensfx

    rng = np.random.default_rng(0)
    sounds = [
        (
            '"Helicopter". By A. License: CC BY 3.0.',
            _wav_bytes(0.1 * rng.standard_normal(4410), 44100),
        ),
        ('"Cow". By B. License: CC0.', _wav_bytes(0.1 * rng.standard_normal(4410), 44100)),
        ('"Unused/Nothing". Empty.', b""),
        ('"Toyland: Comedy bus start (1)". By C.', _wav_bytes(np.zeros(441), 44100)),
    ]
    table = 8 * len(sounds)
    body = b""
    pairs = []
    for name, wav in sounds:
        entry = bytes([len(name) + 1]) + name.encode("latin-1") + b"\0" + wav
        pairs.append((0x80000000 | (table + len(body)), len(entry)))
        body += entry
    cat = tmp_path / "opensfx.cat"
    cat.write_bytes(b"".join(struct.pack("<II", o, s) for o, s in pairs) + body)

    entries = read_opensfx_catalogue(cat)
    assert [n for n, _ in entries] == [n for n, _ in sounds]
    assert (
        split_opensfx(cat, tmp_path / "out") == 1
    )  # the helicopter; not the cow or the comedy bus
    files = sorted((tmp_path / "out").glob("*.flac"))
    assert [f.name for f in files] == ["00_helicopter.flac"]
    x, rate = sf.read(files[0])
    assert rate == 44100 and len(x) == 4410
    assert "CC BY 3.0" in (tmp_path / "out" / "credits.txt").read_text()

    bad = tmp_path / "bad.cat"
    bad.write_bytes(struct.pack("<II", 0x80000008, 10_000))
    with pytest.raises(ValueError):
        read_opensfx_catalogue(bad)


def test_noise_draw_tempers_the_largest_source() -> None:
    from percepnet.data.mix import noise_draw_p

    durations = np.array([100.0, 300.0, 25.0])
    sources = np.array(["music", "music", "engines"])
    p = noise_draw_p(durations, sources, {})
    # shares go as sqrt(hours): 20 : 5, against 400 : 25 by duration
    assert p[:2].sum() == pytest.approx(0.8)
    assert p[1] / p[0] == pytest.approx(3.0)  # by duration within a source
    p = noise_draw_p(durations, sources, {"music": 0.25})
    assert p[2] == pytest.approx(0.5)
    assert noise_draw_p(np.zeros(0), np.zeros(0, dtype=np.str_), {}).size == 0


def test_babble_through_rooms(tiny: DataConfig) -> None:
    """babble_room_prob=1 sends every babble talker through a room of the bank; the
    speech side of the mixture is untouched (up to the scaling that keeps the mixture
    below full scale). The bank here holds one 'room' that is a
    10 ms moving average (a low-pass at ~100 Hz), so its mark on the babble is plain."""
    lowpass_room = RirBank([np.full(480, 1 / 480)], [0.5])
    only_babble: dict[str, object] = {
        "noise_free_prob": 0.0,
        "noise_kind_weights": (0.0, 0.0, 1.0, 0.0, 0.0),
        "second_noise_prob": 0.0,
        "noise_filter_prob": 0.0,
        "noise_lowpass_prob": 0.0,
        "channel_probs": (0.0, 0.0),
    }
    dry = _gen(tiny, lowpass_room, **only_babble)
    roomy = _gen(tiny, lowpass_room, babble_room_prob=1.0, **only_babble)
    f = np.fft.rfftfreq(2 * SAMPLE_RATE, 1 / SAMPLE_RATE)

    def high_share(n: np.ndarray) -> float:
        p = np.abs(np.fft.rfft(n)) ** 2
        return float(p[f > 1000].sum() / p.sum())

    for i in range(4):
        a, b = dry.generate(i), roomy.generate(i)
        k = float(np.dot(a.clean, b.clean) / np.dot(b.clean, b.clean))
        np.testing.assert_allclose(a.clean, k * b.clean, atol=1e-9)
        assert a.meta["noise_kind"] == b.meta["noise_kind"] == "babble"
        assert high_share(a.noise) > 0.05
        assert high_share(b.noise) < 0.1 * high_share(a.noise)
