"""On-the-fly mixtures (DESIGN.md section 4) and the fixed dev/test sets.

One mixture, all at SAMPLE_RATE, float64 mono, `segment_s` long:

  s   speech: clips of one source (upsampled with soxr), joined with short gaps;
          half the time sped up or slowed down (pitch, formants and tempo together:
          new voices from the same recordings)
  s   <- random biquad (mic/channel colour), random low-pass
  x   target = s * h_target (direct + early + a 200 ms tail) or s without a room
  y_s reverberant speech = s * h (full RIR), the part of the input that is speech
  n   noise: recorded (split-disjoint files), coloured, babble (dry, or each talker
          through a room: babble_room_prob), hum, clicks or
          two of them; its own biquad and low-pass; none in ~10 % of mixtures
  SNR active level of y_s over mean power of n: uniform in snr_db, or in
          high_snr_db for a share high_snr_prob (real calls sit mostly at 0-15 dB)
  channel speech and noise (and the target) together through an 8 kHz
          (telephone) or 16 kHz (wideband) channel: a caller's speech and noise
          arrive band-limited together by the codec
  level active level of y_s uniform in level_dbfs, then the whole mixture is
          scaled down if it would exceed full scale, unless this mixture is clipped
  noisy = clip(y_s + n)

meta["bandwidth_hz"] = min(speech clips' bandwidth, speech low-pass, channel): the trainer
masks bands above it. Every mixture is a pure function of (seed, index).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.signal
import soxr

from percepnet.constants import SAMPLE_RATE
from percepnet.data import noise as synth
from percepnet.data.corpus import (
    DataConfig,
    Entry,
    Pack,
    active_level_db,
    build_pack,
    cache_root,
    data_root,
    load_manifest,
    load_pack,
    pack_paths,
)
from percepnet.data.rooms import RirBank

FloatArray = npt.NDArray[np.float64]

NOISE_KINDS = ("file", "coloured", "babble", "hum", "clicks")


@dataclass(frozen=True)
class MixConfig:
    """The augmentation recipe; probabilities are per mixture."""

    segment_s: float = 4.0
    snr_db: tuple[float, float] = (-5.0, 20.0)
    high_snr_prob: float = 0.15
    high_snr_db: tuple[float, float] = (20.0, 40.0)
    noise_free_prob: float = 0.1
    level_dbfs: tuple[float, float] = (-40.0, -5.0)
    """Active speech level of the input (dBFS, RMS re. full scale)."""
    speech_filter_prob: float = 0.5
    noise_filter_prob: float = 0.5
    biquad_max: float = 0.375
    """Random biquad coefficients b1, b2, a1, a2 drawn from +-biquad_max (RNNoise recipe)."""
    speech_lowpass_prob: float = 0.15
    noise_lowpass_prob: float = 0.15
    lowpass_hz: tuple[float, float] = (3000.0, 20000.0)
    """Low-pass cut-offs, log-uniform."""
    channel_probs: tuple[float, float] = (0.3, 0.3)
    """Shares of mixtures sent through an 8 kHz and a 16 kHz channel (speech and noise
    together); the rest keep their own bandwidth."""
    speed_prob: float = 0.5
    speed_range: tuple[float, float] = (0.88, 1.12)
    """Speed perturbation of the speech: its clips are read as if recorded at rate x
    factor, which moves pitch and formants by the factor."""
    rir_prob: float = 0.5
    clip_prob: float = 0.05
    clip_ratio: tuple[float, float] = (0.25, 0.8)
    """Clipping threshold as a fraction of the mixture's peak."""
    noise_kind_weights: tuple[float, ...] = (0.55, 0.12, 0.15, 0.12, 0.06)
    """Weights of NOISE_KINDS."""
    second_noise_prob: float = 0.2
    babble_talkers: tuple[int, int] = (3, 8)
    babble_room_prob: float = 0.0
    """Share of babble noises whose talkers each speak through a room of the split's
    bank (its full RIR: reverberant, as a crowd reaches a call's microphone) instead of
    dry. Dry babble is close talkers, hard to tell from the caller; 0 keeps the
    mixtures of earlier recipes bit-identical."""
    gap_s: tuple[float, float] = (0.05, 0.6)
    """Silence between consecutive speech clips."""
    lead_s: float = 0.5
    """Speech starts up to this late in the segment."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Multiplies a speech source's share (by duration); missing sources weigh 1."""
    noise_source_weights: dict[str, float] = field(
        default_factory=lambda: {"hedgewars_music": 0.3, "opensfx": 2.0}
    )
    """Noise files are drawn by source, each source's share proportional to the square
    root of its hours times its weight here (default 1), then by duration within it.
    Without it one source dominates: game music was half of the training noise, though
    a call's background is seldom music; the few recorded vehicles and machines
    (opensfx) are what calls have most."""


@dataclass
class Mixture:
    clean: FloatArray
    """Target: dry or early-reverberant speech, the same scale as in noisy."""
    noisy: FloatArray
    speech: FloatArray
    """Reverberant speech component of noisy (before clipping)."""
    noise: FloatArray
    """Noise component of noisy (before clipping)."""
    meta: dict[str, Any]


def _biquad(rng: np.random.Generator, m: float) -> tuple[FloatArray, FloatArray]:
    """Random second-order filter; |a1|,|a2| <= 0.375 keeps the poles inside the unit circle."""
    r = rng.uniform(-m, m, size=4)
    return np.array([1.0, r[0], r[1]]), np.array([1.0, r[2], r[3]])


def _lowpass(x: FloatArray, cutoff: float) -> FloatArray:
    if cutoff >= SAMPLE_RATE / 2 * 0.98:
        return x
    sos = scipy.signal.butter(8, cutoff, btype="low", fs=SAMPLE_RATE, output="sos")
    return np.asarray(scipy.signal.sosfilt(sos, x))


CHANNEL_PASSBAND = 0.9
"""Share of a channel's Nyquist frequency that counts as its bandwidth (soxr's HQ
filter passes about 0.91 of it)."""


def band_limit(x: FloatArray, rate: int) -> FloatArray:
    """x (at SAMPLE_RATE) through a channel sampled at `rate`: down, then back up."""
    down = soxr.resample(x, SAMPLE_RATE, rate, quality="HQ")
    up = np.asarray(soxr.resample(down, rate, SAMPLE_RATE, quality="HQ"))
    out = np.zeros_like(x)
    k = min(len(x), len(up))
    out[:k] = up[:k]
    return out


def _power(x: FloatArray) -> float:
    return float(np.mean(x**2))


def active_power(x: FloatArray) -> float:
    """Mean power of the active frames (within 40 dB of the loudest 20 ms frame)."""
    return float(10 ** (active_level_db(x, SAMPLE_RATE) / 10))


def mix_at_snr(speech: FloatArray, noise: FloatArray, snr_db: float) -> FloatArray:
    """noise scaled so active_power(speech) / power(noise) = snr_db."""
    pn = _power(noise)
    if pn <= 0:
        return noise
    return noise * math.sqrt(active_power(speech) / (pn * 10 ** (snr_db / 10)))


def noise_draw_p(
    durations: FloatArray, sources: npt.NDArray[np.str_], weights: dict[str, float]
) -> FloatArray:
    """Probability of drawing each noise file (see MixConfig.noise_source_weights)."""
    p = np.zeros(len(durations))
    if not len(durations):
        return p
    for s in np.unique(sources):
        idx = np.nonzero(sources == s)[0]
        total = float(durations[idx].sum())
        if total <= 0:
            continue
        share = math.sqrt(total) * weights.get(str(s), 1.0)
        p[idx] = share * durations[idx] / total
    return p / p.sum()


class MixtureGenerator:
    """Endless, reproducible mixtures of one split.

    `generate(i)` is mixture i of this seed; iterating yields (clean, noisy, meta)
    for i = 0, 1, 2, ... so every call is a new mixture (augmentation). Data
    loader workers can take disjoint index ranges.
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str] | DataConfig | None,
        split: str,
        seed: int = 0,
        config: MixConfig | None = None,
        rooms: RirBank | None = None,
    ) -> None:
        if isinstance(manifest, DataConfig):
            self.cfg = manifest
        elif manifest is None:
            self.cfg = DataConfig(data_root(), cache_root())
        else:
            self.cfg = DataConfig(data_root(), Path(manifest).resolve().parent)
        self.split = split
        self.seed = seed
        self.config = config or MixConfig()
        self.length = round(self.config.segment_s * SAMPLE_RATE)
        entries: list[Entry] | None = None
        for kind in ("speech", "noise"):
            if not pack_paths(self.cfg, kind, split)[0].exists():
                if entries is None:
                    entries = load_manifest(self.cfg.manifest)
                build_pack(self.cfg, entries, kind, split)
        self.speech: Pack = load_pack(self.cfg, "speech", split)
        self.noise: Pack = load_pack(self.cfg, "noise", split)
        if len(self.speech) == 0:
            raise ValueError(f"no speech in split {split!r}")
        if (
            rooms is None
            and split != "train"
            and entries is None
            and not (self.cfg.rirs / f"measured_{split}.npz").exists()
        ):
            entries = load_manifest(self.cfg.manifest)
        # Synthetic rooms for train, measured ones for dev/test, unless given.
        self.rooms = rooms if rooms is not None else RirBank.for_split(self.cfg, split, entries)
        dur = self.speech.lengths / self.speech.rates
        w = (
            np.array([self.config.source_weights.get(str(s), 1.0) for s in self.speech.sources])
            * dur
        )
        self._speech_p = w / w.sum()
        self._by_source: dict[str, npt.NDArray[np.int64]] = {}
        for s in np.unique(self.speech.sources):
            self._by_source[str(s)] = np.nonzero(self.speech.sources == s)[0]
        self._noise_p = noise_draw_p(
            self.noise.lengths / self.noise.rates,
            self.noise.sources,
            self.config.noise_source_weights,
        )
        self._index = 0

    # ------------------------------------------------------------------ parts

    def _crop(
        self,
        pack: Pack,
        i: int,
        n_out: int,
        rng: np.random.Generator,
        loop: bool,
        speed: float = 1.0,
    ) -> FloatArray:
        """Up to n_out samples at SAMPLE_RATE from a random point of clip i, played
        `speed` times faster (its rate taken as rate x speed)."""
        o, n, rate = int(pack.offsets[i]), int(pack.lengths[i]), int(pack.rates[i])
        rate_in = rate * speed
        need = math.ceil(n_out * rate_in / SAMPLE_RATE) + 16
        if n > need:
            start = int(rng.integers(0, n - need + 1))
            x = np.asarray(pack.samples[o + start : o + start + need], dtype=np.float64)
        else:
            x = np.asarray(pack.samples[o : o + n], dtype=np.float64)
            if loop and n > 0:
                start = int(rng.integers(0, n))
                x = np.roll(x, -start)
                x = np.tile(x, need // n + 1)[:need]
        x /= 32768.0
        if rate_in != SAMPLE_RATE:
            x = np.asarray(soxr.resample(x, rate_in, SAMPLE_RATE, quality="HQ"))
        return x[:n_out]

    def _speech(self, rng: np.random.Generator) -> tuple[FloatArray, float, list[str], float]:
        c = self.config
        out = np.zeros(self.length)
        first = int(rng.choice(len(self.speech), p=self._speech_p))
        pool = self._by_source[str(self.speech.sources[first])]
        pos = int(rng.uniform(0, c.lead_s) * SAMPLE_RATE)
        bandwidth = math.inf
        speakers: list[str] = []
        factor = float(rng.uniform(*c.speed_range))  # drawn always: same draws after it
        speed = factor if rng.random() < c.speed_prob else 1.0
        i = first
        while pos < self.length - SAMPLE_RATE // 10:
            x = self._crop(self.speech, i, self.length - pos, rng, loop=False, speed=speed)
            lvl = active_level_db(x, SAMPLE_RATE)
            x *= 10 ** ((-25.0 + rng.uniform(-3, 3) - lvl) / 20)
            out[pos : pos + len(x)] = x
            bandwidth = min(bandwidth, float(self.speech.bandwidths[i]) * speed)
            speakers.append(str(self.speech.speakers[i]))
            pos += len(x) + int(rng.uniform(*c.gap_s) * SAMPLE_RATE)
            i = int(rng.choice(pool))
        return out, bandwidth, speakers, speed

    def _noise_of_kind(
        self, kind: str, rng: np.random.Generator, speakers: Sequence[str]
    ) -> FloatArray:
        n = self.length
        if kind == "file" and len(self.noise):
            i = int(rng.choice(len(self.noise), p=self._noise_p))
            return self._crop(self.noise, i, n, rng, loop=True)
        c = self.config
        if kind == "babble":
            k = int(rng.integers(c.babble_talkers[0], c.babble_talkers[1] + 1))
            out = np.zeros(n)
            used = set(speakers)
            roomy = c.babble_room_prob > 0 and rng.random() < c.babble_room_prob
            for _ in range(k):
                for _try in range(10):
                    j = int(rng.choice(len(self.speech), p=self._speech_p))
                    if str(self.speech.speakers[j]) not in used:
                        break
                x = self._crop(self.speech, j, n, rng, loop=True)
                if roomy:
                    h = self.rooms.rirs[int(rng.integers(0, len(self.rooms)))]
                    x = scipy.signal.oaconvolve(x, h)[: len(x)]
                out[: len(x)] += x * 10 ** (rng.uniform(-6, 0) / 20) / math.sqrt(_power(x) + 1e-12)
            return out
        if kind == "hum":
            return synth.hum(n, rng)
        if kind == "clicks":
            return synth.clicks(n, rng)
        return synth.coloured(n, rng)

    # ------------------------------------------------------------------ mixture

    def generate(self, index: int) -> Mixture:
        c = self.config
        rng = np.random.default_rng([self.seed, index])
        meta: dict[str, Any] = {"split": self.split, "seed": self.seed, "index": index}

        s, speech_bw, speakers, speed = self._speech(rng)
        meta["speakers"] = ";".join(sorted(set(speakers)))
        meta["speed"] = speed
        meta["speech_bandwidth_hz"] = speech_bw
        if rng.random() < c.speech_filter_prob:
            b, a = _biquad(rng, c.biquad_max)
            s = np.asarray(scipy.signal.lfilter(b, a, s))
            meta["speech_filter"] = ",".join(f"{v:.3f}" for v in (*b[1:], *a[1:]))
        lp = math.inf
        if rng.random() < c.speech_lowpass_prob:
            lp = float(np.exp(rng.uniform(*np.log(c.lowpass_hz))))
            s = _lowpass(s, lp)
        meta["speech_lowpass_hz"] = lp
        meta["bandwidth_hz"] = float(min(speech_bw, lp, SAMPLE_RATE / 2))

        # Room: full RIR for the input, shortened tail for the target.
        if rng.random() < c.rir_prob:
            r = int(rng.integers(0, len(self.rooms)))
            h, h_t = self.rooms.pair(r)
            y_s = scipy.signal.oaconvolve(s, h)[: self.length]
            x = scipy.signal.oaconvolve(s, h_t)[: self.length]
            meta["rir"] = r
            meta["rt60_s"] = float(self.rooms.rt60[r])
        else:
            y_s = s
            x = s.copy()
            meta["rir"] = -1
            meta["rt60_s"] = 0.0

        # Channel: speech, target and noise band-limited together, as a codec does; the
        # SNR is set on what passed the channel, as it would be measured on the call.
        u = rng.random()
        channel_rate = 0
        if u < c.channel_probs[0]:
            channel_rate = 8000
        elif u < c.channel_probs[0] + c.channel_probs[1]:
            channel_rate = 16000
        if channel_rate:
            y_s, x = band_limit(y_s, channel_rate), band_limit(x, channel_rate)
            meta["bandwidth_hz"] = min(meta["bandwidth_hz"], CHANNEL_PASSBAND * channel_rate / 2)
        meta["channel_rate"] = channel_rate

        # Noise.
        noise_free = rng.random() < c.noise_free_prob
        if noise_free:
            n = np.zeros(self.length)
            meta["noise_kind"] = "none"
            meta["snr_db"] = math.inf
        else:
            w = np.asarray(c.noise_kind_weights, dtype=np.float64)
            if not len(self.noise):
                w[0] = 0.0
            kinds = [str(k) for k in rng.choice(NOISE_KINDS, size=2, p=w / w.sum())]
            n = self._noise_of_kind(kinds[0], rng, speakers)
            n /= math.sqrt(_power(n) + 1e-20)
            if rng.random() < c.second_noise_prob:
                n2 = self._noise_of_kind(kinds[1], rng, speakers)
                n += n2 * 10 ** (rng.uniform(-20, 0) / 20) / math.sqrt(_power(n2) + 1e-20)
                meta["noise_kind"] = "+".join(kinds)
            else:
                meta["noise_kind"] = kinds[0]
            if rng.random() < c.noise_filter_prob:
                b, a = _biquad(rng, c.biquad_max)
                n = np.asarray(scipy.signal.lfilter(b, a, n))
            nlp = math.inf
            if rng.random() < c.noise_lowpass_prob:
                nlp = float(np.exp(rng.uniform(*np.log(c.lowpass_hz))))
                n = _lowpass(n, nlp)
            meta["noise_lowpass_hz"] = nlp
            if channel_rate:
                n = band_limit(n, channel_rate)
            span = c.high_snr_db if rng.random() < c.high_snr_prob else c.snr_db
            snr = float(rng.uniform(*span))
            n = mix_at_snr(y_s, n, snr)
            meta["snr_db"] = snr

        # Level, then either keep below full scale or clip on purpose.
        level = float(rng.uniform(*c.level_dbfs))
        g = 10 ** ((level - active_level_db(y_s, SAMPLE_RATE)) / 20)
        y_s, x, n = y_s * g, x * g, n * g
        noisy = y_s + n
        peak = float(max(np.max(np.abs(noisy)), np.max(np.abs(x))))
        clipped = rng.random() < c.clip_prob
        if peak > 0.99 and not clipped:
            k = 0.99 / peak
            y_s, x, n, noisy = y_s * k, x * k, n * k, noisy * k
            level += 20 * math.log10(k)
        meta["level_dbfs"] = level
        if clipped:
            thr = min(1.0, float(np.max(np.abs(noisy))) * rng.uniform(*c.clip_ratio))
            noisy = np.clip(noisy, -thr, thr)
            meta["clip_threshold"] = thr
        else:
            meta["clip_threshold"] = math.inf
        noisy = np.clip(noisy, -1.0, 1.0)
        return Mixture(clean=x, noisy=noisy, speech=y_s, noise=n, meta=meta)

    def __iter__(self) -> Iterator[tuple[FloatArray, FloatArray, dict[str, Any]]]:
        return self

    def __next__(self) -> tuple[FloatArray, FloatArray, dict[str, Any]]:
        m = self.generate(self._index)
        self._index += 1
        return m.clean, m.noisy, m.meta


EVAL_FIELDS = (
    "id",
    "clean",
    "noisy",
    "split",
    "seed",
    "index",
    "snr_db",
    "level_dbfs",
    "bandwidth_hz",
    "speech_bandwidth_hz",
    "speech_lowpass_hz",
    "channel_rate",
    "speed",
    "noise_kind",
    "rir",
    "rt60_s",
    "clip_threshold",
    "speakers",
)


def write_eval_set(
    split: str,
    n: int,
    out_dir: str | os.PathLike[str],
    seed: int,
    manifest: str | os.PathLike[str] | DataConfig | None = None,
    config: MixConfig | None = None,
) -> Path:
    """Write n fixed mixtures as 48 kHz 16-bit WAV pairs plus `<out_dir>/<split>.csv`.

    The dev split is for model selection; the test split is only ever scored for
    the final tables, never tuned on. Returns the CSV path.
    """
    from percepnet.audio import write_audio

    if split not in ("dev", "test", "train"):
        raise ValueError(f"unknown split {split!r}")
    gen = MixtureGenerator(manifest, split, seed, config or MixConfig(segment_s=6.0))
    out = Path(out_dir)
    (out / split / "clean").mkdir(parents=True, exist_ok=True)
    (out / split / "noisy").mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{split}.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EVAL_FIELDS, extrasaction="ignore")
        w.writeheader()
        for i in range(n):
            m = gen.generate(i)
            name = f"{split}_{i:04d}"
            clean_rel = f"{split}/clean/{name}.wav"
            noisy_rel = f"{split}/noisy/{name}.wav"
            write_audio(out / clean_rel, m.clean, SAMPLE_RATE)
            write_audio(out / noisy_rel, m.noisy, SAMPLE_RATE)
            row = {"id": name, "clean": clean_rel, "noisy": noisy_rel, **m.meta}
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()})
    return csv_path
